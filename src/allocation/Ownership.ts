import { Effect, Option } from "effect"
import { OwnershipLost } from "../domain/errors.ts"
import type { AllocationId } from "../domain/ids.ts"
import type { JournalRecord } from "../journal/Journal.ts"
import { AllocationStore } from "./AllocationStore.ts"
import { Runner } from "../pool/Runner.ts"

/**
 * Who may act on an allocation, so that exactly one worker does at a time:
 * - across processes, the runner its row names, while that runner's lease is held. Takeovers
 *   (a stop, a recovery) change the row's runner by compare-and-set, and every side effect on an
 *   outside system is preceded by `check`: a runner that lost its lease or its allocation stops
 *   there instead of acting for an allocation someone else now owns;
 * - within this process, one fiber at a time (`exclusive`): a reconcile pass leaves alone what a
 *   start or a stop of this process is working on.
 */
export class Ownership extends Effect.Service<Ownership>()("Ownership", {
  effect: Effect.gen(function*() {
    const allocations = yield* AllocationStore
    const runner = yield* Runner
    const workingOn = new Set<AllocationId>()

    /**
     * Fails with OwnershipLost unless this runner holds its lease (in its own view and in
     * Postgres's) and the live allocation's row names it. `journal`: rows the check's statement
     * writes, whatever it finds (a step's opening row).
     */
    const check = (allocationId: AllocationId, journal: ReadonlyArray<JournalRecord> = []) =>
      Effect.gen(function*() {
        const leaseHeld = yield* runner.leaseHeld
        const { leaseAlive, namesRunner } = yield* allocations.owns(allocationId, runner.id, journal)
        if (leaseHeld && leaseAlive && namesRunner) return
        return yield* new OwnershipLost({ allocationId, leaseHeld: leaseHeld && leaseAlive })
      })

    /** Runs `effect` as this process's only worker on the allocation; none when another fiber is. */
    const exclusive = <A, E, R>(allocationId: AllocationId, effect: Effect.Effect<A, E, R>) =>
      Effect.acquireUseRelease(
        Effect.sync(() => {
          if (workingOn.has(allocationId)) return false
          workingOn.add(allocationId)
          return true
        }),
        (mine) => mine ? Effect.map(effect, Option.some) : Effect.succeed(Option.none<A>()),
        (mine) => mine ? Effect.sync(() => workingOn.delete(allocationId)) : Effect.void
      )

    return { check, exclusive }
  })
}) {}
