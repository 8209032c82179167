// The nginx edges' endpoints (/edges): the registry, each edge's standing, and the file a remote
// edge installs.
import { HttpApiEndpoint, HttpApiGroup, HttpApiSchema, OpenApi } from "@effect/platform"
import { Either, ParseResult, Schema } from "effect"
import { EdgeName, EdgeState, EdgeStatus } from "../domain/edge.ts"
import { EdgeId } from "../domain/ids.ts"
import { parseEdgeAddress } from "../domain/edgeAddress.ts"
import { Authorization, described } from "./apiShared.ts"
import { Conflict, NotFound, ServiceUnavailable } from "./errors.ts"

/**
 * An edge's address as POST /edges takes it (`http://{IP}:{port}`, see parseEdgeAddress), decoded
 * to its one spelling, so one nginx is one address; a refused one fails with why (a 400).
 */
const edgeAddress = (field: string) =>
  Schema.transformOrFail(Schema.String, Schema.String, {
    strict: true,
    decode: (value, _, ast) =>
      Either.match(parseEdgeAddress(field, value), {
        onLeft: (reason) => ParseResult.fail(new ParseResult.Type(ast, value, reason)),
        onRight: (address) => ParseResult.succeed(address.url)
      }),
    encode: ParseResult.succeed
  })

export const NewEdge = Schema.Struct({
  name: EdgeName,
  /** Where the replicas reach the edge's route API. */
  route_api_url: edgeAddress("route_api_url"),
  /** Where its org server block listens: the route probes. */
  probe_url: edgeAddress("probe_url")
}).pipe(
  // Two server blocks on one address: nginx would hand the route API's calls to the org block.
  Schema.filter((edge) => edge.route_api_url !== edge.probe_url || "route_api_url and probe_url must be different addresses")
)

/** An edge as the API shows it; never its secret (only its config file holds it). */
export const EdgeResponse = Schema.Struct({
  edge_id: EdgeId,
  name: EdgeName,
  route_api_url: Schema.String,
  probe_url: Schema.String,
  /** The NGINX_CONF_DIR edge of these replicas: it registers itself at start-up. */
  local: Schema.Boolean,
  /** `ready`, `behind` (it missed a change: caught up before it counts), `unreachable` (no replica reached it lately), `draining`. */
  state: EdgeStatus,
  /** Its route table's boot id when a replica last reached it. */
  boot_id: Schema.NullOr(Schema.String),
  /** The greatest route generation it acknowledged, and when (ISO time). */
  acked_generation: Schema.Number,
  acked_at: Schema.NullOr(Schema.String),
  last_seen: Schema.NullOr(Schema.String),
  last_error: Schema.NullOr(Schema.String),
  /** How many routes it held when last reached. */
  route_count: Schema.Number,
  /** Gateways it still owes a route removal for: none is handed out until it acknowledged. */
  held_gateways: Schema.Number
})

const EdgePath = Schema.Struct({ edge_id: EdgeId })

export class EdgesGroup extends HttpApiGroup.make("edges")
  .add(
    HttpApiEndpoint.get("list", "/edges")
      .addSuccess(described(Schema.Struct({ edges: Schema.Array(EdgeResponse) }), "Every edge, the local one first"))
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "The nginx edges: each one's status, what it acknowledged, the gateways it holds")
  )
  .add(
    HttpApiEndpoint.post("add", "/edges")
      .setPayload(NewEdge)
      .addSuccess(described(EdgeResponse, "The edge: `unreachable` until a replica reaches it, `behind` until one has filled its table"), { status: 201 })
      .addError(described(Conflict, "An edge with this name or route API address exists, or NGINX_ROUTING=reload (it keeps its one local edge)"))
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "Register a remote nginx edge (`http://{IP}:{port}` addresses); then install GET /edges/{edge_id}/config on it")
  )
  .add(
    HttpApiEndpoint.patch("setState", "/edges/:edge_id")
      .setPath(EdgePath)
      .setPayload(Schema.Struct({ state: EdgeState }))
      .addSuccess(described(EdgeResponse, "The edge with its new state"))
      .addError(described(NotFound, "No edge with this id"))
      .addError(ServiceUnavailable)
      .annotate(
        OpenApi.Summary,
        "Drain an edge (`draining`: its readiness answers 503, so a load balancer takes it out; its routes are kept up to date) or make it `active` again"
      )
  )
  .add(
    HttpApiEndpoint.del("remove", "/edges/:edge_id")
      .setPath(EdgePath)
      .addSuccess(
        Schema.Struct({
          edge_id: EdgeId,
          /** The removals it owed, dropped with it: the gateways it held are back in the pool. */
          removals_dropped: Schema.Number
        }).annotations({ description: "The edge is no longer in the registry; the gateways it held return to the pool" })
      )
      .addError(described(NotFound, "No edge with this id"))
      .addError(described(Conflict, "The local edge: it registers itself at every start-up"))
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "Remove a remote edge (say it no longer serves anyone): the gateways it held return to the pool")
  )
  .add(
    HttpApiEndpoint.get("config", "/edges/:edge_id/config")
      .setPath(EdgePath)
      .addSuccess(
        HttpApiSchema.Text({ contentType: "text/plain; charset=utf-8" })
          .annotations({ description: "The edge's http-context nginx file, its secret included (`Cache-Control: no-store`)" })
      )
      .addError(described(NotFound, "No edge with this id"))
      .addError(described(Conflict, "The local edge: the service writes its file into NGINX_CONF_DIR"))
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "The nginx file a remote edge installs (include it in its `http` block)")
  )
  .middleware(Authorization)
  .annotate(OpenApi.Description, "The nginx edges every route change goes to")
{}
