import { HttpClient, HttpClientError, HttpClientRequest, HttpClientResponse } from "@effect/platform"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Context, Data, Duration, Effect, Layer, Option, Schedule } from "effect"
import { HandshakeConfig, nginxRouting, Settings } from "../config.ts"
import { type ChangedNothingMarker, ChangedNothingTypeId } from "../domain/changedNothing.ts"
import type { AllocationId, GatewayId, OrganizationId, Upstream } from "../domain/ids.ts"
import { makeKeptAliveClient } from "../lib/keptAlive.ts"
import { describeTransport, neverDelivered } from "../lib/transport.ts"

export class HandshakeError extends Data.TaggedError("HandshakeError")<{
  readonly operation: "health" | "handshake" | "release"
  readonly reason: string
  readonly cause?: unknown
  /** The gateway answered "no" (a non-2xx status), or the request never reached it: it did not initialise itself. */
  readonly noEffect?: boolean
}> implements ChangedNothingMarker {
  get [ChangedNothingTypeId]() {
    return this.noEffect === true
  }
  override get message() {
    return `gateway ${this.operation}: ${this.reason}`
  }
}

export interface HandshakeBody {
  readonly organization_id: OrganizationId
  readonly gateway_id: GatewayId
  readonly allocation_id: AllocationId
  readonly gateway_hostname: string
}

/** What a release names: the allocation whose connections the gateway closes, and its org. */
export interface ReleaseBody {
  readonly organization_id: OrganizationId
  readonly gateway_id: GatewayId
  readonly allocation_id: AllocationId
}

/** A release's outcome: the gateway confirmed it, or RELEASE_PATH is empty (no release call). */
export type Released = "released" | "not_configured"

/**
 * The gateway protocol. `GET {HEALTH_PATH}` answers 2xx once the gateway can serve: it is asked
 * through nginx, with the org's Host header, so a start also proves the path its users will take
 * (an upstream nginx cannot resolve or reach never answers 2xx, and the start fails here as that
 * gateway's failure). `POST {HANDSHAKE_PATH}` with `{organization_id, gateway_id, allocation_id,
 * gateway_hostname}` goes straight to the gateway's upstream and answers 2xx once it has
 * initialised itself for that org. `POST {RELEASE_PATH}` with `{organization_id, gateway_id,
 * allocation_id}` (the handshake's undo) answers 2xx once the gateway has closed every connection
 * of that allocation and forgotten the org; releasing an allocation it does not hold is a 2xx.
 */
export class Handshake extends Context.Tag("Handshake")<Handshake, {
  /** Polls `GET {HEALTH_PATH}` through nginx until it answers 2xx. Unbounded: the step timeout bounds it. */
  readonly awaitHealthy: (hostname: string) => Effect.Effect<void, HandshakeError>
  /** One `GET {HEALTH_PATH}` straight to the upstream, bounded: the idle gateways' health check. */
  readonly checkHealth: (upstream: Upstream) => Effect.Effect<void, HandshakeError>
  /** `POST {HANDSHAKE_PATH}` to the upstream; anything but 2xx fails. */
  readonly handshake: (upstream: Upstream, body: HandshakeBody) => Effect.Effect<void, HandshakeError>
  /**
   * `POST {RELEASE_PATH}` to the upstream; anything but 2xx fails. Unbounded: the undo (or the
   * health pass) bounds it, since closing many connections may take a gateway a while.
   */
  readonly release: (upstream: Upstream, body: ReleaseBody) => Effect.Effect<Released, HandshakeError>
}>() {}

/** One health request's bound: a gateway that cannot answer a ping this fast is not ready. */
const HEALTH_REQUEST_TIMEOUT = Duration.seconds(2)

/**
 * Sends the request and reads the answer to its end, whatever its status, then keeps 2xx only.
 * A response left unread holds its socket until a timeout or a GC, kept alive or not (measured:
 * +100-400 MiB during one health pass over 10,300 gateways); one read to its end frees it at once
 * (or serves the next request, kept alive). Reading costs less than aborting: about 1 ms of CPU
 * per request less than a scoped request aborted at its scope's end (measured on loopback).
 * Interrupted (a timeout), the request is aborted.
 */
const askRead = (http: HttpClient.HttpClient, request: HttpClientRequest.HttpClientRequest) =>
  http.execute(request).pipe(
    Effect.tap((response) => response.arrayBuffer),
    Effect.flatMap(HttpClientResponse.filterStatusOk)
  )

/** The gateway answered, with a status other than 2xx (not a transport or a body failure). */
const refused = (cause: HttpClientError.HttpClientError): cause is HttpClientError.ResponseError =>
  cause._tag === "ResponseError" && cause.reason === "StatusCode"

