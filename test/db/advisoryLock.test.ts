// Advisory locks on a real Postgres (src/db/advisoryLock.ts): a lock must never go back to the
// pool with its connection. A waiter interrupted while its pg_advisory_lock is pending (a step or
// undo timing out behind the edge lock) is the case: when the holder lets go, Postgres grants the
// waiter's pending lock; the interruption's cancel comes too late, and the lock would stay on a
// pooled connection, held by nobody, stalling every later taker.
import * as Reactivity from "@effect/experimental/Reactivity"
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Scope } from "effect"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { holdLock, namedLock, tryLock } from "../../src/db/advisoryLock.ts"
import { startEmbeddedPostgres } from "../../src/db/EmbeddedPostgres.ts"

const key = namedLock("test-edge")

describe("advisory locks (real Postgres)", () => {
  it.scopedLive("a waiter interrupted while its lock is pending leaves no lock behind, even when Postgres grants it meanwhile", () =>
    Effect.gen(function*() {
      const dir = yield* Effect.acquireRelease(
        Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "advisory-lock-"))),
        (d) => Effect.promise(() => fs.rm(d, { recursive: true, force: true }))
      )
      const pg = yield* startEmbeddedPostgres({ dataDir: dir })
      // Two connections: the holder's and the waiter's. The waiter's cancel (pg_cancel_backend,
      // from the pool) then has to wait for the holder's connection: the lock is granted first.
      const sql = yield* PgClient.make({ url: pg.url, maxConnections: 2 }).pipe(Effect.provide(Reactivity.layer))
      const observer = yield* PgClient.make({ url: pg.url, maxConnections: 1 }).pipe(Effect.provide(Reactivity.layer))
      const heldLocks = Effect.map(
        observer<{ readonly n: number }>`select count(*)::int as n from pg_locks where locktype = 'advisory' and granted`,
        (rows) => rows[0]?.n ?? -1
      )

      for (let round = 0; round < 5; round++) {
        const holder = yield* Scope.make()
        yield* holdLock(key).pipe(Effect.provideService(SqlClient.SqlClient, sql), Scope.extend(holder))
        expect(yield* heldLocks).toBe(1)
        const waiter = yield* Effect.scoped(holdLock(key)).pipe(Effect.provideService(SqlClient.SqlClient, sql), Effect.fork)
        yield* Effect.sleep("100 millis")
        const interrupting = yield* Effect.fork(Fiber.interrupt(waiter))
        yield* Effect.sleep("50 millis")
        yield* Scope.close(holder, Effect.void.pipe(Effect.exit, Effect.runSync))
        yield* Fiber.join(interrupting)
        // Nobody holds it now: no lock left on a pooled connection, and a new taker gets it at once.
        expect(yield* heldLocks).toBe(0)
        expect(yield* Effect.scoped(tryLock(key)).pipe(Effect.provideService(SqlClient.SqlClient, sql))).toBe(true)
      }
    }))
})
