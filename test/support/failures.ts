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

/**
 * A start's error as a Failure. These tests never shut the service down while they start, nor
 * lose the database at the commit point: either is a defect here.
 */
export const failureOf = (error: StartError): Effect.Effect<Failure> => {
  if (error._tag === "NoGatewayAvailable") return Effect.succeed(error)
  if (error._tag === "ShuttingDown") return Effect.dieMessage(error.message)
  const last = error.error
  const common = { message: error.message, allocationId: error.allocationId, rollback: error.rollback }
  switch (last._tag) {
    case "ActivationFailed":
      return Effect.dieMessage(error.message)
    case "StepFailed":
      return Effect.succeed({ ...common, step: last.step, _tag: "StepFailed", reason: last.reason })
    case "StepTimedOut":
      return Effect.succeed({ ...common, step: last.step, _tag: "StepTimedOut", timeoutMs: last.timeoutMs })
  }
}

/** Starts the org and expects the start to fail. */

export const startFailure = (org: OrganizationId) =>
  Effect.flatMap(Allocator, (allocator) => allocator.start(org)).pipe(Effect.flip, Effect.flatMap(failureOf))
