import { Cause, Clock, Data, Duration, Effect, Exit, Option, Ref, type Scope } from "effect"
import { NoGatewayAvailable, StepFailed, StepTimedOut } from "../domain/errors.ts"
import type { AllocationId, OrganizationId } from "../domain/ids.ts"
import type { Actor, RollbackReport, StepName, UndoOutcome, UndoStatus } from "../domain/steps.ts"
import { Journal, type StepEvent } from "../journal/Journal.ts"
import { recordStep, recordUndo } from "../telemetry/Metrics.ts"

/** Everything a step of one allocation needs to run, journal and report. */
export interface StepContext {
  readonly allocationId: AllocationId
  readonly organizationId: OrganizationId
  readonly actor: Actor
  readonly stepTimeoutMs: number
  readonly undoTimeoutMs: number
  /** The rollback report, appended to by each undo as it finishes (reverse step order). */
  readonly report: Ref.Ref<RollbackReport>
}

/** An undo that deliberately did nothing, with the reason (journaled and reported as skipped). */
export class UndoSkipped extends Data.TaggedClass("UndoSkipped")<{ readonly reason: string }> {}

export interface StepOptions<A, E, R, R2> {
  readonly run: Effect.Effect<A, E, R>
  /**
   * Registered as a scope finalizer *before* the step runs, and run when the scope closes with a
   * failure or an interruption if the step completed or *may* have taken effect: it timed out,
   * was interrupted or died. A step that failed with its own typed error said "no", and its undo
   * is not run. Undos are idempotent and keyed by the org or the allocation. An undo may answer
   * `UndoSkipped` to say it deliberately did nothing.
   */
  readonly undo: Effect.Effect<void | UndoSkipped, unknown, R2>
  /**
   * False for the claim: it journals its own completion in the same transaction, and before it
   * there is no allocation row to journal against.
   */
  readonly journalForward?: boolean
}

export type StepError = StepFailed | StepTimedOut | NoGatewayAvailable

const describe = (error: unknown): string =>
  error instanceof Error ? error.message : typeof error === "string" ? error : JSON.stringify(error)

const annotations = (context: StepContext, step: StepName) => ({
  organization_id: context.organizationId,
  allocation_id: context.allocationId,
  step,
  actor: context.actor
})

/** Journal writes never fail a step or an undo: a lost row is logged, the work goes on. */
export const recordBestEffort = (
  context: StepContext,
  step: StepName,
  event: StepEvent,
  extra: { readonly detail?: string | undefined; readonly durationMs?: number | undefined } = {}
) =>
  Effect.flatMap(Journal, (journal) =>
    journal.record({ allocationId: context.allocationId, step, event, actor: context.actor, ...extra })
  ).pipe(
    Effect.interruptible,
    Effect.timeout(Duration.millis(context.undoTimeoutMs)),
    Effect.catchAllCause((cause) => Effect.logWarning("journal write failed", cause)),
    Effect.annotateLogs({ ...annotations(context, step), journal_event: event })
  )

/** Runs one undo: uninterruptible as a whole, the undo itself bounded by the undo timeout. */
export const runUndo = <R>(
  context: StepContext,
  step: StepName,
  undo: Effect.Effect<void | UndoSkipped, unknown, R>
): Effect.Effect<UndoOutcome, never, R | Journal> =>
  Effect.gen(function*() {
    const startedAt = yield* Clock.currentTimeMillis
    yield* recordBestEffort(context, step, "undo_started")
    // Finalizers are uninterruptible: without `interruptible` the timeout could not stop a hung undo.
    const exit = yield* undo.pipe(
      Effect.interruptible,
      Effect.timeoutFail({ duration: Duration.millis(context.undoTimeoutMs), onTimeout: () => undoTimedOut }),
      Effect.exit
    )
    const durationMs = (yield* Clock.currentTimeMillis) - startedAt
    const [status, message]: [UndoStatus, string | undefined] = Exit.match(exit, {
      onSuccess: (result) => (result instanceof UndoSkipped ? ["skipped", result.reason] : ["done", undefined]),
      onFailure: (cause) => {
        const failure = Cause.failureOption(cause)
        if (Option.isSome(failure) && failure.value === undoTimedOut) {
          return ["timed_out", `undo timed out after ${context.undoTimeoutMs} ms`]
        }
        return ["failed", Option.match(failure, { onNone: () => Cause.pretty(cause), onSome: describe })]
      }
    })
    const outcome: UndoOutcome = message === undefined
      ? { step, status, duration_ms: durationMs }
      : { step, status, message, duration_ms: durationMs }
    const event: StepEvent = status === "done"
      ? "undone"
      : status === "skipped"
      ? "undo_skipped"
      : status === "timed_out"
      ? "undo_timed_out"
      : "undo_failed"
    yield* recordBestEffort(context, step, event, { detail: message, durationMs })
    yield* Ref.update(context.report, (report) => [...report, outcome])
    yield* recordUndo(step, status, context.actor)
    yield* Effect.annotateCurrentSpan({ "undo.status": status })
    if (status === "failed" || status === "timed_out") {
      yield* Effect.logError(`undo of ${step} ${status === "failed" ? "failed" : "timed out"}: ${message}`)
    } else {
      yield* Effect.logInfo(`undo of ${step} ${status === "done" ? "done" : `skipped: ${message}`}`)
    }
    return outcome
  }).pipe(
    Effect.annotateLogs(annotations(context, step)),
    Effect.withSpan(`undo ${step}`, { attributes: { ...annotations(context, step), "undo.step": step } })
  )

