import { Deferred, Duration, Effect, Ref, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { hostname } from "node:os"
import { holdLock, runnerLock } from "../db/advisoryLock.ts"

const HEARTBEAT = Duration.seconds(5)
const HEARTBEAT_TIMEOUT = Duration.seconds(10)

/**
 * This process's identity, recorded on every allocation it runs, and its lease: a session
 * advisory lock on a reserved connection, held for as long as the process lives and checked by a
 * heartbeat on that same connection. Postgres drops the lock the moment the connection dies
 * (kill -9, OOM, reboot), so other processes see the runner as dead exactly when no session
 * holds it (`gateway_allocator_runner_alive`), and crash recovery can tell whose pipelines were
 * orphaned. A lost connection (Postgres restarted) takes the lock again on a new one. Nothing
 * runs allocations before the lease is held.
 *
 * `leaseHeld` says whether the lock is held right now: a runner without it must not act on
 * outside systems (another runner may be adopting its allocations).
 *
 * Tests over in-memory layers use `Runner.make({ id, leaseHeld })`: an identity without a lease.
 */
export class Runner extends Effect.Service<Runner>()("Runner", {
  scoped: Effect.gen(function*() {
    const id = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`
    const held = yield* Deferred.make<void>()
    const holding = yield* Ref.make(false)

    const hold = Effect.scoped(
      Effect.gen(function*() {
        const connection = yield* holdLock(runnerLock(id))
        yield* connection.execute(
          `insert into runners (id, hostname, pid) values ($1, $2, $3)
           on conflict (id) do update set last_seen_at = now()`,
          [id, hostname(), process.pid],
          undefined
        )
        yield* Ref.set(holding, true)
        yield* Effect.addFinalizer(() => Ref.set(holding, false))
        yield* Deferred.succeed(held, undefined)
        yield* Effect.logInfo("runner lease held").pipe(Effect.annotateLogs({ runner: id }))
        // Fails as soon as the connection is gone; the retry below takes the lock again.
        yield* connection.execute("update runners set last_seen_at = now() where id = $1", [id], undefined).pipe(
          Effect.timeout(HEARTBEAT_TIMEOUT),
          Effect.repeat(Schedule.spaced(HEARTBEAT))
        )
      })
    )

    yield* hold.pipe(
      Effect.tapErrorCause((cause) => Effect.logWarning("runner lease lost; taking it again", cause)),
      Effect.retry(Schedule.exponential(Duration.millis(200)).pipe(Schedule.either(Schedule.spaced(Duration.seconds(5))))),
      Effect.forkScoped
    )
    yield* Deferred.await(held)
    return { id, leaseHeld: Ref.get(holding) }
  })
}) {}
