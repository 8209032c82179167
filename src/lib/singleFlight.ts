import { Effect, Fiber, FiberMap, Option } from "effect"

/**
 * One fiber per key, owned by the caller's scope and detached from whoever asks: a caller that
 * goes away does not abort the work, and concurrent callers for one key join the same fiber.
 * `fibers` is the map itself (to wait for it to empty, or to interrupt what runs at shutdown).
 */
export const singleFlight = <K, A, E>() =>
  Effect.gen(function*() {
    const fibers = yield* FiberMap.make<K, A, E>()
    const lock = yield* Effect.makeSemaphore(1)
    const run = (key: K, effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
      lock.withPermits(1)(
        Effect.flatMap(FiberMap.get(fibers, key).pipe(Effect.option), (existing) =>
          Option.isSome(existing) ? Effect.succeed(existing.value) : FiberMap.run(fibers, key, effect))
      ).pipe(Effect.flatMap(Fiber.join))
    /** Waits for the key's fiber, if one runs, whatever its outcome. */
    const wait = (key: K) => FiberMap.get(fibers, key).pipe(Effect.flatMap(Fiber.await), Effect.ignore)
    return { fibers, run, await: wait }
  })
