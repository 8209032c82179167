// Waiting for something to happen, bounded: the one home of the tests' polls on real time. A test
// that waits for a condition polls the thing it waits for (Schedule.spaced) up to a bound, and a
// test on the TestClock moves the clock (test/support/testServices.ts); a plain sleep is kept only
// where the wait itself is what is tested (a window in which nothing must happen, an outage that
// lasts), with a comment saying so.
import { Data, Duration, Effect, Schedule } from "effect"

export interface PollOptions {
  /** The bound, from the first ask. */
  readonly withinMs: number
  /** The pause between two asks (default 20 ms). */
  readonly spacingMs?: number
}

/**
 * Asks `probe` until `done` holds of its answer, `spacingMs` apart, for at most `withinMs` (an ask
 * under way at the bound finishes); returns the last answer, for the caller to assert on (so a
 * timeout fails on what was last seen).
 */
export const pollUntil = <A, E, R>(probe: Effect.Effect<A, E, R>, done: (answer: A) => boolean, options: PollOptions) =>
  Effect.suspend(() => {
    const deadline = Date.now() + options.withinMs
    // Out = In: the repetition gives back the last answer.
    const schedule: Schedule.Schedule<A, A> = Schedule.spaced(Duration.millis(options.spacingMs ?? 20)).pipe(
      Schedule.whileInput((answer: A) => !done(answer) && Date.now() < deadline),
      Schedule.passthrough
    )
    return Effect.repeat(probe, schedule)
  })

export class NotYet extends Data.TaggedError("NotYet")<{ readonly what: string; readonly withinMs: number }> {
  override get message() {
    return `${this.what}: not within ${this.withinMs} ms`
  }
}

/** Polls `condition` until it holds; fails with NotYet after `withinMs`. */
export const awaitThat = (what: string, condition: () => boolean, options: PollOptions): Effect.Effect<void, NotYet> =>
  Effect.flatMap(
    pollUntil(Effect.sync(condition), (holds) => holds, options),
    (holds) => (holds ? Effect.void : Effect.fail(new NotYet({ what, withinMs: options.withinMs })))
  )

/** Polls `probe` until it gives a value (not undefined) and returns it; fails with NotYet after `withinMs`. */
export const awaitValue = <A, E, R>(what: string, probe: Effect.Effect<A | undefined, E, R>, options: PollOptions) =>
  Effect.flatMap(
    pollUntil(probe, (value) => value !== undefined, options),
    (value): Effect.Effect<A, NotYet> =>
      value === undefined ? Effect.fail(new NotYet({ what, withinMs: options.withinMs })) : Effect.succeed(value as A)
  )