export const HandshakeLive = Layer.scoped(
  Handshake,
  Effect.gen(function*() {
    const { handshakePath, healthPath, releasePath } = yield* HandshakeConfig
    if (Option.isNone(releasePath)) {
      yield* Effect.logWarning(
        "RELEASE_PATH is empty: gateways are never asked to release, so an org's open connections " +
          "(WebSockets, streams) can outlive its allocation and reach the next org given its gateway"
      )
    }
    const { healthUrl, limits, tls } = yield* Settings
    const healthTimeout = Duration.min(HEALTH_REQUEST_TIMEOUT, Duration.millis(limits.outsideCallMs))
    // Thousands of gateways, each asked now and then: each request asks the gateway to close its
    // connection (a socket kept per gateway would add up).
    const closing = (http: HttpClient.HttpClient) => http.pipe(HttpClient.mapRequest(HttpClientRequest.setHeader("connection", "close")))
    const gateways = closing(yield* HttpClient.HttpClient)
    // With TLS the health wait goes through nginx over HTTPS, the org's name as SNI (taken from the
    // Host header), as browsers go. It does not verify the chain: nginx is this service's own edge
    // on a loopback or private address, and the certificate was checked when the service read it
    // (its key, its dates, its names); what this request proves is that nginx serves the org there.
    // In lua mode, over plain HTTP, on kept-alive connections: every nginx worker reads one route
    // table, so the worker a connection stays with proves as much as a fresh one. In reload mode a
    // fresh connection each time, to reach the newest workers.
    const throughNginx: HttpClient.HttpClient = Option.isSome(tls)
      ? closing(yield* NodeHttpClient.make.pipe(
        Effect.provideServiceEffect(NodeHttpClient.HttpAgent, NodeHttpClient.makeAgent({ rejectUnauthorized: false }))
      ))
      : (yield* nginxRouting) === "lua"
      ? yield* makeKeptAliveClient
      : gateways

    // A booting gateway refuses connections or answers 5xx for a while: keep asking.
    const healthSchedule = Schedule.exponential(Duration.millis(10)).pipe(
      Schedule.either(Schedule.spaced(Duration.millis(250)))
    )

    /** One `GET {HEALTH_PATH}`, bounded: 2xx or a HandshakeError saying what answered instead. */
    const askHealth = (http: HttpClient.HttpClient, request: HttpClientRequest.HttpClientRequest, via: string) =>
      askRead(http, request).pipe(
        Effect.mapError((cause) =>
          new HandshakeError({
            operation: "health",
            reason: refused(cause) ? `HTTP ${cause.response.status}${via}` : cause.message,
            cause
          })
        ),
        Effect.timeoutFail({
          duration: healthTimeout,
          onTimeout: () => new HandshakeError({ operation: "health", reason: `no answer within ${Duration.format(healthTimeout)}` })
        })
      )

    return Handshake.of({
      awaitHealthy: Effect.fn("Handshake.awaitHealthy")(function*(hostname) {
        yield* askHealth(
          throughNginx,
          HttpClientRequest.get(`${healthUrl}${healthPath}`).pipe(
            HttpClientRequest.setHeaders({ host: hostname })
          ),
          " through nginx"
        ).pipe(Effect.retry(healthSchedule))
      }),
      checkHealth: Effect.fn("Handshake.checkHealth")(function*(upstream) {
        yield* askHealth(gateways, HttpClientRequest.get(`http://${upstream}${healthPath}`), "")
      }),
      handshake: Effect.fn("Handshake.handshake")(function*(upstream, body) {
        yield* askRead(
          gateways,
          HttpClientRequest.post(`http://${upstream}${handshakePath}`).pipe(HttpClientRequest.bodyUnsafeJson(body))
        ).pipe(
          Effect.mapError((cause) =>
            new HandshakeError({
              operation: "handshake",
              reason: refused(cause) ? `HTTP ${cause.response.status}` : describeTransport(cause),
              cause,
              // It answered "no", or the request never reached it: the gateway did not initialise itself.
              noEffect: refused(cause) || neverDelivered(cause)
            })
          )
          // Bounded by the step's own timeout: a gateway that never answers its handshake is what
          // a 504 `handshake` reports.
        )
      }),
      release: Effect.fn("Handshake.release")(function*(upstream, body) {
        if (Option.isNone(releasePath)) return "not_configured" as const
        yield* askRead(
          gateways,
          HttpClientRequest.post(`http://${upstream}${releasePath.value}`).pipe(HttpClientRequest.bodyUnsafeJson(body))
        ).pipe(
          Effect.mapError((cause) =>
            new HandshakeError({
              operation: "release",
              reason: refused(cause) ? `HTTP ${cause.response.status}` : cause.message,
              cause
            })
          )
        )
        return "released" as const
      })
    })
  })
).pipe(Layer.provide(NodeHttpClient.layer))
