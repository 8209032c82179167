import {
  HttpApi,
  HttpApiEndpoint,
  HttpApiGroup,
  HttpApiSchema,
  OpenApi
} from "@effect/platform"
import { Schema } from "effect"
import { AllocationState } from "../domain/allocation.ts"
import { GatewayHealth, GatewayState } from "../domain/gateway.ts"
import { AllocationId, GatewayId, GatewayName, OrganizationId, Upstream } from "../domain/ids.ts"
import { StepName, UndoOutcome } from "../domain/steps.ts"
import {
  ActivationFailedResponse,
  Conflict,
  NoGatewayAvailableResponse,
  NotFound,
  NotReady,
  ServiceUnavailable,
  StepFailedResponse,
  StepTimedOutResponse,
  StopFailedResponse
} from "./errors.ts"
import { Authorization, described } from "./apiShared.ts"
import { EdgesGroup } from "./edgesApi.ts"

const OrganizationPayload = Schema.Struct({ organization_id: OrganizationId })

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
