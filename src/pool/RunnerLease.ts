import { SqlClient } from "@effect/sql"
import { Deferred, Duration, Effect, Layer, Schedule } from "effect"
import { hostname } from "node:os"
import { Runner } from "../allocation/Runner.ts"

/**
 * Holds this process's runner lock for as long as it lives: a session advisory lock on a
 * reserved connection, checked by a heartbeat on that same connection. If the connection drops
 * (Postgres restarted), the lock is taken again on a new one. Other processes see the runner as
 * dead exactly when no session holds the lock (`gateway_allocator_runner_alive`).
 */
export const RunnerLeaseLive = Layer.scopedDiscard(
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const runner = yield* Runner
    const held = yield* Deferred.make<void>()

    const hold = Effect.scoped(
      Effect.gen(function*() {
        const connection = yield* sql.reserve
        yield* connection.execute("select pg_advisory_lock(gateway_allocator_runner_key($1))", [runner.id], undefined)
        // Never hand a connection that holds the lock back to the pool.
        yield* Effect.addFinalizer(() =>
          connection.execute("select pg_advisory_unlock(gateway_allocator_runner_key($1))", [runner.id], undefined)
            .pipe(Effect.ignore)
        )
        yield* connection.execute(
          `insert into runners (id, hostname, pid) values ($1, $2, $3)
           on conflict (id) do update set last_seen_at = now()`,
          [runner.id, hostname(), process.pid],
          undefined
        )
        yield* Deferred.succeed(held, undefined)
        yield* Effect.logInfo("runner lease held").pipe(Effect.annotateLogs({ runner: runner.id }))
        // Fails as soon as the connection is gone; the retry below takes the lock again.
        yield* connection.execute("update runners set last_seen_at = now() where id = $1", [runner.id], undefined).pipe(
          Effect.timeout(Duration.seconds(10)),
          Effect.repeat(Schedule.spaced(Duration.seconds(5)))
        )
      })
    )

    yield* hold.pipe(
      Effect.tapErrorCause((cause) => Effect.logWarning("runner lease lost; taking it again", cause)),
      Effect.retry(Schedule.exponential(Duration.millis(200)).pipe(Schedule.either(Schedule.spaced(Duration.seconds(5))))),
      Effect.forkScoped
    )
    // Nothing runs allocations before the lease is held.
    yield* Deferred.await(held)
  })
)
