import { Effect } from "effect"
import { Allocator } from "../../src/allocation/Allocator.ts"
import type { NoGatewayAvailable, StartError } from "../../src/domain/errors.ts"
import type { AllocationId, OrganizationId } from "../../src/domain/ids.ts"
import type { RollbackReport, StepName } from "../../src/domain/steps.ts"

interface StepFailure {
  readonly step: StepName
  readonly message: string
  readonly allocationId: AllocationId | undefined
  readonly rollback: RollbackReport
}

/**
 * A failed start as the tests read it: the step's own error (tag, step, reason or timeout) next
 * to the start's allocation id and rollback report (what the API's 502/504 body shows).
 */
export type Failure =
  | NoGatewayAvailable
  | (StepFailure & { readonly _tag: "StepFailed"; readonly reason: string })
  | (StepFailure & { readonly _tag: "StepTimedOut"; readonly timeoutMs: number })

const asFailure = (error: Exclude<StartError, { readonly _tag: "ShuttingDown" }>): Failure => {
  if (error._tag === "NoGatewayAvailable") return error
  const common = { step: error.step, message: error.message, allocationId: error.allocationId, rollback: error.rollback }
  return error.error._tag === "StepFailed"
    ? { ...common, _tag: "StepFailed", reason: error.error.reason }
    : { ...common, _tag: "StepTimedOut", timeoutMs: error.error.timeoutMs }
}

/** Starts the org and expects the start to fail. */
/** A start's error as a Failure; these tests never shut the service down while they start. */
export const failureOf = (error: StartError): Effect.Effect<Failure> =>
  error._tag === "ShuttingDown" ? Effect.dieMessage(error.message) : Effect.succeed(asFailure(error))

export const startFailure = (org: OrganizationId) =>
  Effect.flatMap(Allocator, (allocator) => allocator.start(org)).pipe(Effect.flip, Effect.flatMap(failureOf))
