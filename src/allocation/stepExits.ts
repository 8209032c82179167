import { Cause, Exit, Option, Predicate } from "effect"
import { ChangedNothing } from "../domain/changedNothing.ts"
import { type ClaimRefused, NoGatewayAvailable, ShuttingDown, type StepError, StepFailed, StepTimedOut } from "../domain/errors.ts"
import type { StepName, StepOutcome } from "../domain/steps.ts"

// How a step ended, read from its exit: whether its undo must run, what its span, metric and
// journal say, and the typed error its caller gets.

/**
 * The step failed in a way known to have changed nothing (`ChangedNothing`: the claim took
 * nothing, the fence stopped it, or the outside system refused before acting). Only then is its
 * undo not run. Anything else (a timeout, a defect, an interruption, an error after a signal was
 * sent or a request was written) may have taken effect, and is undone.
 */
export const hadNoEffect = (exit: Exit.Exit<unknown, unknown>): boolean =>
  Exit.isFailure(exit) && !Cause.isInterrupted(exit.cause) && Option.isNone(Cause.dieOption(exit.cause)) &&
  Option.exists(Cause.failureOption(exit.cause), ChangedNothing.is)

/** How a step ended, for its span, its metric and its journal row. */
export const stepOutcome = (exit: Exit.Exit<unknown, unknown>): StepOutcome | "interrupted" => {
  if (Exit.isSuccess(exit)) return "completed"
  if (Cause.isInterruptedOnly(exit.cause)) return "interrupted"
  return Option.exists(Cause.failureOption(exit.cause), (error) => error instanceof StepTimedOut) ? "timed_out" : "failed"
}


/**
 * The step's error: its own timeout, a claim that took nothing (an empty pool, a shutdown: passed
 * on as it is), or a StepFailed carrying what went wrong; none if it was interrupted.
 */
export const toStepError = (
  step: StepName,
  cause: Cause.Cause<{ readonly message: string }>
): Option.Option<StepError | ClaimRefused> => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    return Option.some(
      error instanceof StepTimedOut || error instanceof NoGatewayAvailable || error instanceof ShuttingDown
        ? error
        : new StepFailed({ step, reason: error.message, cause: error })
    )
  }
  if (Cause.isInterruptedOnly(cause)) return Option.none()
  // A defect inside a step is still that step's failure: the caller gets a 502 naming it.
  const defect = Cause.squash(cause)
  return Option.some(
    new StepFailed({ step, reason: `defect: ${Predicate.hasProperty(defect, "message") ? String(defect.message) : String(defect)}` })
  )
}

