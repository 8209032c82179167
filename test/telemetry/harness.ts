// Shared by the telemetry tests: the allocator over the in-memory outside systems, the real
// HttpApi on a socket over it, and a log capture.
import { HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Effect, Layer, Logger, LogLevel } from "effect"
import { createServer } from "node:http"
import { makeServices } from "../../src/app.ts"
import type { GatewayName, Upstream } from "../../src/domain/ids.ts"
import { HttpAppLive } from "../../src/http/server.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { jsonLogger } from "../../src/telemetry/Logging.ts"
import { configFrom } from "../support/stack.ts"
import { OutsideTest } from "../support/TestLayers.ts"

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
 * makeServices over the in-memory outside systems (test/support/TestLayers.ts), two gateways in
 * the pool. `outside` is merged over OutsideTest (e.g. a live Notifier replaces the recording one).
 */
export const TestServices = <ROut, E>(
  options: { readonly env?: Readonly<Record<string, string>>; readonly outside?: Layer.Layer<ROut, E> } = {}
) =>
  Layer.effectDiscard(
    Effect.flatMap(GatewayStore, (pool) =>
      Effect.forEach(["gw-1", "gw-2"], (name, i) =>
        pool.addGateway(name as GatewayName, `127.0.0.1:${9001 + i}` as Upstream)))
  ).pipe(
    Layer.provideMerge(makeServices(options.outside === undefined ? OutsideTest : Layer.merge(OutsideTest, options.outside))),
    Layer.provide(configFrom({ ...baseEnv, ...options.env }))
  )

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
