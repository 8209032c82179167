// What a run is, as the pipeline, the undos and the allocator speak of it: who works on which
// allocation, an undo, a row of a pipeline's table. StepRunner runs them.
import { Data, type Effect } from "effect"
import type { AllocationId, OrganizationId } from "../domain/ids.ts"
import type { Actor, RollbackReport, StepName } from "../domain/steps.ts"
import type { JournalWriter } from "../journal/Journal.ts"

/** Which allocation, and who works on it (a start's request, a stop, the reconciler). */
export interface RunKey {
  readonly allocationId: AllocationId
  readonly organizationId: OrganizationId
  readonly actor: Actor
}

/** One worker on one allocation, with its journal: every journal row, log line and span says who. */
export interface Run extends RunKey {
  readonly journal: JournalWriter
}

/** An undo that deliberately did nothing, with the reason (journaled and reported as skipped). */
export class UndoSkipped extends Data.TaggedClass("UndoSkipped")<{ readonly reason: string }> {}

/**
 * An undo whose work an undo before it in the same rollback did (say, the route removed and its
 * withdrawal proven): it is done, and says by what. It touches no outside system.
 */
export class UndoSettled extends Data.TaggedClass("UndoSettled")<{ readonly by: string }> {}

/**
 * An undo: given the outcomes of the undos that ran before it in the same rollback, it does its
 * work, says it skipped it, or fails with its own typed error; or, when those outcomes show its
 * work done already, it is that UndoSettled, not an effect: journaled and reported as done
 * without a fence check, since it acts on nothing.
 */
export type Undo<E, R> = (before: RollbackReport) => Effect.Effect<void | UndoSkipped, E, R> | UndoSettled

/**
 * One row of a pipeline's table (`runSteps`): the step, what it does, and its undo; or a step
 * that does not apply here (`skipped`: why), journaled as skipped.
 */
export interface TableStep<E, R, E2, R2> {
  readonly name: StepName
  readonly run: Effect.Effect<unknown, E, R>
  readonly undo: Undo<E2, R2>
  readonly skipped?: string | undefined
}
