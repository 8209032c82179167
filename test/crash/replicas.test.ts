// Replicas starting together on a fresh database ("applied at start-up ...
// under the Migrator's lock, so replicas can start together"). Both must come up: a replica
// that dies at start-up because another one migrated at the same moment is a crash loop in
// production. The collision is made certain, not left to timing: the test holds the migrations
// table's creation open in its own transaction until both replicas wait on it, then lets go.
import { expect, layer } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { createRequire } from "node:module"
import { pollUntil } from "../support/poll.ts"
import { request, startServer } from "../support/server.ts"
import { Stack, StackLive } from "../support/stack.ts"

interface PgClient {
  connect(): Promise<void>
  query(text: string, params?: ReadonlyArray<unknown>): Promise<{ rows: Array<Record<string, any>> }>
  end(): Promise<void>
}
const pg = createRequire(import.meta.url)("pg") as { Client: new(options: { connectionString: string }) => PgClient }

const withDatabase = (url: string, database: string) => {
  const parsed = new URL(url)
  parsed.pathname = `/${database}`
  return parsed.toString()
}

const client = (url: string) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const connection = new pg.Client({ connectionString: url })
      await connection.connect()
      return connection
    }),
    (connection) => Effect.promise(() => connection.end().catch(() => undefined))
  )

layer(StackLive({ gateways: 1 }), { timeout: 120_000, excludeTestServices: true })("replicas starting together", (it) => {
  it.effect("two replicas start at once on a fresh database: both come up (the migrations' first run is not a race)", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const url = stack.env["DATABASE_URL"]!
      const database = `fresh_${Date.now()}`
      const admin = yield* client(withDatabase(url, "postgres"))
      yield* Effect.promise(() => admin.query(`create database ${database}`))
      const freshUrl = withDatabase(url, database)

      // The table the Migrator creates first, created here in a transaction left open: each
      // replica's own CREATE TABLE waits on it.
      const blocker = yield* client(freshUrl)
      yield* Effect.promise(async () => {
        await blocker.query("begin")
        await blocker.query("create table gateway_allocator_migrations (migration_id integer primary key)")
      })
      const env = { DATABASE_URL: freshUrl }
      const replicas = yield* Effect.forEach(["fresh-a", "fresh-b"], (name) =>
        Effect.fork(startServer(stack, { name, env }).pipe(Effect.either)))

      // Both replicas are waiting: on the table (the Migrator's CREATE TABLE) or on whatever a
      // replica uses to wait for the other's migrations (an advisory lock, say).
      const waiting = () =>
        Effect.promise(() =>
          admin.query(
            `select query from pg_stat_activity
              where datname = $1 and application_name = 'gateway-allocator' and wait_event_type = 'Lock'`,
            [database]
          )
        ).pipe(Effect.map((result) => result.rows.map((row) => String(row["query"]).replace(/\s+/g, " ").slice(0, 80))))
      const blocked = yield* pollUntil(waiting(), (queries) => queries.length >= 2, { withinMs: 45_000, spacingMs: 50 })
      console.log(`replicas waiting when the table's creation was let go: ${JSON.stringify(blocked)}`)
      expect(blocked).toHaveLength(2)
      yield* Effect.promise(() => blocker.query("rollback"))

      const outcomes = yield* Effect.forEach(replicas, Fiber.join)
      const failures = outcomes.flatMap((outcome) => (outcome._tag === "Left" ? [outcome.left.message] : []))
      expect(failures).toEqual([])
      for (const outcome of outcomes) {
        if (outcome._tag === "Right") expect((yield* request(outcome.right, "GET", "/pool")).status).toBe(200)
      }
    }).pipe(Effect.scoped), { timeout: 120_000 })
})
