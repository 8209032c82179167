import { Data } from "effect"
import { type ChangedNothingMarker, ChangedNothingTypeId } from "./changedNothing.ts"
import type { LiveState } from "./allocation.ts"
import type { AllocationId, GatewayId } from "./ids.ts"
import type { RollbackReport, StepName, UndoOutcome } from "./steps.ts"

/** The pool has no free gateway. Nothing was claimed, so nothing is undone. */
export class NoGatewayAvailable extends Data.TaggedError("NoGatewayAvailable")<{}> implements ChangedNothingMarker {
  readonly [ChangedNothingTypeId] = true
  override get message() {
    return "no gateway is available in the pool"
  }
}

/**
 * The service is shutting down: it claims no new gateway and starts no new attempt. Nothing was
 * claimed, so nothing is undone; the caller may retry on another replica.
 */
export class ShuttingDown extends Data.TaggedError("ShuttingDown")<{}> implements ChangedNothingMarker {
  readonly [ChangedNothingTypeId] = true
  override get message() {
    return "the service is shutting down: no new gateway is claimed"
  }
}

/** A claim that took nothing: the pool is empty, or the service is shutting down. */
export type ClaimRefused = NoGatewayAvailable | ShuttingDown

/** A step failed with its own error, or died. `reason` is what went wrong, in the step's words. */
export class StepFailed extends Data.TaggedError("StepFailed")<{
  readonly step: StepName
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message() {
    return `step ${this.step} failed: ${this.reason}`
  }
}

/** A step did not finish within its timeout. It may still have taken effect: its undo runs. */
export class StepTimedOut extends Data.TaggedError("StepTimedOut")<{
  readonly step: StepName
  readonly timeoutMs: number
}> {
  override get message() {
    return `step ${this.step} timed out after ${this.timeoutMs} ms`
  }
}

export type StepError = StepFailed | StepTimedOut

/**
 * The commit point failed: every step had run, but Postgres could not make the allocation active
 * (it did not answer, or another runner had taken the allocation over). The database's doing, not
 * the gateway's: no other gateway is tried, and the start rolls back.
 */
export class ActivationFailed extends Data.TaggedError("ActivationFailed")<{
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message() {
    return `could not activate the allocation: ${this.reason}`
  }
}

/** How one attempt failed: at one of its steps, or at its commit point. */
export type AttemptError = StepError | ActivationFailed

/**
 * One gateway tried by a start, and how it failed: the step's error as it happened and the
 * rollback that followed (made where the attempt's Scope closed). `allocationId` and `gatewayId`
 * are there once `allocate` had completed.
 */
export interface Attempt {
  readonly error: AttemptError
  readonly allocationId: AllocationId | undefined
  readonly gatewayId: GatewayId | undefined
  readonly rollback: RollbackReport
}

/**
 * A start that failed: the last attempt's error and rollback, and every attempt (one per gateway
 * tried). Made once, when no attempt is left.
 */
export class StartFailed extends Data.TaggedError("StartFailed")<{
  readonly error: AttemptError
  readonly allocationId: AllocationId | undefined
  readonly rollback: RollbackReport
  readonly attempts: ReadonlyArray<Attempt>
}> {
  override get message() {
    return this.error.message
  }
  /** The step that failed; none when the attempt failed at its commit point. */
  get step(): StepName | undefined {
    return this.error._tag === "ActivationFailed" ? undefined : this.error.step
  }
}

export type StartError = ClaimRefused | StartFailed

/** A stop could not remove the org's routing; the allocation stays `stopping` for a retry. */
export class StopFailed extends Data.TaggedError("StopFailed")<{
  readonly allocationId: AllocationId
  readonly gatewayId: GatewayId
  readonly undo: UndoOutcome
}> {
  override get message() {
    return `stop: undo of ${this.undo.step} ${this.undo.status}: ${this.undo.message ?? this.undo.status}`
  }
}

/**
 * The `allocate` undo kept the gateway: a routing undo of the same rollback did not finish, so
 * nginx may still route the org to it. Handing it to another org could send it this org's
 * traffic; the reconciler retries the whole teardown.
 */
export class GatewayKept extends Data.TaggedError("GatewayKept")<{ readonly routing: UndoOutcome }> {
  override get message() {
    return `gateway kept: the ${this.routing.step} undo did not finish, so nginx may still route to it`
  }
}

/** The org (or allocation) has no live allocation. */
export class AllocationNotFound extends Data.TaggedError("AllocationNotFound")<{
  readonly what: string
}> {
  override get message() {
    return `${this.what} not found`
  }
}

/** Another runner is moving the org's allocation (starting, stopping, rolling back): wait for it. */
export class InTransition extends Data.TaggedError("InTransition")<{ readonly state: LiveState }> {
  override get message() {
    return `the org's allocation is ${this.state.replace("_", " ")}: a start, a rollback or another stop is moving it; retry once it settles`
  }
}

/**
 * This runner no longer owns the allocation: its lease lapsed, or another runner took the
 * allocation over. It must not touch outside systems for it any more; the owner finishes it.
 */
export class OwnershipLost extends Data.TaggedError("OwnershipLost")<{
  readonly allocationId: AllocationId
  readonly leaseHeld: boolean
}> implements ChangedNothingMarker {
  /** The fence stopped the step before it acted. */
  readonly [ChangedNothingTypeId] = true
  override get message() {
    return this.leaseHeld
      ? `allocation ${this.allocationId} was taken over by another runner`
      : `this runner's lease is not held, so it may no longer own allocation ${this.allocationId}`
  }
}
