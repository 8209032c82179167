import {
  HttpApiBuilder,
  type HttpApp,
  HttpMiddleware,
  HttpServer,
  HttpServerError,
  HttpServerRequest,
  HttpServerResponse
} from "@effect/platform"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { createServer } from "node:http"
import { Cause, Effect, Layer, Option } from "effect"
import { Allocator } from "../allocation/Allocator.ts"
import { ListenConfig } from "../config.ts"
import { PrometheusMetrics } from "../telemetry/Prometheus.ts"
import { Api } from "./Api.ts"
import { ConsoleLive } from "./console.ts"
import { DocsPageLive } from "./docs.ts"
import { EdgesHandlers } from "./edgesHandlers.ts"
import { AllocationsHandlers, AuthorizationLive, GatewayHandlers, HealthHandlers, PoolHandlers } from "./handlers.ts"

/** The HttpApi with its handlers (GET /metrics reads the process's Effect metrics); needs the Allocator, the stores and the edge registry. */
export const ApiLive = HttpApiBuilder.api(Api).pipe(
  Layer.provide([GatewayHandlers, AllocationsHandlers, PoolHandlers, EdgesHandlers, HealthHandlers]),
  Layer.provide([AuthorizationLive, PrometheusMetrics.Default])
)

/**
 * `GET /openapi.json` (the HttpApi's own OpenAPI document) and `GET /docs` (Swagger UI over it;
 * its script and styles come from this service, nothing is fetched from a CDN). No auth.
 */
export const DocsLive = Layer.mergeAll(
  HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" }),
  DocsPageLive
)

/** Scrapes and health probes are neither traced nor logged per request. */
const quietPaths: ReadonlySet<string> = new Set(["/metrics", "/healthz", "/readyz"])

const maxBodyBytes = 64 * 1024

/**
 * How much of a body of unannounced length (chunked) is read before it is judged: one over the
 * limit is read whole (a connection closed with unread bytes is reset, and the client would lose
 * the answer with it), up to this; past it the platform closes the connection.
 */
const drainBytes = 1024 * 1024

const tooLarge = `request body over ${maxBodyBytes / 1024} KiB`

const badRequest = (message: string, headers: Record<string, string> = {}) =>
  HttpServerResponse.json({ _tag: "BadRequest", message }, { status: 400, headers }).pipe(Effect.orDie)

/**
 * Bodies are small JSON. One that announces more than 64 KiB is refused unread. One of
 * unannounced length (chunked) is read first (the platform keeps the text, so the handler reads
 * it again for free) and judged by its size. Left to the platform's limit, either would have its
 * socket destroyed once the limit is passed, and the client would get a reset instead of an answer.
 */
const limitBodies = <E, R>(app: HttpApp.Default<E, R>) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    if (request.headers["content-length"] !== undefined || request.headers["transfer-encoding"] === undefined) {
      return Number(request.headers["content-length"] ?? "0") > maxBodyBytes
        ? yield* badRequest(tooLarge, { connection: "close" })
        : yield* HttpServerRequest.withMaxBodySize(app, Option.some(maxBodyBytes))
    }
    return yield* HttpServerRequest.withMaxBodySize(
      Effect.gen(function*() {
        const text = yield* Effect.option(request.text)
        if (Option.isNone(text)) return yield* badRequest("request body could not be read", { connection: "close" })
        if (Buffer.byteLength(text.value) > maxBodyBytes) return yield* badRequest(tooLarge, { connection: "close" })
        return yield* app
      }),
      Option.some(drainBytes)
    )
  })

/**
 * A body that is not JSON (or cannot be read) makes the platform die with a RequestError, which
 * it answers with an empty 400 and logs with the whole request, bearer token included. At the API
 * level it becomes a 400 with a JSON body, like every other bad input, and nothing is logged.
 */
const JsonBodyErrorsLive = HttpApiBuilder.middleware((app) =>
  Effect.catchAllCause(app, (cause) => {
    const error = Cause.squash(cause)
    return HttpServerError.isServerError(error) && error._tag === "RequestError"
      ? badRequest(
        error.reason === "Decode"
          ? `request body is not valid JSON (or over ${maxBodyBytes / 1024} KiB)`
          : "request body could not be read"
      )
      : Effect.failCause(cause)
  })
)

/** The API served on whatever HttpServer is provided. */
export const HttpAppLive = HttpApiBuilder.serve((app) => HttpMiddleware.logger(limitBodies(app))).pipe(
  Layer.provide([DocsLive, ConsoleLive, JsonBodyErrorsLive]),
  Layer.provide(ApiLive),
  HttpMiddleware.withTracerDisabledWhen((request) => quietPaths.has(request.url.split("?")[0] ?? "")),
  HttpServer.withLogAddress
)

/**
 * On shutdown, before the server closes (its open requests wait on the starts they asked for):
 * no new gateway is claimed, in-flight starts get SHUTDOWN_GRACE_MS, then roll back, and every
 * waiting request gets its answer (`Allocator.drain`).
 */
const DrainOnShutdown = Layer.scopedDiscard(
  Effect.flatMap(Allocator, (allocator) => Effect.addFinalizer(() => allocator.drain))
)

/** Serves the API on HOST:PORT. */
export const HttpServerLive = DrainOnShutdown.pipe(
  Layer.provideMerge(HttpAppLive),
  Layer.provide(NodeHttpServer.layerConfig(createServer, ListenConfig))
)
