// OS-process helpers shared by the dev stack (nginx, PowerDNS, embedded Postgres).
import { FileSystem } from "@effect/platform"
import { Data, Deferred, Duration, Effect, Exit, Option, Schedule } from "effect"
import * as childProcess from "node:child_process"

export class ProcessError extends Data.TaggedError("ProcessError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface ChildExit {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly error?: Error
}

/** A long-running child we spawned and whose exit we observe. */
export interface Child {
  readonly pid: number
  readonly command: string
  readonly exited: Deferred.Deferred<ChildExit>
}

const describeExit = (exit: ChildExit): string =>
  exit.error !== undefined
    ? exit.error.message
    : exit.signal !== null
      ? `killed by ${exit.signal}`
      : `exit code ${String(exit.code)}`

const SETPRIV = "/usr/bin/setpriv"

/**
 * Spawns a long-running process in its own process group (`detached`), so a
 * Ctrl-C in the terminal reaches only Node and the Scope decides the stop
 * order. stdout/stderr go to `logFile` (or nowhere), never to a pipe: a daemon
 * holding an inherited pipe hangs whoever reads it.
 *
 * Where util-linux's setpriv exists, the child also gets SIGTERM if Node dies
 * without closing the Scope (kill -9, a vitest worker killed on timeout), so
 * it cannot linger holding ports; setpriv execs the command, keeping the pid.
 */
export const spawnChild = Effect.fn("processes.spawnChild")(function*(
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly logFile?: string } = {}
) {
  const fs = yield* FileSystem.FileSystem
  const dieWithParent = yield* fs.exists(SETPRIV).pipe(Effect.orElseSucceed(() => false))
  const argv = dieWithParent ? [SETPRIV, "--pdeathsig", "SIGTERM", "--", command, ...args] : [command, ...args]
  return yield* Effect.scoped(
    Effect.gen(function*() {
      // The child keeps its own copy of the descriptor; ours closes with this scope.
      const out = options.logFile === undefined
        ? "ignore" as const
        : (yield* fs.open(options.logFile, { flag: "a" }).pipe(
          Effect.mapError((cause) => new ProcessError({ message: `cannot open ${options.logFile}`, cause }))
        )).fd
      const exited = yield* Deferred.make<ChildExit>()
      const child = yield* Effect.try({
        try: () => childProcess.spawn(argv[0] ?? command, argv.slice(1), { detached: true, stdio: ["ignore", out, out] }),
        catch: (cause) => new ProcessError({ message: `cannot spawn ${command}`, cause })
      })
      child.once("error", (error) => Deferred.unsafeDone(exited, Exit.succeed({ code: null, signal: null, error })))
      child.once("exit", (code, signal) => Deferred.unsafeDone(exited, Exit.succeed({ code, signal })))
      if (child.pid === undefined) {
        const exit = yield* Deferred.await(exited)
        return yield* new ProcessError({ message: `cannot spawn ${command}: ${describeExit(exit)}`, cause: exit.error })
      }
      return { pid: child.pid, command, exited } satisfies Child
    })
  )
})

export const hasExited = (child: Child): Effect.Effect<boolean> => Deferred.isDone(child.exited)

/**
 * Waits for `effect` at most `duration`, even inside a finalizer: finalizers
 * run uninterruptibly, so the timeout could not cut the wait short otherwise.
 */
export const within = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  duration: Duration.DurationInput
): Effect.Effect<Option.Option<A>, E, R> => effect.pipe(Effect.interruptible, Effect.timeoutOption(duration))

/** SIGTERM, then SIGKILL after `graceMs`; returns once the child is reaped. */
export const terminateChild = (
  child: Child,
  options: { readonly signal?: NodeJS.Signals; readonly graceMs?: number } = {}
): Effect.Effect<void> =>
  Effect.gen(function*() {
    if (yield* hasExited(child)) return
    yield* signalPid(child.pid, options.signal ?? "SIGTERM")
    const exited = yield* within(Deferred.await(child.exited), Duration.millis(options.graceMs ?? 5000))
    if (Option.isNone(exited)) {
      yield* Effect.logWarning(`${child.command} (pid ${child.pid}) ignored ${options.signal ?? "SIGTERM"}; sending SIGKILL`)
      yield* signalPid(child.pid, "SIGKILL")
      yield* Deferred.await(child.exited)
    }
  }).pipe(Effect.withSpan("processes.terminateChild", { attributes: { command: child.command, pid: child.pid } }))

/** Sends a signal; a process that is already gone is not an error. */
export const signalPid = (pid: number, signal: NodeJS.Signals | 0): Effect.Effect<boolean> =>
  Effect.try(() => process.kill(pid, signal)).pipe(
    Effect.catchAll((error) =>
      // EPERM: it exists but is not ours to signal; ESRCH: it is gone.
      Effect.succeed(errorCode(error.error) === "EPERM")
    )
  )

const errorCode = (error: unknown): string | undefined =>
  typeof error === "object" && error !== null && "code" in error && typeof error.code === "string"
    ? error.code
    : undefined

