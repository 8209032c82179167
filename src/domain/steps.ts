import { Schema } from "effect"

/** The five steps of a start, in order. The names are part of the public contract. */
export const StepName = Schema.Literal("allocate", "dns", "nginx-config", "nginx-reload", "handshake")
export type StepName = typeof StepName.Type

/** What happened to one step's undo during a rollback. */
export const UndoStatus = Schema.Literal("done", "failed", "timed_out", "skipped")
export type UndoStatus = typeof UndoStatus.Type

export const UndoOutcome = Schema.Struct({
  step: StepName,
  status: UndoStatus,
  message: Schema.optional(Schema.String),
  duration_ms: Schema.Number
})
export type UndoOutcome = typeof UndoOutcome.Type

/** The undos of one rollback, in the order they ran (reverse step order). */
export type RollbackReport = ReadonlyArray<UndoOutcome>

/** Who ran a journal event: the request's own pipeline, a stop, or the reconciler. */
export type Actor = "request" | "stop" | "reconciler"
