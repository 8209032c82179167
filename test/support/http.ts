// The service's HTTP API (the README's API table) on a real socket, over the real stack, and a small
// fetch-based client to drive it.
import { Context, Effect, Layer } from "effect"
import { freePort } from "../../src/lib/ports.ts"
import { HttpServerLive } from "../../src/http/server.ts"
import { configFrom, ServicesLive, Stack } from "./stack.ts"

export interface ApiEndpoint {
  /** `http://127.0.0.1:PORT` */
  readonly baseUrl: string
  readonly token: string
}

export class ApiServer extends Context.Tag("test/ApiServer")<ApiServer, ApiEndpoint>() {}

/**
 * `HttpServerLive` (what `AppLive` serves) on 127.0.0.1 and a free port, over the services of
 * `test/support/stack.ts` (makeServices(OutsideLive): nginx installed, the stack's gateways in
 * the pool), configured from the stack's env plus `overrides`. Needs `Stack`.
 */
export const HttpApiLive = (overrides: Readonly<Record<string, string>> = {}) =>
  Layer.unwrapEffect(
    Effect.gen(function*() {
      const stack = yield* Stack
      const port = yield* freePort
      const env = { ...stack.env, ...overrides, PORT: String(port), HOST: "127.0.0.1" }
      return Layer.merge(
        HttpServerLive.pipe(Layer.provide(configFrom(env))),
        Layer.succeed(ApiServer, { baseUrl: `http://127.0.0.1:${port}`, token: stack.apiToken })
      )
    })
  ).pipe(Layer.provideMerge(ServicesLive(overrides)))

export interface ApiResponse {
  readonly status: number
  readonly contentType: string | null
  readonly text: string
  /** The body parsed as JSON, or undefined when it is not JSON. */
  readonly json: any
}

export interface RequestOptions {
  /** A value is sent as JSON; a string is sent as is (to send broken JSON). */
  readonly body?: unknown
  readonly rawBody?: string
  /** The bearer token: the stack's by default, none with null. */
  readonly token?: string | null
  readonly headers?: Readonly<Record<string, string>>
}

/**
 * One request to the API with `fetch`. Any HTTP status is a success of this effect; a connection
 * that closed without an answer gives status 0 and the reason in `text`.
 */
export const call = (method: string, path: string, options: RequestOptions = {}) =>
  Effect.gen(function*() {
    const server = yield* ApiServer
    const token = options.token === undefined ? server.token : options.token
    const headers: Record<string, string> = { ...options.headers }
    if (token !== null) headers["authorization"] = `Bearer ${token}`
    let body: string | undefined
    if (options.rawBody !== undefined) {
      body = options.rawBody
      headers["content-type"] ??= "application/json"
    } else if (options.body !== undefined) {
      body = JSON.stringify(options.body)
      headers["content-type"] ??= "application/json"
    }
    // A connection closed without an answer is an outcome too (status 0), not a test crash.
    return yield* Effect.tryPromise(async (signal): Promise<ApiResponse> => {
      const response = await fetch(`${server.baseUrl}${path}`, {
        method,
        headers,
        signal,
        ...(body === undefined ? {} : { body })
      })
      const text = await response.text()
      let json: unknown = undefined
      try {
        json = JSON.parse(text)
      } catch {
        json = undefined
      }
      return { status: response.status, contentType: response.headers.get("content-type"), text, json }
    }).pipe(
      Effect.catchAll((error) => {
        const cause = error.error instanceof Error && error.error.cause instanceof Error ? `: ${error.error.cause.message}` : ""
        return Effect.succeed<ApiResponse>({
          status: 0,
          contentType: null,
          text: `no response (${String(error.error)}${cause})`,
          json: undefined
        })
      })
    )
  })

export const get = (path: string, options?: RequestOptions) => call("GET", path, options)
export const post = (path: string, body: unknown, options?: RequestOptions) => call("POST", path, { ...options, body })
export const del = (path: string, options?: RequestOptions) => call("DELETE", path, options)
