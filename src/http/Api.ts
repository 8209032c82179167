import { HttpApi, HttpApiEndpoint, HttpApiGroup, HttpApiMiddleware, HttpApiSecurity, OpenApi } from "@effect/platform"
import { Schema } from "effect"
import { AllocationId, GatewayId, GatewayName, OrganizationId, Upstream } from "../domain/ids.ts"
import { StepName, UndoOutcome } from "../domain/steps.ts"
import {
  Conflict,
  NoGatewayAvailable,
  NotFound,
  ServiceUnavailable,
  StepFailed,
  StepTimedOut,
  StopFailed,
  Unauthorized
} from "./errors.ts"

/** Bearer-token auth for every /gateway, /pool and /allocations call. */
export class Authorization extends HttpApiMiddleware.Tag<Authorization>()("Authorization", {
  failure: Unauthorized,
  security: { bearer: HttpApiSecurity.bearer }
}) {}

const OrganizationPayload = Schema.Struct({ organization_id: OrganizationId })

export const StartedResponse = Schema.Struct({
  organization_id: OrganizationId,
  gateway_id: GatewayId,
  gateway_hostname: Schema.String,
  allocation_id: AllocationId,
  reused: Schema.Boolean
})

const AllocationState = Schema.Literal("starting", "active", "stopping", "rolling_back", "released", "rolled_back")

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
  steps: Schema.Array(JournalEntry),
  rollback: Schema.Array(UndoOutcome)
})

export const PoolResponse = Schema.Struct({
  total: Schema.Number,
  free: Schema.Number,
  allocated: Schema.Number,
  gateways: Schema.Array(Schema.Struct({
    gateway_id: GatewayId,
    name: GatewayName,
    upstream: Upstream,
    allocation_id: Schema.NullOr(AllocationId)
  }))
})

export const NewGateway = Schema.Struct({ name: GatewayName, upstream: Upstream })
export const GatewayResponse = Schema.Struct({ gateway_id: GatewayId, name: GatewayName, upstream: Upstream })

export class GatewayGroup extends HttpApiGroup.make("gateway")
  .add(
    HttpApiEndpoint.post("start", "/gateway/start")
      .setPayload(OrganizationPayload)
      .addSuccess(StartedResponse)
      .addError(NoGatewayAvailable)
      .addError(StepFailed)
      .addError(StepTimedOut)
      .addError(ServiceUnavailable)
      .annotate(OpenApi.Summary, "Start the org's gateway (or return the one it has)")
  )
  .add(
    HttpApiEndpoint.post("stop", "/gateway/stop")
      .setPayload(OrganizationPayload)
      .addSuccess(Schema.Struct({ organization_id: OrganizationId, gateway_id: GatewayId, released: Schema.Literal(true) }))
      .addError(NotFound)
      .addError(StopFailed)
      .addError(ServiceUnavailable)
  )
  .add(
    HttpApiEndpoint.get("status", "/gateway/:organization_id")
      .setPath(Schema.Struct({ organization_id: OrganizationId }))
      .addSuccess(GatewayStatusResponse)
      .addError(NotFound)
      .addError(ServiceUnavailable)
  )
  .middleware(Authorization)
{}

export class AllocationsGroup extends HttpApiGroup.make("allocations")
  .add(
    HttpApiEndpoint.get("get", "/allocations/:allocation_id")
      .setPath(Schema.Struct({ allocation_id: AllocationId }))
      .addSuccess(AllocationResponse)
      .addError(NotFound)
      .addError(ServiceUnavailable)
  )
  .middleware(Authorization)
{}

export class PoolGroup extends HttpApiGroup.make("pool")
  .add(
    HttpApiEndpoint.get("get", "/pool")
      .addSuccess(PoolResponse)
      .addError(ServiceUnavailable)
  )
  .add(
    HttpApiEndpoint.post("addGateway", "/pool/gateways")
      .setPayload(NewGateway)
      .addSuccess(GatewayResponse, { status: 201 })
      .addError(Conflict)
      .addError(ServiceUnavailable)
  )
  .add(
    HttpApiEndpoint.del("removeGateway", "/pool/gateways/:gateway_id")
      .setPath(Schema.Struct({ gateway_id: GatewayId }))
      .addSuccess(Schema.Struct({ gateway_id: GatewayId, removed: Schema.Literal(true) }))
      .addError(NotFound)
      .addError(Conflict)
      .addError(ServiceUnavailable)
  )
  .middleware(Authorization)
{}

export class HealthGroup extends HttpApiGroup.make("health")
  .add(HttpApiEndpoint.get("healthz", "/healthz").addSuccess(Schema.Struct({ status: Schema.Literal("ok") })))
{}

export class Api extends HttpApi.make("gateway-allocator")
  .add(GatewayGroup)
  .add(AllocationsGroup)
  .add(PoolGroup)
  .add(HealthGroup)
  .annotate(OpenApi.Title, "gateway-allocator")
  .annotate(OpenApi.Description, "Hands gateways from a Postgres pool to organizations, with automatic rollback.")
{}
