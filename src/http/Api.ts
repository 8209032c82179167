import {
  HttpApi,
  HttpApiEndpoint,
  HttpApiGroup,
  HttpApiMiddleware,
  HttpApiSchema,
  HttpApiSecurity,
  OpenApi
} from "@effect/platform"
import { Either, ParseResult, Schema } from "effect"
import { AllocationState } from "../domain/allocation.ts"
import { EdgeName, EdgeState, EdgeStatus } from "../domain/edge.ts"
import { GatewayHealth, GatewayState } from "../domain/gateway.ts"
import { AllocationId, EdgeId, GatewayId, GatewayName, OrganizationId, Upstream } from "../domain/ids.ts"
import { StepName, UndoOutcome } from "../domain/steps.ts"
import { parseEdgeAddress } from "../edges/edgeConfig.ts"
import {
  ActivationFailedResponse,
  Conflict,
  NoGatewayAvailableResponse,
  NotFound,
  NotReady,
  ServiceUnavailable,
  StepFailedResponse,
  StepTimedOutResponse,
  StopFailedResponse,
  Unauthorized
} from "./errors.ts"

/** Bearer-token auth for every /gateway, /pool, /allocations and /edges call. */
export class Authorization extends HttpApiMiddleware.Tag<Authorization>()("Authorization", {
  failure: Unauthorized,
  security: { bearer: HttpApiSecurity.bearer }
}) {}

const OrganizationPayload = Schema.Struct({ organization_id: OrganizationId })

/** The same error class, described for what it means on one endpoint (OpenAPI). */
const described = <S extends Schema.Schema.Any>(schema: S, description: string): S =>
  schema.annotations({ description }) as S

export const StartedResponse = Schema.Struct({
  organization_id: OrganizationId,
  gateway_id: GatewayId,
  gateway_hostname: Schema.String,
  allocation_id: AllocationId,
  reused: Schema.Boolean
})


export const GatewayStatusResponse = Schema.Struct({
  organization_id: OrganizationId,
  gateway_id: GatewayId,
  gateway_hostname: Schema.String,
  allocation_id: AllocationId,
  upstream: Upstream,
  state: AllocationState
})

const JournalEntry = Schema.Struct({
  step: StepName,
  event: Schema.String,
  actor: Schema.String,
  detail: Schema.NullOr(Schema.String),
  duration_ms: Schema.NullOr(Schema.Number),
  at: Schema.String
})

export const AllocationResponse = Schema.Struct({
  allocation_id: AllocationId,
  organization_id: OrganizationId,
  gateway_id: Schema.NullOr(GatewayId),
  gateway_hostname: Schema.String,
  upstream: Upstream,
  state: AllocationState,
  runner: Schema.String,
  created_at: Schema.String,
  updated_at: Schema.String,
  finished_at: Schema.NullOr(Schema.String),
  error: Schema.NullOr(Schema.Unknown),
  /** The trace of the start that made it. */
  trace_id: Schema.NullOr(Schema.String),
  /** Where to look at that trace (TRACE_URL), when traces are exported (OTEL_EXPORTER_OTLP_ENDPOINT). */
  trace_url: Schema.NullOr(Schema.String),
  steps: Schema.Array(JournalEntry),
  rollback: Schema.Array(UndoOutcome)
})

export const AllocationsQuery = Schema.Struct({
  state: Schema.optional(AllocationState),
  organization_id: Schema.optional(OrganizationId),
  limit: Schema.optionalWith(Schema.NumberFromString.pipe(Schema.int(), Schema.between(1, 500)), {
    default: () => 50
  })
})

export const AllocationsResponse = Schema.Struct({ allocations: Schema.Array(AllocationResponse) })

/**
 * A gateway's health as the API shows it: what its last health check or start said, or
 * `unreleased` while its release failed (it may still hold an org's connections, so it is not
 * handed out until a retry succeeds).
 */
export const PoolGatewayHealth = Schema.Union(GatewayHealth, Schema.Literal("unreleased"))

export const PoolGateway = Schema.Struct({
  gateway_id: GatewayId,
  name: GatewayName,
  upstream: Upstream,
  allocation_id: Schema.NullOr(AllocationId),
  /** `draining`: not handed out again; it keeps serving its org until that org stops. */
  state: GatewayState,
  health: PoolGatewayHealth,
  /** The finished allocation whose release this gateway owes (health `unreleased`), or null. */
  unreleased_allocation_id: Schema.NullOr(AllocationId),
  /** Not handed out before then (ISO time), or null. */
  quarantined_until: Schema.NullOr(Schema.String),
  last_failure: Schema.NullOr(Schema.String),
  /** The edges that still owe a removal of a route to this gateway (by name): not handed out until none does. */
  held_by_edges: Schema.Array(Schema.String)
})

