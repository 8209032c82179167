// The handlers of the nginx edges' endpoints (/edges).
import { HttpApiBuilder, HttpServerResponse } from "@effect/platform"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { Clock, Effect, Either, Option, Redacted } from "effect"
import { EdgeFilesConfig, Settings } from "../config.ts"
import { type Edge, edgeStatus } from "../domain/edge.ts"
import type { EdgeId } from "../domain/ids.ts"
import { renderEdgeConfig } from "../edges/edgeConfig.ts"
import { EdgeRegistry, type GatewayHolds } from "../edges/EdgeRegistry.ts"
import { readCertificateNow } from "../nginx/tls.ts"
import { Api } from "./Api.ts"
import type { NewEdge } from "./edgesApi.ts"
import * as ApiError from "./errors.ts"

const unavailable = ApiError.serviceUnavailable

/** An edge as the API shows it: its status as of `now`, and how many gateways it holds. */
const edgeBody = (edge: Edge, now: number, holds: GatewayHolds) => ({
  edge_id: edge.edgeId,
  name: edge.name,
  route_api_url: edge.routeApiUrl,
  probe_url: edge.probeUrl,
  local: edge.local,
  state: edgeStatus(edge, now),
  boot_id: edge.bootId,
  acked_generation: edge.ackedGeneration,
  acked_at: edge.ackedAt?.toISOString() ?? null,
  last_seen: edge.lastSeen?.toISOString() ?? null,
  last_error: edge.lastError,
  route_count: edge.routeCount,
  // Edge names are unique: the gateways whose holders include this one are the ones it holds.
  held_gateways: [...holds.values()].filter((names) => names.includes(edge.name)).length
})

const edgeNotFound = (error: { readonly edgeId: EdgeId }) => new ApiError.NotFound({ message: `edge ${error.edgeId} not found` })

export const EdgesHandlers = HttpApiBuilder.group(Api, "edges", (handlers) =>
  Effect.gen(function*() {
    const edges = yield* EdgeRegistry
    const settings = yield* Settings
    const files = yield* EdgeFilesConfig

    const shown = (edge: Edge) =>
      Effect.map(Effect.zip(edges.holds(), Clock.currentTimeMillis), ([holds, now]) => edgeBody(edge, now, holds))

    const list = Effect.fn("EdgesApi.list")(function*() {
      const [all, holds, now] = yield* Effect.all([edges.list(), edges.holds(), Clock.currentTimeMillis])
      return { edges: all.map((edge) => edgeBody(edge, now, holds)) }
    }, Effect.mapError(unavailable))

    const add = Effect.fn("EdgesApi.add")(function*(edge: typeof NewEdge.Type) {
      // Reload mode has no route API: its routes are files of the one nginx of NGINX_CONF_DIR.
      if (files.routing === "reload") {
        return yield* new ApiError.Conflict({ message: "NGINX_ROUTING=reload: reload mode keeps its one local edge (remote edges need lua routing)" })
      }
      return yield* shown(yield* edges.add({ name: edge.name, routeApiUrl: edge.route_api_url, probeUrl: edge.probe_url }))
    }, Effect.catchTags({
      EdgeNameTaken: (error) => Effect.fail(new ApiError.Conflict({ message: `an edge named ${error.name} exists` })),
      EdgeAddressTaken: (error) => Effect.fail(new ApiError.Conflict({ message: `an edge's route API is at ${error.routeApiUrl} already` })),
      DatabaseError: (error) => Effect.fail(unavailable(error))
    }))

    const setState = Effect.fn("EdgesApi.setState")(function*(edgeId: EdgeId, state: Edge["state"]) {
      return yield* shown(yield* edges.setState(edgeId, state))
    }, Effect.catchTags({
      EdgeNotFound: (error) => Effect.fail(edgeNotFound(error)),
      DatabaseError: (error) => Effect.fail(unavailable(error))
    }))

    const remove = Effect.fn("EdgesApi.remove")(function*(edgeId: EdgeId) {
      return { edge_id: edgeId, removals_dropped: yield* edges.remove(edgeId) }
    }, Effect.catchTags({
      EdgeNotFound: (error) => Effect.fail(edgeNotFound(error)),
      EdgeIsLocal: () => Effect.fail(new ApiError.Conflict({ message: "the local edge registers itself at every start-up: it is not removed" })),
      DatabaseError: (error) => Effect.fail(unavailable(error))
    }))

    /**
     * The one answer that carries an edge's secret: in the body only (a response header would be
     * recorded on the request's span), never cached.
     */
    const config = Effect.fn("EdgesApi.config")(function*(edgeId: EdgeId) {
      const edge = (yield* edges.endpoints()).find((endpoint) => endpoint.edgeId === edgeId)
      if (edge === undefined) return yield* edgeNotFound({ edgeId })
      if (edge.local) {
        return yield* new ApiError.Conflict({ message: "the local edge's file is written by the service into NGINX_CONF_DIR" })
      }
      // Rendered with the certificate this replica serves (read now: whether nginx can staple OCSP).
      const tls = yield* Option.match(settings.tls, {
        onNone: () => Effect.succeed({}),
        onSome: (listener) =>
          readCertificateNow(listener, settings.domain).pipe(
            Effect.provide(NodeFileSystem.layer),
            Effect.map((certificate) => ({ tls: { listener, certificate } })),
            Effect.mapError((error) => new ApiError.Conflict({ message: `cannot render an HTTPS edge: ${error.message}` }))
          )
      })
      const text = renderEdgeConfig(
        { routeApiUrl: edge.routeApiUrl, probeUrl: edge.probeUrl, secret: Redacted.value(edge.secret) },
        { domain: settings.domain, tableSize: files.routeTableSize, fenceTableSize: files.fenceTableSize, ...tls }
      )
      // Only an address stored before POST /edges checked it could fail here.
      if (Either.isLeft(text)) return yield* new ApiError.Conflict({ message: `edge ${edge.name}: ${text.left}` })
      return HttpServerResponse.text(text.right, {
        contentType: "text/plain; charset=utf-8",
        headers: { "cache-control": "no-store" }
      })
    }, Effect.catchTags({ DatabaseError: (error) => Effect.fail(unavailable(error)) }))

    return handlers
      .handle("list", () => list())
      .handle("add", ({ payload }) => add(payload))
      .handle("setState", ({ path, payload }) => setState(path.edge_id, payload.state))
      .handle("remove", ({ path }) => remove(path.edge_id))
      .handle("config", ({ path }) => config(path.edge_id))
  }))
