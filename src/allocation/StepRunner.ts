import { Cause, Clock, Duration, Effect, Exit, FiberRef, HashMap, Option, Ref, type Scope } from "effect"
import { Settings } from "../config.ts"
import { type ClaimRefused, type StepError, StepTimedOut } from "../domain/errors.ts"
import {
  haltsTeardown,
  type RollbackReport,
  type StepEvent,
  type StepName,
  undoEvent,
  undoOrder,
  type UndoOutcome,
  type UndoStatus
} from "../domain/steps.ts"
import { Journal, openJournal } from "../journal/Journal.ts"
import { describeCause } from "../lib/describeCause.ts"
import { recordStep, recordUndo } from "../telemetry/Metrics.ts"
import { Ownership } from "./Ownership.ts"
import { type Run, type RunKey, type TableStep, type Undo, UndoSettled, UndoSkipped } from "./runs.ts"
import { hadNoEffect, stepOutcome, toStepError } from "./stepExits.ts"

/** A rollback in the making, made by `attempt` for the steps of one start. */
export interface Rollback {
  /** The outcomes of the undos the start's Scope has run so far (each finalizer appends its own). */
  readonly outcomes: Ref.Ref<RollbackReport>
  /**
   * The span annotations the start had when it ended (the gateway, once claimed): the undos run
   * with them. A finalizer would otherwise run with those of its registration, and the `allocate`
   * undo is registered before the claim names the gateway.
   */
  readonly spanAnnotations: Ref.Ref<HashMap.HashMap<string, unknown>>
  /** Set once an undo of this rollback found the allocation no longer this runner's (see `undo`). */
  readonly ownershipLost: OwnershipLostMark
}

/**
 * Why this teardown lost its allocation, once one of its undos found the allocation no longer
 * this runner's. From then on its later undos are skipped without asking again: a lease that
 * lapsed for a moment and came back would otherwise let the `allocate` undo free a gateway whose
 * routing or release was skipped. The allocation's owner (or, once the lease is back, the
 * reconciler) tears it down whole.
 */
type OwnershipLostMark = Ref.Ref<Option.Option<string>>

/**
 * A step's undo as registered in the start's Scope (by `runSteps`, ahead of the step): it does
 * nothing unless its step was reached and may have taken effect.
 */
export interface UndoSlot {
  readonly step: StepName
  readonly state: Ref.Ref<SlotState>
}

/** Whether a registered undo runs when the Scope closes with a failure: only once its step may have taken effect. */
type SlotState = "unreached" | "may_have_effect" | "no_effect"

export interface StepOptions<A, E, R, E2, R2> {
  readonly run: Effect.Effect<A, E, R>
  /**
   * Registered as a scope finalizer *before* the step runs, and run when the scope closes with a
   * failure or an interruption if the step completed or *may* have taken effect (see
   * `hadNoEffect`). Undos are idempotent, so running one for a step that had no effect is harmless.
   * Or the slot `runSteps` registered for it earlier.
   */
  readonly undo: Undo<E2, R2> | UndoSlot
  /**
   * True for the claim, the step that makes the allocation row: before it there is no row to
   * journal against nor one to own, so it is neither fenced nor journaled here (it journals its
   * own completion in the claim's transaction).
   */
  readonly claims?: boolean
}

const annotations = (run: Run, step: StepName) => ({
  organization_id: run.organizationId,
  allocation_id: run.allocationId,
  step,
  actor: run.actor
})

/**
 * Runs the steps and undos of allocations: each step bounded by STEP_TIMEOUT_MS, each undo by
 * UNDO_TIMEOUT_MS, every one journaled, logged, counted and traced.
 */
