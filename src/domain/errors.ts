import { Data } from "effect"
import type { AllocationId } from "./ids.ts"
import type { RollbackReport, StepName } from "./steps.ts"

/** The pool has no free gateway. Nothing was claimed, so nothing is undone. */
export class NoGatewayAvailable extends Data.TaggedError("NoGatewayAvailable")<{}> {
  override get message() {
    return "no gateway is available in the pool"
  }
}

/** A step failed. `message` is the step's own error; `rollback` is filled once the undos ran. */
export class StepFailed extends Data.TaggedError("StepFailed")<{
  readonly step: StepName
  readonly reason: string
  readonly allocationId: AllocationId | undefined
  readonly rollback: RollbackReport
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
  readonly allocationId: AllocationId | undefined
  readonly rollback: RollbackReport
}> {
  override get message() {
    return `step ${this.step} timed out after ${this.timeoutMs} ms`
  }
}

export type StartError = NoGatewayAvailable | StepFailed | StepTimedOut

/** The org has no live allocation. */
export class AllocationNotFound extends Data.TaggedError("AllocationNotFound")<{
  readonly what: string
}> {
  override get message() {
    return `${this.what} not found`
  }
}