const undoTimedOut = Symbol("undoTimedOut")

/** The step's own typed error (not a timeout, defect or interruption): it did not take effect. */
const isDefiniteFailure = (exit: Exit.Exit<unknown, unknown>) =>
  Exit.isFailure(exit) && Option.match(Cause.failureOption(exit.cause), {
    onNone: () => false,
    onSome: (error) => !(error instanceof StepTimedOut)
  }) && Option.isNone(Cause.dieOption(exit.cause)) && !Cause.isInterrupted(exit.cause)

const toStepError = (
  context: StepContext,
  step: StepName,
  cause: Cause.Cause<unknown>
): Option.Option<StepError> => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    if (error instanceof StepTimedOut || error instanceof NoGatewayAvailable) return Option.some(error)
    return Option.some(
      new StepFailed({
        step,
        reason: describe(error),
        allocationId: step === "allocate" ? undefined : context.allocationId,
        rollback: [],
        cause: error
      })
    )
  }
  if (Cause.isInterruptedOnly(cause)) return Option.none()
  // A defect inside a step is still that step's failure: the caller gets a 502 naming it.
  return Option.some(
    new StepFailed({
      step,
      reason: `defect: ${describe(Cause.squash(cause))}`,
      allocationId: step === "allocate" ? undefined : context.allocationId,
      rollback: []
    })
  )
}

/**
 * One step of a start: registers its undo in the enclosing Scope, journals, times out, traces,
 * and turns whatever went wrong into the step's typed error. The Scope is the step tracker.
 */
export const step = <A, E, R, R2>(
  context: StepContext,
  name: StepName,
  options: StepOptions<A, E, R, R2>
): Effect.Effect<A, StepError, R | R2 | Journal | Scope.Scope> =>
  Effect.gen(function*() {
    // None until the step ends: an interrupted step may have taken effect.
    const definitelyFailed = yield* Ref.make(false)
    yield* Effect.addFinalizer((scopeExit) =>
      Exit.isSuccess(scopeExit)
        ? Effect.void
        : Effect.flatMap(Ref.get(definitelyFailed), (failed) => failed ? Effect.void : runUndo(context, name, options.undo))
    )

    const journalForward = options.journalForward ?? true
    const startedAt = yield* Clock.currentTimeMillis
    if (journalForward) yield* recordBestEffort(context, name, "started")
    const exit = yield* options.run.pipe(
      Effect.timeoutFail({
        duration: Duration.millis(context.stepTimeoutMs),
        onTimeout: () =>
          new StepTimedOut({
            step: name,
            timeoutMs: context.stepTimeoutMs,
            allocationId: name === "allocate" ? undefined : context.allocationId,
            rollback: []
          })
      }),
      Effect.withSpan(name, { attributes: { ...annotations(context, name), "step.name": name } }),
      Effect.exit
    )
    yield* Ref.set(definitelyFailed, isDefiniteFailure(exit))
    const durationMs = (yield* Clock.currentTimeMillis) - startedAt

    if (Exit.isSuccess(exit)) {
      if (journalForward) yield* recordBestEffort(context, name, "completed", { durationMs })
      yield* recordStep(name, "completed", durationMs)
      yield* Effect.logDebug(`step ${name} completed`)
      return exit.value
    }
    const error = toStepError(context, name, exit.cause)
    if (Option.isNone(error)) return yield* Effect.failCause(exit.cause as Cause.Cause<never>)
    if (journalForward) {
      yield* recordBestEffort(context, name, error.value._tag === "StepTimedOut" ? "timed_out" : "failed", {
        detail: error.value.message,
        durationMs
      })
    }
    yield* recordStep(name, error.value._tag === "StepTimedOut" ? "timed_out" : "failed", durationMs)
    yield* Effect.logWarning(error.value.message)
    return yield* Effect.fail(error.value)
  }).pipe(Effect.annotateLogs(annotations(context, name)))

/** A step that does not apply here (e.g. `dns` with wildcard DNS): journaled as skipped. */
export const skipStep = (context: StepContext, name: StepName, reason: string) =>
  recordBestEffort(context, name, "skipped", { detail: reason })