export class StepRunner extends Effect.Service<StepRunner>()("StepRunner", {
  effect: Effect.gen(function*() {
    const journal = yield* Journal
    const ownership = yield* Ownership
    const { stepTimeoutMs, undoTimeoutMs } = yield* Settings

    /**
     * The fence check before a step's or an undo's side effect, with the journal row that opens it
     * (and the rows waiting) written by the same statement, whatever the fence says.
     */
    const fenceOpening = (run: Run, step: StepName, event: StepEvent) =>
      Effect.flatMap(run.journal.handOver({ step, event }), (rows) => ownership.check(run.allocationId, rows))

    /** An undo's outcome from its exit: journaled (with the next row), counted, logged, on its span. */
    const settle = <E extends { readonly message: string }>(
      run: Run,
      step: StepName,
      exit: Exit.Exit<void | UndoSkipped | UndoSettled, E | Cause.TimeoutException>,
      startedAt: number
    ) =>
      Effect.gen(function*() {
        const durationMs = (yield* Clock.currentTimeMillis) - startedAt
        const [status, message]: readonly [UndoStatus, string | undefined] = Exit.match(exit, {
          onSuccess: (result) => result instanceof UndoSkipped ? ["skipped", result.reason] : ["done", undefined],
          onFailure: (cause) =>
            Option.exists(Cause.failureOption(cause), Cause.isTimeoutException)
              ? ["timed_out", `undo timed out after ${undoTimeoutMs} ms`]
              : ["failed", describeCause(cause)]
        })
        const outcome: UndoOutcome = message === undefined
          ? { step, status, duration_ms: durationMs }
          : { step, status, message, duration_ms: durationMs }
        // What did a settled undo's work: in its journal row and its log line, not in the report.
        const settledBy = Exit.isSuccess(exit) && exit.value instanceof UndoSettled ? exit.value.by : undefined
        // Like a step's closing row, it goes out with the allocation's next row (the next undo's
        // opening, or the flush that ends the rollback or the stop).
        yield* run.journal.later({ step, event: undoEvent[status], detail: message ?? settledBy, durationMs })
        yield* recordUndo(step, status, run.actor)
        yield* Effect.annotateCurrentSpan({ "undo.status": status, outcome: status })
        if (status === "failed" || status === "timed_out") {
          yield* Effect.logError(`undo of ${step} ${status === "failed" ? "failed" : "timed out"}: ${message}`)
        } else {
          yield* Effect.logInfo(`undo of ${step} ${status === "done" ? `done${settledBy === undefined ? "" : `: ${settledBy}`}` : `skipped: ${message}`}`)
        }
        return outcome
      })

    /**
     * Runs one undo: uninterruptible as a whole, the undo itself bounded by the undo timeout. Only
     * the allocation's owner undoes anything: a runner that lost it skips, and so does every later
     * undo of the same teardown (`lost`), even if the lease comes back meanwhile.
     */
    const undo = <E extends { readonly message: string }, R>(
      run: Run,
      step: StepName,
      work: Effect.Effect<void | UndoSkipped, E, R> | UndoSettled,
      lost: OwnershipLostMark
    ): Effect.Effect<UndoOutcome, never, R> =>
      Effect.gen(function*() {
        const startedAt = yield* Clock.currentTimeMillis
        if (work instanceof UndoSettled) {
          // Done by an undo before it: nothing to fence, nothing to time.
          yield* run.journal.later({ step, event: "undo_started" })
          return yield* settle(run, step, Exit.succeed(work), startedAt)
        }
        const owned = Effect.flatMap(Ref.get(lost), Option.match({
          onSome: (why) =>
            run.journal.now({ step, event: "undo_started" }).pipe(
              Effect.as(new UndoSkipped({ reason: `left to the allocation's owner: an earlier undo found that ${why}` }))
            ),
          onNone: () =>
            fenceOpening(run, step, "undo_started").pipe(
              Effect.as(undefined),
              Effect.catchTag("OwnershipLost", (error) =>
                Ref.set(lost, Option.some(error.message)).pipe(Effect.as(new UndoSkipped({ reason: error.message }))))
            )
        }))
        const fenced = owned.pipe(
          Effect.flatMap((skipped) => skipped === undefined ? work : Effect.succeed(skipped))
        )
        // Finalizers are uninterruptible: without `interruptible` the timeout could not stop a hung undo.
        const exit = yield* fenced.pipe(Effect.interruptible, Effect.timeout(Duration.millis(undoTimeoutMs)), Effect.exit)
        return yield* settle(run, step, exit, startedAt)
      }).pipe(
        Effect.annotateLogs(annotations(run, step)),
        Effect.withSpan(`undo ${step}`, { attributes: { ...annotations(run, step), "undo.step": step } })
      )

    /**
     * Runs undos one after the other, each told what the ones before it did; with `haltOnBlocking`
     * it stops at the first unfinished one that halts a teardown (a stop: the rest waits for a retry).
     */
    const undoAll = <E extends { readonly message: string }, R>(
      run: Run,
      undos: ReadonlyArray<readonly [StepName, Undo<E, R>]>,
      options: { readonly haltOnBlocking: boolean }
    ): Effect.Effect<RollbackReport, never, R> =>
      Effect.gen(function*() {
        const report: Array<UndoOutcome> = []
        const lost: OwnershipLostMark = yield* Ref.make(Option.none<string>())
        for (const [step, make] of undos) {
          const outcome = yield* undo(run, step, make(report), lost)
          report.push(outcome)
          if (options.haltOnBlocking && haltsTeardown(outcome)) break
        }
        yield* run.journal.flush
        return report
      })

    /**
     * Registers the undo of step `name` in the enclosing Scope: when the Scope closes with a
     * failure or an interruption it runs, told what the undos before it did, unless its step was
     * never reached or is known to have changed nothing.
     */
    const registerUndo = <E2 extends { readonly message: string }, R2>(
      run: Run,
      rollback: Rollback,
      name: StepName,
      make: Undo<E2, R2>,
      initially: SlotState
    ): Effect.Effect<UndoSlot, never, R2 | Scope.Scope> =>
      Effect.gen(function*() {
        const state = yield* Ref.make<SlotState>(initially)
        yield* Effect.addFinalizer((scopeExit) =>
          Effect.gen(function*() {
            if (Exit.isSuccess(scopeExit) || (yield* Ref.get(state)) !== "may_have_effect") return
            const outcome = yield* undo(run, name, make(yield* Ref.get(rollback.outcomes)), rollback.ownershipLost).pipe(
              Effect.locally(FiberRef.currentTracerSpanAnnotations, yield* Ref.get(rollback.spanAnnotations))
            )
            yield* Ref.update(rollback.outcomes, (report) => [...report, outcome])
          })
        )
        return { step: name, state }
      })

    /**
     * Runs the steps of a table in order, in the enclosing Scope. Every step's undo is registered
     * first, all at once, in the reverse of `undoOrder`, so the Scope runs them in `undoOrder`
     * whatever order the steps run in (the release after the routing undos); each undo does
     * nothing unless its step was reached. A step the table marks as skipped is journaled as such
     * and has no undo.
     */
    const runSteps = <E extends { readonly message: string }, R, E2 extends { readonly message: string }, R2>(
      run: Run,
      rollback: Rollback,
      table: ReadonlyArray<TableStep<E, R, E2, R2>>
    ): Effect.Effect<void, StepError | ClaimRefused, R | R2 | Scope.Scope> =>
      Effect.gen(function*() {
        const slots = new Map<StepName, UndoSlot>()
        for (const name of [...undoOrder].reverse()) {
          const entry = table.find((candidate) => candidate.name === name)
          if (entry === undefined || entry.skipped !== undefined) continue
          slots.set(name, yield* registerUndo(run, rollback, name, entry.undo, "unreached"))
        }
        for (const entry of table) {
          const slot = slots.get(entry.name)
          if (entry.skipped !== undefined || slot === undefined) {
            yield* skip(run, entry.name, entry.skipped ?? "no undo registered")
            continue
          }
          yield* step(run, rollback, entry.name, { run: entry.run, undo: slot })
        }
      })

    /**
     * One step of a start: registers its undo in the enclosing Scope (unless it was reserved),
     * journals, times out, traces, and turns whatever went wrong into the step's typed error. The
     * Scope is the step tracker.
     */
    const step = <A, E extends { readonly message: string }, R, E2 extends { readonly message: string } = never, R2 = never>(
      run: Run,
      rollback: Rollback,
      name: StepName,
      options: StepOptions<A, E, R, E2, R2>
    ): Effect.Effect<A, StepError | ClaimRefused, R | R2 | Scope.Scope> =>
      Effect.gen(function*() {
        // Until the step ends it counts as "may have taken effect": an interrupted step is undone.
        const slot = typeof options.undo === "function"
          ? yield* registerUndo(run, rollback, name, options.undo, "may_have_effect")
          : options.undo
        yield* Ref.set(slot.state, "may_have_effect")

        const journalForward = options.claims !== true
        const startedAt = yield* Clock.currentTimeMillis
        const fenced = journalForward ? Effect.zipRight(fenceOpening(run, name, "started"), options.run) : options.run
        const exit = yield* fenced.pipe(
          Effect.timeoutFail({
            duration: Duration.millis(stepTimeoutMs),
            onTimeout: () => new StepTimedOut({ step: name, timeoutMs: stepTimeoutMs })
          }),
          Effect.onExit((exit) => Effect.annotateCurrentSpan("outcome", stepOutcome(exit))),
          Effect.withSpan(name, { attributes: { ...annotations(run, name), "step.name": name } }),
          Effect.exit
        )
        if (hadNoEffect(exit)) yield* Ref.set(slot.state, "no_effect")
        const durationMs = (yield* Clock.currentTimeMillis) - startedAt

        if (Exit.isSuccess(exit)) {
          if (journalForward) yield* run.journal.later({ step: name, event: "completed", durationMs })
          yield* recordStep(name, "completed", durationMs)
          yield* Effect.logDebug(`step ${name} completed`)
          return exit.value
        }
        const error = toStepError(name, exit.cause)
        if (Option.isNone(error)) return yield* Effect.interrupt
        const outcome = error.value._tag === "StepTimedOut" ? "timed_out" as const : "failed" as const
        if (journalForward) yield* run.journal.now({ step: name, event: outcome, detail: error.value.message, durationMs })
        yield* recordStep(name, outcome, durationMs)
        yield* Effect.logWarning(error.value.message)
        return yield* error.value
      }).pipe(Effect.annotateLogs(annotations(run, name)))

    /** A step that does not apply here (e.g. `dns` with wildcard DNS): journaled as skipped. */
    const skip = (run: Run, name: StepName, reason: string) => run.journal.now({ step: name, event: "skipped", detail: reason })

    /**
     * Runs `body` as one worker on an allocation, with its journal open for the whole of it: the
     * rows still waiting when it ends (however it ends) are written then.
     */
    const withRun = <A, E, R>(key: RunKey, body: (run: Run) => Effect.Effect<A, E, R>) =>
      Effect.scoped(
        Effect.flatMap(openJournal(journal, undoTimeoutMs, key.allocationId, key.actor), (writer) => body({ ...key, journal: writer }))
      )

    /**
     * Runs a start's steps in a Scope of their own. On failure or interruption the Scope closes,
     * the registered undos run in reverse order, and the exit comes back with the whole rollback.
     */
    const attempt = <A, E, R>(
      body: (rollback: Rollback) => Effect.Effect<A, E, R | Scope.Scope>
    ): Effect.Effect<{ readonly exit: Exit.Exit<A, E>; readonly rollback: RollbackReport }, never, Exclude<R, Scope.Scope>> =>
      Effect.gen(function*() {
        const rollback: Rollback = {
          outcomes: yield* Ref.make<RollbackReport>([]),
          spanAnnotations: yield* Ref.make(yield* FiberRef.get(FiberRef.currentTracerSpanAnnotations)),
          ownershipLost: yield* Ref.make(Option.none<string>())
        }
        const exit = yield* body(rollback).pipe(
          // Runs before the Scope closes: what the start knew is what its undos are traced with.
          Effect.onExit(() =>
            Effect.flatMap(FiberRef.get(FiberRef.currentTracerSpanAnnotations), (now) => Ref.set(rollback.spanAnnotations, now))
          ),
          Effect.scoped,
          Effect.exit
        )
        return { exit, rollback: yield* Ref.get(rollback.outcomes) }
      })

    /** Span annotations for every span from here on in this fiber (the gateway, once claimed). */
    const annotateSpansFromHere = (key: string, value: string) =>
      FiberRef.update(FiberRef.currentTracerSpanAnnotations, HashMap.set<string, unknown>(key, value))

    return { step, runSteps, skip, undoAll, attempt, withRun, annotateSpansFromHere }
  })
}) {}
