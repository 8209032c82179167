import { Cause, Clock, Effect, Either, Option, Ref } from "effect"
import { describeCause } from "../lib/describeCause.ts"

/** A degraded state that lasts is told again this often, never on every failed attempt. */
export const RETELL_AFTER_MS = 60_000

/** What an outage log knows: since when it has been failing, and why, if it is. */
export interface Outage {
  readonly reason: string
  readonly since: Date
}

/**
 * How the service tells about something that fails again and again (a dependency that went away,
 * a periodic pass that cannot run): a warning when it starts failing, then at most once a minute
 * while it goes on, an info line when it works again. A flood of one line per tick (every 250 ms,
 * say) would bury everything else in the log.
 */
export const makeOutageLog = (what: string) =>
  Effect.gen(function*() {
    const state = yield* Ref.make<{ readonly failing: Option.Option<Outage>; readonly toldMs: number }>({
      failing: Option.none(),
      toldMs: 0
    })

    /** Records the latest attempt's result (right: it worked; left: why not) and logs what changed. */
    const report = (result: Either.Either<void, string>) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const before = yield* Ref.get(state)
        if (Either.isRight(result)) {
          if (Option.isNone(before.failing)) return
          yield* Ref.set(state, { failing: Option.none(), toldMs: now })
          yield* Effect.logInfo(`${what} is back after ${Math.round((now - before.failing.value.since.getTime()) / 1000)} s`)
          return
        }
        const reason = result.left
        if (Option.isNone(before.failing)) {
          yield* Ref.set(state, { failing: Option.some({ reason, since: new Date(now) }), toldMs: now })
          yield* Effect.logWarning(`${what} is failing: ${reason}`)
          return
        }
        const since = before.failing.value.since
        const retell = now - before.toldMs >= RETELL_AFTER_MS
        yield* Ref.set(state, { failing: Option.some({ reason, since }), toldMs: retell ? now : before.toldMs })
        // Between two warnings, each failure is there at LOG_LEVEL=Debug only.
        yield* retell
          ? Effect.logWarning(`${what} is still failing (since ${since.toISOString()}): ${reason}`)
          : Effect.logDebug(`${what} failed again: ${reason}`)
      })

    /**
     * A periodic job's end: done, or failed (told as above). A defect is a bug, not an outage:
     * it is logged whole, every time.
     */
    const reportCause = (cause: Cause.Cause<{ readonly message: string }>) =>
      Cause.isInterruptedOnly(cause)
        ? Effect.void
        : Option.isSome(Cause.dieOption(cause))
        ? Effect.logError(`${what} died`, cause)
        : report(Either.left(describeCause(cause)))

    return { report, reportCause, failing: Effect.map(Ref.get(state), (s) => s.failing) }
  })

export type OutageLog = Effect.Effect.Success<ReturnType<typeof makeOutageLog>>
