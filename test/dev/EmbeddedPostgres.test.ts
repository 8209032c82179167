import * as Reactivity from "@effect/experimental/Reactivity"
import { PgClient } from "@effect/sql-pg"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import * as fs from "node:fs/promises"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { startEmbeddedPostgres } from "../../src/dev/EmbeddedPostgres.ts"

// The postgres OS user must be able to enter the directory: mkdtemp makes it 0700.
const tempDir = Effect.acquireRelease(
  Effect.promise(async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "embedded-pg-"))
    await fs.chmod(dir, 0o755)
    return dir
  }),
  (dir) => Effect.promise(() => fs.rm(dir, { recursive: true, force: true }))
)

const selectOne = (url: Redacted.Redacted<string>) =>
  Effect.scoped(
    Effect.gen(function*() {
      const sql = yield* PgClient.make({ url, maxConnections: 1 })
      const rows = yield* sql<{ readonly one: number; readonly db: string }>`SELECT 1 AS one, current_database() AS db`
      return rows[0]
    })
  ).pipe(Effect.provide(Reactivity.layer))

describe("EmbeddedPostgres", () => {
  it.scopedLive("initialises, answers select 1, and keeps its data across restarts", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const started = Date.now()
      const first = yield* Effect.scoped(
        Effect.gen(function*() {
          const pg = yield* startEmbeddedPostgres({ dataDir: dir })
          yield* Effect.log(`first start (initdb) took ${Date.now() - started} ms`)
          expect(Redacted.value(pg.url)).toMatch(/^postgres:\/\/postgres:[^@]+@127\.0\.0\.1:\d+\/gateway_allocator$/)
          expect(yield* selectOne(pg.url)).toEqual({ one: 1, db: "gateway_allocator" })
          const sql = yield* PgClient.make({ url: pg.url, maxConnections: 1 }).pipe(Effect.provide(Reactivity.layer))
          yield* sql`CREATE TABLE kept (v int)`
          yield* sql`INSERT INTO kept VALUES (42)`
          return pg
        })
      )
      // Closed: the server is gone.
      const afterStop = yield* selectOne(first.url).pipe(Effect.timeout("3 seconds"), Effect.either)
      expect(afterStop._tag).toBe("Left")

      const restarted = Date.now()
      const second = yield* startEmbeddedPostgres({ dataDir: dir })
      yield* Effect.log(`restart took ${Date.now() - restarted} ms`)
      const rows = yield* Effect.scoped(
        Effect.flatMap(PgClient.make({ url: second.url, maxConnections: 1 }), (sql) => sql<{ readonly v: number }>`SELECT v FROM kept`)
      ).pipe(Effect.provide(Reactivity.layer))
      expect(rows).toEqual([{ v: 42 }])
    }))

  it.scopedLive("stops a postmaster left running on the same data directory", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      // The first server plays the part of a killed previous run's leftover.
      const leftover = yield* startEmbeddedPostgres({ dataDir: dir })
      const replacement = yield* Effect.scoped(
        Effect.gen(function*() {
          const pg = yield* startEmbeddedPostgres({ dataDir: dir })
          expect(yield* selectOne(pg.url)).toEqual({ one: 1, db: "gateway_allocator" })
          return pg
        })
      )
      expect(replacement.port).not.toBe(leftover.port)
      const old = yield* selectOne(leftover.url).pipe(Effect.timeout("3 seconds"), Effect.either)
      expect(old._tag).toBe("Left")
    }))

  it.scopedLive("a busy port fails with postgres's own message", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const blocker = yield* Effect.acquireRelease(
        Effect.async<net.Server>((resume) => {
          const server = net.createServer().listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
        }),
        (server) => Effect.async<void>((resume) => void server.close(() => resume(Effect.void)))
      )
      const address = blocker.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      const error = yield* Effect.flip(startEmbeddedPostgres({ dataDir: dir, port }))
      expect(error._tag).toBe("EmbeddedPostgresError")
      expect(error.message).toMatch(/Address already in use|could not create any TCP\/IP sockets/)
    }))
})
