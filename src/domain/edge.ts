import { Schema } from "effect"
import { AllocationId, EdgeId, GatewayId, OrganizationId } from "./ids.ts"

/**
 * `draining`: its own readiness answers 503, so a load balancer takes it out; its routes are kept up
 * to date all the same, so it can come back (`active`) or be removed at any time.
 */
export const EdgeState = Schema.Literal("active", "draining")
export type EdgeState = typeof EdgeState.Type

/**
 * How an edge stands, as GET /edges shows it: `ready` (caught up and reached lately), `behind`
 * (it missed a change, or its table came back empty: it is brought up to date before it counts),
 * `unreachable` (no replica reached it lately), `draining` (its state).
 */
export const EdgeStatus = Schema.Literal("ready", "behind", "unreachable", "draining")
export type EdgeStatus = typeof EdgeStatus.Type

/** An edge name: what operators call it (a DNS-label-like word). */
export const EdgeName = Schema.String.pipe(
  Schema.pattern(/^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/, {
    message: () => "an edge name is 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit"
  }),
  Schema.brand("EdgeName")
)
export type EdgeName = typeof EdgeName.Type

/** An edge as the registry holds it. The secret is never part of it (EdgeRegistry.endpoints has it, for the replicas alone). */
export const Edge = Schema.Struct({
  edgeId: EdgeId,
  name: EdgeName,
  routeApiUrl: Schema.String,
  probeUrl: Schema.String,
  local: Schema.Boolean,
  state: EdgeState,
  behind: Schema.Boolean,
  bootId: Schema.NullOr(Schema.String),
  ackedGeneration: Schema.NumberFromString,
  ackedAt: Schema.NullOr(Schema.DateFromSelf),
  lastSeen: Schema.NullOr(Schema.DateFromSelf),
  lastError: Schema.NullOr(Schema.String),
  routeCount: Schema.Number,
  createdAt: Schema.DateFromSelf
})
export type Edge = typeof Edge.Type

/** A removal an edge has not acknowledged: its gateway is held until it has. */
export const OwedRemoval = Schema.Struct({
  edgeId: EdgeId,
  allocationId: AllocationId,
  organizationId: OrganizationId,
  generation: Schema.NumberFromString,
  gatewayId: GatewayId,
  reason: Schema.NullOr(Schema.String),
  since: Schema.DateFromSelf
})
export type OwedRemoval = typeof OwedRemoval.Type

/** An edge no replica reached for this long is `unreachable` (and its own readiness has lapsed). */
export const EDGE_UNREACHABLE_AFTER_MS = 5_000

export const edgeStatus = (edge: Edge, now: number): EdgeStatus =>
  edge.state === "draining"
    ? "draining"
    : edge.lastSeen === null || now - edge.lastSeen.getTime() > EDGE_UNREACHABLE_AFTER_MS
    ? "unreachable"
    : edge.behind
    ? "behind"
    : "ready"
