import { HttpApiBuilder, HttpMiddleware, HttpServer, HttpServerRequest } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { createServer } from "node:http"
import { Config, Layer, Option } from "effect"
import { Api } from "./Api.ts"
import { AllocationsHandlers, AuthorizationLive, GatewayHandlers, HealthHandlers, PoolHandlers } from "./handlers.ts"

/** The HttpApi with its handlers; needs the Allocator and the GatewayPool. */
export const ApiLive = HttpApiBuilder.api(Api).pipe(
  Layer.provide([GatewayHandlers, AllocationsHandlers, PoolHandlers, HealthHandlers]),
  Layer.provide(AuthorizationLive)
)

/** Serves the API on HOST:PORT. Bodies are small JSON: anything over 64 KiB is refused unread. */
export const HttpServerLive = HttpApiBuilder.serve((app) =>
  HttpMiddleware.logger(HttpServerRequest.withMaxBodySize(app, Option.some(64 * 1024)))
).pipe(
  Layer.provide(ApiLive),
  HttpServer.withLogAddress,
  Layer.provide(
    NodeHttpServer.layerConfig(createServer, {
      port: Config.integer("PORT").pipe(Config.withDefault(8080)),
      host: Config.string("HOST").pipe(Config.withDefault("0.0.0.0"))
    })
  )
)