export const PoolResponse = Schema.Struct({
  total: Schema.Number,
  free: Schema.Number,
  allocated: Schema.Number,
  available: Schema.Number,
  quarantined: Schema.Number,
  draining: Schema.Number,
  /** Free gateways held back until their release succeeds (health `unreleased`). */
  unreleased: Schema.Number,
  /** Free gateways held back until every edge acknowledged the removal of their last org's route (`held_by_edges`). */
  held: Schema.Number,
  gateways: Schema.Array(PoolGateway)
})

export const NewGateway = Schema.Struct({ name: GatewayName, upstream: Upstream })
export const GatewayResponse = Schema.Struct({ gateway_id: GatewayId, name: GatewayName, upstream: Upstream })

export class GatewayGroup extends HttpApiGroup.make("gateway")
  .add(
    HttpApiEndpoint.post("start", "/gateway/start")
      .setPayload(OrganizationPayload)
      .addSuccess(described(StartedResponse, "The org's gateway: started now, or the one it had (`reused: true`)"))
      .addError(NoGatewayAvailableResponse)
      .addError(StepFailedResponse)
      .addError(StepTimedOutResponse)
      .addError(ActivationFailedResponse)
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "Start the org's gateway (or return the one it has)")
      .annotate(
        OpenApi.Description,
        "Runs the five steps (allocate, dns, nginx-config, nginx-reload, handshake). When a step fails or " +
          "times out, every completed step is undone in reverse order and the answer names the failed `step`, " +
          "the original error and the rollback report. `reused: true` when the org already had an active gateway. " +
          "Concurrent starts for one org share one run; a client that disconnects does not abort it."
      )
  )
  .add(
    HttpApiEndpoint.post("stop", "/gateway/stop")
      .setPayload(OrganizationPayload)
      .addSuccess(
        Schema.Struct({
          organization_id: OrganizationId,
          gateway_id: GatewayId,
          released: Schema.Literal(true),
          /**
           * The gateway's release (it closes the org's connections): `done`; `pending` when it did
           * not confirm (the org's routing and DNS are gone, the gateway stays out of the pool until
           * a retry succeeds); `not_configured` when RELEASE_PATH is empty.
           */
          gateway_release: Schema.Literal("done", "pending", "not_configured")
        }).annotations({ description: "Routing and DNS removed, the gateway released and back in the pool (unless its release is pending)" })
      )
      .addError(described(NotFound, "The organization has no active allocation"))
      .addError(described(Conflict, "The org's allocation is still moving (a start, a rollback or another stop) after waiting for it: retry"))
      .addError(StopFailedResponse)
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "Stop the org's gateway and return it to the pool")
      .annotate(
        OpenApi.Description,
        "Removes the org's route (nginx), asks the gateway to release the org (it closes every connection " +
          "of the allocation), removes the DNS record, then returns the gateway to the pool. When removing the " +
          "routing or the record fails, the allocation stays `stopping` and a retry (or the reconciler) finishes it. " +
          "When the gateway does not confirm its release, the stop still answers (`gateway_release: pending`) and " +
          "the gateway stays out of the pool until a retry of its release succeeds."
      )
  )
  .add(
    HttpApiEndpoint.get("status", "/gateway/:organization_id")
      .setPath(Schema.Struct({ organization_id: OrganizationId }))
      .addSuccess(described(GatewayStatusResponse, "The org's live allocation"))
      .addError(described(NotFound, "The organization has no live allocation"))
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "The org's gateway, hostname and allocation state")
  )
  .middleware(Authorization)
  .annotate(OpenApi.Description, "Gateways of organizations")
{}

export class AllocationsGroup extends HttpApiGroup.make("allocations")
  .add(
    HttpApiEndpoint.get("list", "/allocations")
      .setUrlParams(AllocationsQuery)
      .addSuccess(described(AllocationsResponse, "Allocations, newest first, each with its step journal and rollback outcomes"))
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "Allocations, newest first: of one `state` and one `organization_id` when given (`limit` 1-500, 50 by default)")
  )
  .add(
    HttpApiEndpoint.get("get", "/allocations/:allocation_id")
      .setPath(Schema.Struct({ allocation_id: AllocationId }))
      .addSuccess(described(AllocationResponse, "The allocation, its step journal and the outcome of each undo"))
      .addError(described(NotFound, "No allocation with this id"))
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "An allocation with its step journal and rollback outcomes")
  )
  .middleware(Authorization)
  .annotate(OpenApi.Description, "Allocations and their step journal")
{}

