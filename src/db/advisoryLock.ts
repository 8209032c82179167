import { SqlClient, type SqlConnection, type SqlError } from "@effect/sql"
import { Effect, Option, type Scope } from "effect"

/** An advisory lock's key: a SQL expression of one parameter that yields the bigint key. */
export interface LockKey {
  readonly expression: string
  readonly parameter: string
}

/** A lock named by the service (`gateway-allocator:{name}`). */
export const namedLock = (name: string): LockKey => ({
  expression: "hashtextextended($1, 0)",
  parameter: `gateway-allocator:${name}`
})

/** A runner's lease: the key `gateway_allocator_runner_alive` looks for in pg_locks. */
export const runnerLock = (runnerId: string): LockKey => ({
  expression: "gateway_allocator_runner_key($1)",
  parameter: runnerId
})

type Locked<A> = Effect.Effect<A, SqlError.SqlError, SqlClient.SqlClient | Scope.Scope>

/**
 * A session advisory lock on a connection reserved for the Scope. The connection gives up every
 * advisory lock before it goes back to the pool (a pooled connection must never carry a lock to
 * its next user), and it is gone at once if the connection dies: that is what makes it a lease.
 * The connection is returned for work that must run in the lock's session (a lease's heartbeat).
 *
 * The release is registered before the lock is asked for, not once it is held: a waiter
 * interrupted while its `pg_advisory_lock` is pending (a step timing out behind the edge lock) can
 * be granted the lock before the interruption's cancel reaches Postgres (the cancel needs a pooled
 * connection, and the holder's, freed, is the one it gets). Released only once held, that lock went
 * back to the pool held by nobody, and every later taker waited out its timeout behind it
 * (reproduced in test/db/advisoryLock.test.ts). A cancel that lands on the release itself is
 * answered by asking again.
 */
const lockOn = (key: LockKey, mode: "wait" | "try"): Locked<Option.Option<SqlConnection.Connection>> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const connection = yield* sql.reserve
    yield* Effect.addFinalizer(() =>
      connection.execute("select pg_advisory_unlock_all()", [], undefined).pipe(Effect.retry({ times: 1 }), Effect.ignore)
    )
    const [row] = yield* connection.execute(
      mode === "wait"
        // Returns (void) only once the lock is held.
        ? `select true as held from pg_advisory_lock(${key.expression})`
        : `select pg_try_advisory_lock(${key.expression}) as held`,
      [key.parameter],
      undefined
    )
    return row?.held === true ? Option.some(connection) : Option.none()
  })

/** Waits until the lock is held, for the life of the Scope. */
export const holdLock = (key: LockKey): Locked<SqlConnection.Connection> =>
  lockOn(key, "wait").pipe(
    Effect.flatMap(Option.match({
      onNone: () => Effect.dieMessage("pg_advisory_lock returned without the lock"),
      onSome: Effect.succeed
    }))
  )

/** Takes the lock if no other session holds it, for the life of the Scope. */
export const tryLock = (key: LockKey): Locked<boolean> => Effect.map(lockOn(key, "try"), Option.isSome)
