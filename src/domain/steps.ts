import { Option, Schema } from "effect"

/** The five steps of a start, in order. The names are part of the public contract. */
export const StepName = Schema.Literal("allocate", "dns", "nginx-config", "nginx-reload", "handshake")
export type StepName = typeof StepName.Type

/** The steps whose undos take the org's route out of nginx. */
export const routingSteps: ReadonlySet<StepName> = new Set(["nginx-config", "nginx-reload"])

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

/**
 * An undo that failed or timed out did not finish: what it should have removed may still be
 * there, so the allocation is left to the reconciler.
 */
export const isUnfinished = (outcome: UndoOutcome): boolean => outcome.status === "failed" || outcome.status === "timed_out"

/**
 * The routing undo of this rollback that did not finish, if any. While there is one, nginx may
 * still route the org to its gateway, so the gateway must not be handed to another org.
 */
export const routingLeft = (report: RollbackReport): Option.Option<UndoOutcome> =>
  Option.fromNullable(report.find((outcome) => routingSteps.has(outcome.step) && isUnfinished(outcome)))

/** The nginx-reload undo of this rollback removed the allocation's route and proved nginx no longer serves it. */
export const routeWithdrawn = (report: RollbackReport): boolean =>
  report.some((outcome) => outcome.step === "nginx-reload" && outcome.status === "done")

/**
 * The release of this rollback that did not finish, if any: the gateway may still hold the org's
 * connections, so it is freed (the allocation is over) but held back until a retry succeeds.
 */
export const releaseLeft = (report: RollbackReport): Option.Option<UndoOutcome> =>
  Option.fromNullable(report.find((outcome) => outcome.step === "handshake" && isUnfinished(outcome)))

/**
 * An unfinished undo that halts a stop there (the rest waits for a retry): every one but the release,
 * whose failure holds the gateway back by itself (`releaseLeft`) while DNS and the row go.
 */
export const haltsTeardown = (outcome: UndoOutcome): boolean => isUnfinished(outcome) && outcome.step !== "handshake"

/**
 * The order undos run in, in a rollback, a stop and a recovery: routing first (no new connection
 * of the org can reach the gateway after that), then the release (the gateway closes the
 * connections it still holds), DNS, and the gateway's row last. Reverse step order, except that
 * the release waits for routing to be gone.
 */
export const undoOrder: ReadonlyArray<StepName> = ["nginx-reload", "nginx-config", "handshake", "dns", "allocate"]

/** `step=status ...`, the one-line form of a rollback for logs and notices. */
export const summarise = (report: RollbackReport): string =>
  report.map((outcome) => `${outcome.step}=${outcome.status}`).join(" ")

/** Who ran a journal event: the request's own pipeline, a stop, or the reconciler. */
export const Actor = Schema.Literal("request", "stop", "reconciler")
export type Actor = typeof Actor.Type

/** What the journal records of a step or an undo. */
export const StepEvent = Schema.Literal(
  "started",
  "completed",
  "failed",
  "timed_out",
  "skipped",
  "undo_started",
  "undone",
  "undo_failed",
  "undo_timed_out",
  "undo_skipped"
)
export type StepEvent = typeof StepEvent.Type

/** The journal event that records an undo's status. */
export const undoEvent = {
  done: "undone",
  failed: "undo_failed",
  timed_out: "undo_timed_out",
  skipped: "undo_skipped"
} as const satisfies Record<UndoStatus, StepEvent>

/** The undo status a journal event records, if it records one. */
export const undoStatusOf = (event: StepEvent): Option.Option<UndoStatus> =>
  Option.fromNullable(UndoStatus.literals.find((status) => undoEvent[status] === event))

/** How a forward step ended: the step metric's and span's `outcome`. */
export type StepOutcome = "completed" | "failed" | "timed_out"

/** How a start ended: the start metric's and span's `outcome`. */
export type StartOutcome =
  | "success"
  | "reused"
  | "no_gateway"
  | "shutting_down"
  | "step_failed"
  | "step_timed_out"
  | "activation_failed"
  | "interrupted"
