// What the journal and a rollback report are expected to say, built from the step order
// (StepName) and the undo order (undoOrder) of src/domain/steps.ts rather than spelled out by hand:
// rows as `step:event`, a rollback report as `step:status`. test/unit/steps.test.ts pins both
// orders to their literal values, so an expectation built here is as strict as one spelled out.
import { StepName, undoEvent, undoOrder, type UndoStatus } from "../../src/domain/steps.ts"

/** The five steps in the order a start runs them. */
export const stepOrder: ReadonlyArray<StepName> = StepName.literals

/** The steps a start runs before `step`, in step order. */
export const stepsBefore = (step: StepName): ReadonlyArray<StepName> => stepOrder.slice(0, stepOrder.indexOf(step))

/** The steps a start runs up to `step`, `step` included, in step order. */
export const stepsThrough = (step: StepName): ReadonlyArray<StepName> => stepOrder.slice(0, stepOrder.indexOf(step) + 1)

/** `steps` in the order their undos run (undoOrder): routing first, the release after it, then DNS, the row last. */
export const undoOrderOf = (steps: Iterable<StepName>): ReadonlyArray<StepName> => {
  const chosen = new Set(steps)
  return undoOrder.filter((step) => chosen.has(step))
}

/** One status for every undo, or a status per step ("done" for the steps not named). */
export type UndoStatuses = UndoStatus | Partial<Record<StepName, UndoStatus>>

const statusOf = (statuses: UndoStatuses, step: StepName): UndoStatus =>
  typeof statuses === "string" ? statuses : statuses[step] ?? "done"

/** How a step that did not complete ended. */
export type Ended = "failed" | "timed_out" | "skipped"

/** Journal rows and rollback reports as a test expects them. */
export const expected = {
  /**
   * The rows of `steps` completing, in the order given: `allocate:completed` (the claim writes
   * one row), then `started` and `completed` for each other step.
   */
  forward: (steps: ReadonlyArray<StepName> = stepOrder): ReadonlyArray<string> =>
    steps.flatMap((step) => step === "allocate" ? ["allocate:completed"] : [`${step}:started`, `${step}:completed`]),

  /** The rows of a start under way at `step`: every step before it completed, then `step:started`. */
  startedAt: (step: StepName): ReadonlyArray<string> => [...expected.forward(stepsBefore(step)), `${step}:started`],

  /** The rows of a start that ended at `step` (`failed` by default): every step before it completed, then its two rows. */
  endedAt: (step: StepName, ended: Ended = "failed"): ReadonlyArray<string> => [...expected.startedAt(step), `${step}:${ended}`],

  /** The rows of the undos of `steps` (undoOrder by default), in that order: `undo_started`, then the status's event. */
  undone: (steps: ReadonlyArray<StepName> = undoOrder, statuses: UndoStatuses = "done"): ReadonlyArray<string> =>
    steps.flatMap((step) => [`${step}:undo_started`, `${step}:${undoEvent[statusOf(statuses, step)]}`]),

  /** A rollback report of `steps` (undoOrder by default) as `step:status`, in that order. */
  rollback: (steps: ReadonlyArray<StepName> = undoOrder, statuses: UndoStatuses = "done"): ReadonlyArray<string> =>
    steps.map((step) => `${step}:${statusOf(statuses, step)}`)
}

/** Journal entries (the API's, the store's or Postgres's rows) as `step:event`. */
export const rowsOf = (entries: ReadonlyArray<{ readonly step: string; readonly event: string }>): ReadonlyArray<string> =>
  entries.map((entry) => `${entry.step}:${entry.event}`)

/** A rollback report (undo outcomes, the API's or the allocator's) as `step:status`. */
export const reportOf = (outcomes: ReadonlyArray<{ readonly step: string; readonly status: string }>): ReadonlyArray<string> =>
  outcomes.map((outcome) => `${outcome.step}:${outcome.status}`)
