import { Deferred, Effect, FiberId, type Scope } from "effect"

/**
 * Group commit. Callers submit items; one flush runs at a time, and every item submitted while a
 * flush runs is flushed, together, by the next one. Each caller waits for its own batch and gets
 * that batch's outcome. Used where the outside system pays per call rather than per item (an
 * nginx reload re-parses everything; PowerDNS on SQLite takes one writer at a time).
 */
export const makeGroupCommit = <I, E>(options: {
  readonly flush: (items: ReadonlyArray<I>) => Effect.Effect<void, E>
  /** The error a waiter gets when its batch is interrupted (shutdown). */
  readonly onInterrupt: () => E
  /** Whether `item` may join `batch` (e.g. not two changes to one name); default: always. */
  readonly canJoin?: (batch: ReadonlyArray<I>, item: I) => boolean
  /** Held by each flush; pass one to keep other work from running during a flush. */
  readonly lock?: Effect.Semaphore
}): Effect.Effect<(item: I) => Effect.Effect<void, E>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const lock = options.lock ?? (yield* Effect.makeSemaphore(1))
    const scope = yield* Effect.scope

    interface Batch {
      readonly done: Deferred.Deferred<void, E>
      readonly items: Array<I>
    }
    // The batch that has not started flushing yet; new items join it.
    let pending: Batch | undefined

    const run = (batch: Batch) =>
      lock.withPermits(1)(
        Effect.suspend(() => {
          if (pending === batch) pending = undefined
          return options.flush(batch.items).pipe(Effect.exit, Effect.flatMap((exit) => Deferred.done(batch.done, exit)))
        })
      ).pipe(Effect.onInterrupt(() => Deferred.fail(batch.done, options.onInterrupt())))

    return (item: I) =>
      Effect.suspend(() => {
        if (pending !== undefined && (options.canJoin?.(pending.items, item) ?? true)) {
          pending.items.push(item)
          return Deferred.await(pending.done)
        }
        // Synchronous up to here, so no other fiber can open a second pending batch meanwhile.
        const batch: Batch = { done: Deferred.unsafeMake<void, E>(FiberId.none), items: [item] }
        pending = batch
        return Effect.forkIn(run(batch), scope).pipe(Effect.zipRight(Deferred.await(batch.done)))
      })
  })
