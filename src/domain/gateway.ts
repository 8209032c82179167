import { Schema } from "effect"
import { AllocationId, GatewayId, GatewayName, OrganizationId, Upstream } from "./ids.ts"

/** `draining`: not handed out again (maintenance); it keeps serving its org until that org stops. */
export const GatewayState = Schema.Literal("active", "draining")
export type GatewayState = typeof GatewayState.Type

/** What the last health check or start said of the gateway. */
export const GatewayHealth = Schema.Literal("unknown", "healthy", "unhealthy")
export type GatewayHealth = typeof GatewayHealth.Type

export const Gateway = Schema.Struct({
  gatewayId: GatewayId,
  name: GatewayName,
  upstream: Upstream,
  allocationId: Schema.NullOr(AllocationId),
  state: GatewayState,
  health: GatewayHealth,
  /** Not handed out before then (null: not in quarantine). */
  quarantinedUntil: Schema.NullOr(Schema.DateFromSelf),
  consecutiveFailures: Schema.Number,
  lastFailure: Schema.NullOr(Schema.String),
  /**
   * The allocation this (free) gateway has still to release: its release failed, so it may still
   * hold that org's connections. Not handed out until a retry succeeds.
   */
  unreleasedAllocationId: Schema.NullOr(AllocationId)
})
export type Gateway = typeof Gateway.Type

/** A quarantine never lasts longer than this, however many failures in a row. */
export const QUARANTINE_CAP_MS = 10 * 60 * 1000

/** Failures in a row after which an operator is told (someone should look at the gateway). */
export const QUARANTINES_WORTH_A_NOTICE = 3

/** Failed releases in a row after which an operator is told. */
export const RELEASE_FAILURES_WORTH_A_NOTICE = 3

/** A free gateway whose release failed, with what it has still to release. */
export const PendingRelease = Schema.Struct({
  gatewayId: GatewayId,
  name: GatewayName,
  upstream: Upstream,
  allocationId: AllocationId,
  organizationId: OrganizationId,
  releaseFailures: Schema.Number
})
export type PendingRelease = typeof PendingRelease.Type

/** Why a gateway was set aside: its start failed on it, or an idle health check did. */
export type QuarantineReason = "start" | "health_check"
