import { Deferred, Effect, Either, FiberId, type Scope } from "effect"

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
  makeGroupCommitPerMember<I, void, E>({
    ...options,
    flush: (items) => Effect.as(options.flush(items), items.map(() => Either.right(undefined)))
  })

/**
 * Group commit where the flush answers each member on its own: it returns one result per item,
 * in the items' order, so one member's failure need not be the others'. A failure of the flush
 * itself (or a defect) is every member's, as with `makeGroupCommit`.
 */
export const makeGroupCommitPerMember = <I, A, E>(options: {
  readonly flush: (items: ReadonlyArray<I>) => Effect.Effect<ReadonlyArray<Either.Either<A, E>>, E>
  /** The error a waiter gets when its batch is interrupted (shutdown). */
  readonly onInterrupt: () => E
  /** Whether `item` may join `batch` (e.g. not two changes to one name); default: always. */
  readonly canJoin?: (batch: ReadonlyArray<I>, item: I) => boolean
  /** Held by each flush; pass one to keep other work from running during a flush. */
  readonly lock?: Effect.Semaphore
}): Effect.Effect<(item: I) => Effect.Effect<A, E>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const lock = options.lock ?? (yield* Effect.makeSemaphore(1))
    const scope = yield* Effect.scope

    interface Batch {
      readonly done: Deferred.Deferred<ReadonlyArray<Either.Either<A, E>>, E>
      readonly items: Array<I>
    }
    // The batch that has not started flushing yet; new items join it.
    let pending: Batch | undefined

    const run = (batch: Batch) =>
      lock.withPermits(1)(
        Effect.suspend(() => {
          if (pending === batch) pending = undefined
          return options.flush(batch.items).pipe(
            // A flush that miscounts would hand members each other's results: a bug, not an outcome.
            Effect.filterOrDieMessage(
              (results) => results.length === batch.items.length,
              `group commit: the flush answered a batch of ${batch.items.length} with another number of results`
            ),
            Effect.exit,
            Effect.flatMap((exit) => Deferred.done(batch.done, exit))
          )
        })
      ).pipe(Effect.onInterrupt(() => Deferred.fail(batch.done, options.onInterrupt())))

    // Each member reads its own result, at the position it joined at.
    const resultOf = (batch: Batch, index: number) =>
      Effect.flatMap(Deferred.await(batch.done), (results) => {
        const result = results.at(index)
        return result === undefined ? Effect.dieMessage(`group commit: no result for member ${index}`) : result
      })

    return (item: I) =>
      Effect.suspend(() => {
        if (pending !== undefined && (options.canJoin?.(pending.items, item) ?? true)) {
          pending.items.push(item)
          return resultOf(pending, pending.items.length - 1)
        }
        // Synchronous up to here, so no other fiber can open a second pending batch meanwhile.
        const batch: Batch = {
          done: Deferred.unsafeMake<ReadonlyArray<Either.Either<A, E>>, E>(FiberId.none),
          items: [item]
        }
        pending = batch
        return Effect.forkIn(run(batch), scope).pipe(Effect.zipRight(resultOf(batch, 0)))
      })
  })
