// Shared by the telemetry tests: the allocator over the in-memory outside systems, the real
// HttpApi on a socket over it, and a log capture.
import { HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Effect, Layer, Logger, LogLevel } from "effect"
import { createServer } from "node:http"
import { HttpAppLive } from "../../src/http/server.ts"
import { jsonLogger } from "../../src/telemetry/Logging.ts"
import { configFrom } from "../support/stack.ts"
import { OutsideTest } from "../support/TestLayers.ts"
import { testServices } from "../support/testServices.ts"

export const API_TOKEN = "telemetry-test-token"

const baseEnv = {
  STEP_TIMEOUT_MS: "1000",
  UNDO_TIMEOUT_MS: "500",
  RECONCILE_INTERVAL_MS: "3600000",
  // One gateway per start: the telemetry of one attempt (retries are tested in test/unit/gateways.test.ts).
  START_ATTEMPTS: "1",
  API_TOKEN
}

/**
 * The in-memory services of test/support/testServices.ts (two gateways in the pool) configured for
 * the telemetry tests. `outside` is merged over OutsideTest (e.g. a live Notifier replaces the
 * recording one).
 */
export const TestServices = <ROut, E>(
  options: { readonly env?: Readonly<Record<string, string>>; readonly outside?: Layer.Layer<ROut, E> } = {}
) =>
  testServices({
    env: { ...baseEnv, ...options.env },
    ...(options.outside === undefined ? {} : { outside: Layer.merge(OutsideTest, options.outside) })
  })

export { startFailure } from "../support/failures.ts"

export class ApiBase extends Context.Tag("test/ApiBase")<ApiBase, string>() {}

/** The service's HttpApi (HttpAppLive: handlers, /metrics, /docs, /openapi.json) on 127.0.0.1:0. */
export const ServedApi = Layer.effect(
  ApiBase,
  Effect.map(HttpServer.HttpServer, (server) =>
    server.address._tag === "TcpAddress" ? `http://127.0.0.1:${server.address.port}` : "")
).pipe(
  Layer.provideMerge(HttpAppLive),
  Layer.provide(NodeHttpServer.layer(createServer, { port: 0, host: "127.0.0.1" })),
  Layer.provide(configFrom(baseEnv))
)

export interface Fetched {
  readonly status: number
  readonly contentType: string | null
  readonly text: string
}

export const fetchApi = (path: string, init: RequestInit = {}) =>
  Effect.flatMap(ApiBase, (base) =>
    Effect.promise(async (): Promise<Fetched> => {
      const response = await fetch(`${base}${path}`, init)
      return { status: response.status, contentType: response.headers.get("content-type"), text: await response.text() }
    }))

export const authorized = (body: unknown): RequestInit => ({
  method: "POST",
  headers: { authorization: `Bearer ${API_TOKEN}`, "content-type": "application/json" },
  body: JSON.stringify(body)
})

/** Collects every log line, as the JSON logger writes it (parsed), at Debug and above. */
export const captureLogs = () => {
  const lines: Array<Record<string, unknown>> = []
  const layer = Layer.merge(
    Logger.replace(
      Logger.defaultLogger,
      Logger.map(jsonLogger, (line) => {
        lines.push(JSON.parse(line) as Record<string, unknown>)
      })
    ),
    Logger.minimumLogLevel(LogLevel.Debug)
  )
  return { lines, layer }
}
