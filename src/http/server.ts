import { HttpApiBuilder, HttpApiSwagger, HttpMiddleware, HttpServer, HttpServerRequest } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { createServer } from "node:http"
import { Config, Layer, Option } from "effect"
import { PrometheusLive } from "../telemetry/Prometheus.ts"
import { ResourceLive } from "../telemetry/Tracing.ts"
import { Api } from "./Api.ts"
import { AllocationsHandlers, AuthorizationLive, GatewayHandlers, HealthHandlers, PoolHandlers } from "./handlers.ts"

/** The HttpApi with its handlers (GET /metrics reads the process's Effect metrics); needs the Allocator and the GatewayPool. */
export const ApiLive = HttpApiBuilder.api(Api).pipe(
  Layer.provide([GatewayHandlers, AllocationsHandlers, PoolHandlers, HealthHandlers]),
  Layer.provide([AuthorizationLive, PrometheusLive.pipe(Layer.provide(ResourceLive))])
)

/**
 * `GET /openapi.json` (the HttpApi's own OpenAPI document) and `GET /docs` (Swagger UI over it;
 * its script and styles are inlined in the page, nothing is fetched from a CDN). No auth.
 */
export const DocsLive = Layer.mergeAll(
  HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" }),
  HttpApiSwagger.layer({ path: "/docs" })
)

/** Scrapes and health probes are neither traced nor logged per request. */
const quietPaths: ReadonlySet<string> = new Set(["/metrics", "/healthz"])

/**
 * The API served on whatever HttpServer is provided. Bodies are small JSON: anything over
 * 64 KiB is refused unread.
 */
export const HttpAppLive = HttpApiBuilder.serve((app) =>
  HttpMiddleware.logger(HttpServerRequest.withMaxBodySize(app, Option.some(64 * 1024)))
).pipe(
  Layer.provide(DocsLive),
  Layer.provide(ApiLive),
  HttpMiddleware.withTracerDisabledWhen((request) => quietPaths.has(request.url.split("?")[0]!)),
  HttpServer.withLogAddress
)

/** Serves the API on HOST:PORT. */
export const HttpServerLive = HttpAppLive.pipe(
  Layer.provide(
    NodeHttpServer.layerConfig(createServer, {
      port: Config.integer("PORT").pipe(Config.withDefault(8080)),
      host: Config.string("HOST").pipe(Config.withDefault("0.0.0.0"))
    })
  )
)