/**
 * Whether a pid is a live process. A zombie counts as dead: on this machine
 * PID 1 reaps orphans lazily, so `kill -0` keeps succeeding for a process
 * that has already exited.
 */
export const isAlive = (pid: number): Effect.Effect<boolean, never, FileSystem.FileSystem> =>
  Effect.gen(function*() {
    if (!(yield* signalPid(pid, 0))) return false
    const fs = yield* FileSystem.FileSystem
    const stat = yield* fs.readFileString(`/proc/${pid}/stat`).pipe(Effect.option)
    if (Option.isNone(stat)) return true
    // Format: "pid (comm) STATE ..."; comm may contain spaces, so split after the last ')'.
    const state = stat.value.slice(stat.value.lastIndexOf(")") + 2, stat.value.lastIndexOf(")") + 3)
    return state !== "Z" && state !== "X"
  })

/** The command line of a pid, or none when it cannot be read. */
export const commandLine = (pid: number): Effect.Effect<Option.Option<string>, never, FileSystem.FileSystem> =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    fs.readFileString(`/proc/${pid}/cmdline`).pipe(
      Effect.map((raw) => raw.split("\0").join(" ").trim()),
      Effect.option
    ))

/** The first line of a pid file as a pid, or none. */
export const readPidFile = (path: string): Effect.Effect<Option.Option<number>, never, FileSystem.FileSystem> =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    fs.readFileString(path).pipe(
      Effect.map((text) => Number.parseInt(text.split("\n")[0]?.trim() ?? "", 10)),
      Effect.map((pid) => Number.isInteger(pid) && pid > 0 ? Option.some(pid) : Option.none()),
      Effect.orElseSucceed(() => Option.none<number>())
    ))

/** Polls until the pid is gone; false when it is still alive after `timeout`. */
export const waitUntilGone = (
  pid: number,
  timeout: Duration.DurationInput
): Effect.Effect<boolean, never, FileSystem.FileSystem> =>
  isAlive(pid).pipe(
    Effect.repeat({ schedule: Schedule.spaced(Duration.millis(50)), while: (alive) => alive }),
    (wait) => within(wait, timeout),
    Effect.map(Option.isSome)
  )

/**
 * A previous run that was killed (`kill -9`, crash) can leave its daemon
 * alive with the ports and files we are about to use. If `pidFile` names a
 * live process whose command line contains `commandMatch` (a recycled pid may
 * belong to someone else), stop it and wait until it is gone.
 */
export const stopStaleProcess = (
  pidFile: string,
  commandMatch: string,
  options: { readonly signal?: NodeJS.Signals; readonly graceMs?: number } = {}
): Effect.Effect<Option.Option<number>, never, FileSystem.FileSystem> =>
  Effect.gen(function*() {
    const pid = yield* readPidFile(pidFile)
    if (Option.isNone(pid) || pid.value === process.pid || !(yield* isAlive(pid.value))) return Option.none()
    const cmd = yield* commandLine(pid.value)
    if (Option.isSome(cmd) && !cmd.value.includes(commandMatch)) return Option.none()
    const signal = options.signal ?? "SIGTERM"
    yield* Effect.logWarning(`stopping ${commandMatch} (pid ${pid.value}) left running by a previous run`)
    yield* signalPid(pid.value, signal)
    if (!(yield* waitUntilGone(pid.value, Duration.millis(options.graceMs ?? 10_000)))) {
      yield* signalPid(pid.value, "SIGKILL")
      yield* waitUntilGone(pid.value, Duration.seconds(5))
    }
    return pid
  }).pipe(Effect.withSpan("processes.stopStaleProcess", { attributes: { pidFile, commandMatch } }))

/** The last lines of a log file, for error messages; empty when unreadable. */
export const tailFile = (path: string, lines = 20): Effect.Effect<string, never, FileSystem.FileSystem> =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    fs.readFileString(path).pipe(
      Effect.map((text) => text.trimEnd().split("\n").slice(-lines).join("\n")),
      Effect.orElseSucceed(() => "")
    ))

export { describeExit }

/**
 * Waits until `ready` holds (polled every `pollMs`) or the child exits, at most `timeoutMs`.
 * None when ready; otherwise why not (the child is terminated then).
 */
export const awaitReady = <R>(
  child: Child,
  ready: Effect.Effect<boolean, never, R>,
  options: { readonly pollMs: number; readonly timeoutMs: number; readonly notReady: string }
): Effect.Effect<Option.Option<string>, never, R> =>
  Effect.gen(function*() {
    const outcome = yield* Effect.raceFirst(
      Effect.as(ready.pipe(Effect.repeat({ schedule: Schedule.spaced(Duration.millis(options.pollMs)), until: (ok) => ok })), Option.none()),
      Effect.map(Deferred.await(child.exited), Option.some)
    ).pipe((race) => within(race, Duration.millis(options.timeoutMs)))
    const failure = Option.match(outcome, {
      onNone: () => Option.some(options.notReady),
      onSome: Option.map(describeExit)
    })
    if (Option.isSome(failure)) yield* terminateChild(child)
    return failure
  })
