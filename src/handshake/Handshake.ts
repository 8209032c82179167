import { HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Context, Data, Duration, Effect, Layer, Schedule } from "effect"
import { HandshakeConfig } from "../config.ts"
import type { AllocationId, GatewayId, OrganizationId, Upstream } from "../domain/ids.ts"

export class HandshakeError extends Data.TaggedError("HandshakeError")<{
  readonly operation: "health" | "handshake"
  readonly reason: string
  readonly cause?: unknown
}> {
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

/**
 * The gateway protocol, spoken straight to the gateway's upstream: `GET {HEALTH_PATH}` answers
 * 2xx once the gateway can serve; `POST {HANDSHAKE_PATH}` with
 * `{organization_id, gateway_id, allocation_id, gateway_hostname}` answers 2xx once it has
 * initialised itself for that org.
 */
export class Handshake extends Context.Tag("Handshake")<Handshake, {
  /** Polls `GET {HEALTH_PATH}` until it answers 2xx. Unbounded: the step timeout bounds it. */
  readonly awaitHealthy: (upstream: Upstream) => Effect.Effect<void, HandshakeError>
  /** `POST {HANDSHAKE_PATH}`; anything but 2xx fails. */
  readonly handshake: (upstream: Upstream, body: HandshakeBody) => Effect.Effect<void, HandshakeError>
}>() {}

/** One health request's bound: a gateway that cannot answer a ping this fast is not ready. */
const HEALTH_REQUEST_TIMEOUT = Duration.seconds(2)

export const HandshakeLive = Layer.effect(
  Handshake,
  Effect.gen(function*() {
    const { handshakePath, healthPath } = yield* HandshakeConfig
    const client = (yield* HttpClient.HttpClient).pipe(HttpClient.filterStatusOk)
    const url = (upstream: Upstream, path: string) => `http://${upstream}${path}`

    // A booting gateway refuses connections or answers 5xx for a while: keep asking.
    const healthSchedule = Schedule.exponential(Duration.millis(10)).pipe(
      Schedule.either(Schedule.spaced(Duration.millis(250)))
    )

    return Handshake.of({
      awaitHealthy: Effect.fn("Handshake.awaitHealthy")(function*(upstream) {
        yield* client.get(url(upstream, healthPath)).pipe(
          Effect.mapError((cause) => new HandshakeError({ operation: "health", reason: cause.message, cause })),
          Effect.timeoutFail({
            duration: HEALTH_REQUEST_TIMEOUT,
            onTimeout: () =>
              new HandshakeError({ operation: "health", reason: `no answer within ${Duration.format(HEALTH_REQUEST_TIMEOUT)}` })
          }),
          Effect.retry(healthSchedule)
        )
      }),
      handshake: Effect.fn("Handshake.handshake")(function*(upstream, body) {
        yield* client.execute(
          HttpClientRequest.post(url(upstream, handshakePath)).pipe(HttpClientRequest.bodyUnsafeJson(body))
        ).pipe(
          Effect.mapError((cause) =>
            new HandshakeError({
              operation: "handshake",
              reason: cause._tag === "ResponseError" ? `HTTP ${cause.response.status}` : cause.message,
              cause
            })
          )
        )
      })
    })
  })
).pipe(Layer.provide(NodeHttpClient.layerUndici))
