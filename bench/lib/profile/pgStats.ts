// Postgres's own counters for the service's database (pg_stat_database), read over a connection of
// the benchmark's own, opened and closed for each read.
//
// A backend publishes its counters late: at the end of a transaction if it last did so at least
// 1 s before, else after 10 s of idleness (PGSTAT_MIN_INTERVAL, PGSTAT_IDLE_INTERVAL in
// src/backend/utils/activity/pgstat.c), and always when it exits. So a read is exact only once the
// service's backends have been idle for 10 s, or have exited (the server stopped).
import * as Reactivity from "@effect/experimental/Reactivity"
import { PgClient } from "@effect/sql-pg"
import { Effect, type Redacted } from "effect"
import { sleep } from "../stats.ts"

/** How long a backend may hold its counters when idle, plus a margin. */
export const PGSTAT_IDLE_FLUSH_MS = 10_500

export interface DatabaseStats {
  readonly database: string
  readonly commits: number
  readonly rollbacks: number
  readonly returned: number
  readonly fetched: number
  readonly inserted: number
  readonly updated: number
  readonly deleted: number
  /** Client backends connected to the database other than this read's. */
  readonly otherBackends: number
}

const run = <A>(url: Redacted.Redacted<string>, f: (sql: PgClient.PgClient) => Effect.Effect<A, unknown>) =>
  Effect.runPromise(
    Effect.scoped(Effect.flatMap(PgClient.make({ url, maxConnections: 1 }), f)).pipe(Effect.provide(Reactivity.layer))
  )

export const readDatabaseStats = (url: Redacted.Redacted<string>): Promise<DatabaseStats> =>
  run(url, (sql) =>
    Effect.gen(function*() {
      const rows = yield* sql.unsafe<Record<string, string | number>>(
        `select d.datname, d.xact_commit, d.xact_rollback, d.tup_returned, d.tup_fetched, d.tup_inserted, d.tup_updated, d.tup_deleted,
                (select count(*) from pg_stat_activity a
                  where a.datname = d.datname and a.backend_type = 'client backend' and a.pid <> pg_backend_pid()) as others
           from pg_stat_database d where d.datname = current_database()`
      )
      const row = rows[0]
      if (row === undefined) throw new Error("pg_stat_database has no row for the service's database")
      const n = (key: string) => Number(row[key])
      return {
        database: String(row.datname),
        commits: n("xact_commit"),
        rollbacks: n("xact_rollback"),
        returned: n("tup_returned"),
        fetched: n("tup_fetched"),
        inserted: n("tup_inserted"),
        updated: n("tup_updated"),
        deleted: n("tup_deleted"),
        otherBackends: n("others")
      }
    }))

/** Reads until no other client backend is connected (a stopped server's have exited and published), at most `timeoutMs`. */
export const readDatabaseStatsOnceAlone = async (url: Redacted.Redacted<string>, timeoutMs = 5000): Promise<DatabaseStats> => {
  const deadline = performance.now() + timeoutMs
  while (true) {
    const stats = await readDatabaseStats(url)
    if (stats.otherBackends === 0 || performance.now() > deadline) return stats
    await sleep(100)
  }
}
