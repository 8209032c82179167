import { Schema } from "effect"
import { AllocationId, GatewayId, Generation, OrganizationId, Upstream } from "./ids.ts"

/**
 * The life of an allocation. Live states hold the org and the gateway (one live allocation per
 * org and per gateway, unique partial indexes in Postgres); final states are history.
 * - `starting`: the five steps are running;
 * - `active`: the start committed (after the handshake);
 * - `stopping`: a stop, or the reconciler finishing one, is taking it down;
 * - `rolling_back`: a failed or orphaned start is being undone;
 * - `released` (stopped) and `rolled_back` (a start that failed): the gateway is free again.
 */
export const LiveState = Schema.Literal("starting", "active", "stopping", "rolling_back")
export type LiveState = typeof LiveState.Type

export const FinalState = Schema.Literal("released", "rolled_back")
export type FinalState = typeof FinalState.Type

export const AllocationState = Schema.Union(LiveState, FinalState)
export type AllocationState = typeof AllocationState.Type

/** Live states in which a runner is moving the allocation (recovery looks at these). */
export const TransitionalState = Schema.Literal("starting", "stopping", "rolling_back")
export type TransitionalState = typeof TransitionalState.Type

const allocationFields = {
  allocationId: AllocationId,
  organizationId: OrganizationId,
  upstream: Upstream,
  generation: Generation,
  runner: Schema.String,
  error: Schema.Unknown,
  /** The trace of the start that made it (null before the console's migration). */
  traceId: Schema.NullOr(Schema.String),
  createdAt: Schema.DateFromSelf,
  updatedAt: Schema.DateFromSelf
}

/** An allocation that holds its org and gateway: the gateway is never null here. */
export const LiveAllocation = Schema.Struct({
  ...allocationFields,
  gatewayId: GatewayId,
  state: LiveState,
  finishedAt: Schema.Null
})
export type LiveAllocation = typeof LiveAllocation.Type

/** Any allocation, history included: a finished one loses its gateway once it leaves the pool. */
export const Allocation = Schema.Struct({
  ...allocationFields,
  gatewayId: Schema.NullOr(GatewayId),
  state: AllocationState,
  finishedAt: Schema.NullOr(Schema.DateFromSelf)
})
export type Allocation = typeof Allocation.Type

/** What a start's claim returns: a fresh allocation, or the org's live one (`reused`). */
export const Claim = Schema.Struct({
  allocationId: AllocationId,
  gatewayId: GatewayId,
  upstream: Upstream,
  generation: Generation,
  state: LiveState,
  reused: Schema.Boolean
})
export type Claim = typeof Claim.Type