export class PoolGroup extends HttpApiGroup.make("pool")
  .add(
    HttpApiEndpoint.get("get", "/pool")
      .addSuccess(
        described(PoolResponse, "free + allocated = total; available <= free (not quarantined, not draining, no release pending, not held by an edge)")
      )
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "Pool counts (total, free, allocated, available, quarantined, draining, unreleased, held) and every gateway")
  )
  .add(
    HttpApiEndpoint.post("addGateway", "/pool/gateways")
      .setPayload(NewGateway)
      .addSuccess(described(GatewayResponse, "The gateway, now free in the pool"), { status: 201 })
      .addError(described(Conflict, "A gateway with this name exists, or this upstream is in the pool already"))
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "Add a gateway (`upstream` is host:port) to the pool")
  )
  .add(
    HttpApiEndpoint.patch("setGatewayState", "/pool/gateways/:gateway_id")
      .setPath(Schema.Struct({ gateway_id: GatewayId }))
      .setPayload(Schema.Struct({ state: GatewayState }))
      .addSuccess(described(PoolGateway, "The gateway with its new state"))
      .addError(described(NotFound, "No gateway with this id"))
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "Drain a gateway (`draining`: not handed out again, keeps its org) or make it `active` again")
  )
  .add(
    HttpApiEndpoint.del("removeGateway", "/pool/gateways/:gateway_id")
      .setPath(Schema.Struct({ gateway_id: GatewayId }))
      .addSuccess(
        Schema.Struct({ gateway_id: GatewayId, removed: Schema.Literal(true) })
          .annotations({ description: "The gateway is no longer in the pool" })
      )
      .addError(described(NotFound, "No gateway with this id"))
      .addError(described(Conflict, "The gateway is allocated: stop its organization first"))
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "Remove a free gateway from the pool")
  )
  .middleware(Authorization)
  .annotate(OpenApi.Description, "The gateway pool")
{}

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

export class HealthGroup extends HttpApiGroup.make("health")
  .add(
    HttpApiEndpoint.get("healthz", "/healthz")
      .addSuccess(Schema.Struct({ status: Schema.Literal("ok") }).annotations({ description: "The process serves requests" }))
      .annotate(OpenApi.Summary, "Liveness (no auth)")
  )
  .add(
    HttpApiEndpoint.get("readyz", "/readyz")
      .addSuccess(
        Schema.Struct({ status: Schema.Literal("ready") })
          .annotations({ description: "Postgres, PowerDNS (unless DNS_PROVIDER=none) and an nginx edge answered their last check" })
      )
      .addError(NotReady)
      .annotate(OpenApi.Summary, "Readiness (no auth): whether starts can be served now")
      .annotate(
        OpenApi.Description,
        "Each dependency is checked every 2 s. A load balancer takes a replica out of rotation on 503; /healthz stays liveness."
      )
  )
  .add(
    HttpApiEndpoint.get("metrics", "/metrics")
      .addSuccess(
        HttpApiSchema.Text({ contentType: "text/plain; version=0.0.4; charset=utf-8" })
          .annotations({ description: "Prometheus text exposition format 0.0.4" })
      )
      .annotate(OpenApi.Summary, "Prometheus metrics (no auth)")
      .annotate(
        OpenApi.Description,
        "Prometheus text exposition: starts by outcome, step durations and failures, undos by step and outcome, " +
          "incomplete rollbacks, reconciler repairs, nginx reloads, and the pool gauges (refreshed on each scrape)."
      )
  )
  .annotate(OpenApi.Description, "Operations: liveness, readiness, metrics. The reference page is GET /docs, the document GET /openapi.json")
{}

export class Api extends HttpApi.make("gateway-allocator")
  .add(GatewayGroup)
  .add(AllocationsGroup)
  .add(PoolGroup)
  .add(EdgesGroup)
  .add(HealthGroup)
  .annotate(OpenApi.Title, "gateway-allocator")
  .annotate(OpenApi.Description, "Hands gateways from a Postgres pool to organizations, with automatic rollback.")
{}
