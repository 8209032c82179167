// The tests' one raw HTTP client: a plain GET on a fresh connection (no agent, `connection:
// close`), as a real client sends it, with any Host header, to nginx on loopback (an org's
// hostname, the route probe, the route API) or straight to a sample gateway; and what the sample
// gateway's answer says. The WebSocket client is ./longLived.ts.
import { Data, Effect, Either } from "effect"
import * as http from "node:http"
import * as https from "node:https"
import type { TLSSocket } from "node:tls"
import type { LocalStack } from "../../src/dev/stack.ts"

/** A probe could not get an answer from the system it asks (that is not a "no"). */
export class ProbeError extends Data.TaggedError("ProbeError")<{ readonly message: string; readonly cause?: unknown }> {}

export const domainOf = (stack: LocalStack) => (stack.env["DOMAIN"] ?? "domain.local").toLowerCase()

/** The org's hostname, the one nginx routes: `org-{uuid}.{DOMAIN}`. */
export const hostnameOf = (stack: LocalStack, org: string) => `org-${org}.${domainOf(stack)}`

export interface RawResponse {
  readonly status: number
  readonly body: string
  readonly headers: http.IncomingHttpHeaders
  /** Over TLS: the SHA-256 fingerprint of the certificate the server presented. */
  readonly certificate?: string
}

/** HTTPS to nginx: the CA the client trusts; the server name (SNI) is the Host header's. */
export interface RawTls {
  readonly ca: string
}

/**
 * `GET {path}` on 127.0.0.1:{port} on a fresh connection, with `headers` (a Host among them), the
 * whole exchange bounded by `timeoutMs` (default 5 s). Any HTTP status is an answer; no answer
 * (refused, reset, the bound) is a ProbeError. Interrupted, the request is destroyed.
 */
export const rawGet = (options: {
  /** The loopback address (default 127.0.0.1). */
  readonly address?: string
  readonly port: number
  readonly path: string
  readonly headers?: Readonly<Record<string, string>>
  readonly timeoutMs?: number
  readonly tls?: RawTls
}) =>
  Effect.async<RawResponse, ProbeError>((resume) => {
    const timeoutMs = options.timeoutMs ?? 5000
    let settled = false
    const settle = (effect: Effect.Effect<RawResponse, ProbeError>) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resume(effect)
    }
    const failed = (cause: Error) =>
      settle(Effect.fail(new ProbeError({ message: `GET 127.0.0.1:${options.port}${options.path}: ${cause.message}`, cause })))
    const requestOptions: https.RequestOptions = {
      host: options.address ?? "127.0.0.1",
      port: options.port,
      path: options.path,
      method: "GET",
      headers: { ...options.headers, connection: "close" },
      agent: false,
      ...(options.tls === undefined ? {} : { ca: options.tls.ca, servername: options.headers?.["host"] ?? "" })
    }
    const onResponse = (response: http.IncomingMessage) => {
      const chunks: Array<Buffer> = []
      const certificate = options.tls === undefined ? undefined : (response.socket as TLSSocket).getPeerCertificate().fingerprint256
      response.on("data", (chunk: Buffer) => chunks.push(chunk))
      response.on("error", failed)
      response.on("end", () =>
        settle(Effect.succeed({
          status: response.statusCode ?? 0,
          body: Buffer.concat(chunks).toString("utf8"),
          headers: response.headers,
          ...(certificate === undefined ? {} : { certificate })
        })))
    }
    const request = options.tls === undefined ? http.request(requestOptions, onResponse) : https.request(requestOptions, onResponse)
    // A bound on the whole exchange, not only on idle time.
    const timer = setTimeout(() => request.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
    request.on("error", failed)
    request.end()
    return Effect.sync(() => {
      settled = true
      clearTimeout(timer)
      request.destroy()
    })
  })

/** The sample gateway's answer (a proxied request's, a 421's): the fields the tests read. */
export interface GatewayAnswer {
  readonly gateway: string
  /** The allocation the request named (X-Gateway-Allocation), as the gateway read it. */
  readonly allocation: string | null
  /** 421: the allocation the gateway holds. */
  readonly held: string | null
}

/** The sample gateway's JSON answer, or undefined when the body is not one (nginx's own pages). */
export const gatewayAnswerOf = (body: string): GatewayAnswer | undefined => {
  const parsed = Either.try(() => JSON.parse(body) as { gateway?: unknown; allocation?: unknown; held?: unknown })
  if (Either.isLeft(parsed) || typeof parsed.right.gateway !== "string") return undefined
  const { allocation, gateway, held } = parsed.right
  return {
    gateway,
    allocation: typeof allocation === "string" ? allocation : null,
    held: typeof held === "string" ? held : null
  }
}

/**
 * What nginx does with `GET {path}` for the org's hostname on a fresh connection: the name of the
 * sample gateway that answered 200, or null when nginx answers 404 itself (no route). With
 * `fencedReaches`, a gateway's 421 (it holds no allocation, or another) names it too: nginx routed
 * the hostname to it all the same. Any other answer is a ProbeError.
 */
export const nginxReaches = (
  stack: LocalStack,
  org: string,
  options: { readonly path: string; readonly timeoutMs?: number; readonly fencedReaches?: boolean }
) =>
  Effect.flatMap(
    rawGet({
      port: stack.nginx.listenPort,
      path: options.path,
      headers: { host: hostnameOf(stack, org) },
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs })
    }),
    (response): Effect.Effect<string | null, ProbeError> => {
      if (response.status === 404) return Effect.succeed(null)
      const answer = gatewayAnswerOf(response.body)
      if (answer !== undefined && (response.status === 200 || (options.fencedReaches === true && response.status === 421))) {
        return Effect.succeed(answer.gateway)
      }
      return Effect.fail(
        new ProbeError({ message: `nginx answered ${response.status} for ${hostnameOf(stack, org)}: ${response.body.slice(0, 200)}` })
      )
    }
  )
