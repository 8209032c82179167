import { FileSystem } from "@effect/platform"
import { Data, Duration, Effect, Schedule } from "effect"

// nginx reloads by starting a new generation of workers, sleeping 100 ms, and only then telling
// the old generation to stop accepting. For those 100 ms both generations take new connections,
// so a probe answered by a new worker does not prove that nginx no longer serves the old config.
// A removed route still served by an old worker is the one thing that must not happen: the
// gateway may be handed to another org right after. So after the probe sees the new config, we
// wait until every worker older than the one that answered is "shutting down" (listeners closed).

interface ProcStat {
  readonly ppid: number
  /** Clock ticks since boot (10 ms). Worker generations are at least 100 ms apart. */
  readonly startTime: number
}

const readStat = (fs: FileSystem.FileSystem, pid: number) =>
  Effect.map(fs.readFileString(`/proc/${pid}/stat`), (text): ProcStat => {
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ")
    return { ppid: Number(fields[1]), startTime: Number(fields[19]) }
  })

const readCommand = (fs: FileSystem.FileSystem, pid: number) =>
  Effect.map(fs.readFileString(`/proc/${pid}/cmdline`), (text) => text.replace(/\0/g, " ").trim())

/** True once no worker older than `answeringPid` still accepts connections. */
const oldGenerationClosed = (fs: FileSystem.FileSystem, answeringPid: number) =>
  Effect.gen(function*() {
    const answering = yield* readStat(fs, answeringPid)
    const children = (yield* fs.readFileString(`/proc/${answering.ppid}/task/${answering.ppid}/children`))
      .trim().split(/\s+/).filter((pid) => pid !== "").map(Number)
    for (const pid of children) {
      const [stat, command] = yield* Effect.all([readStat(fs, pid), readCommand(fs, pid)]).pipe(
        // A worker that exited while we looked is not accepting anything.
        Effect.orElseSucceed(() => [undefined, ""] as const)
      )
      if (stat === undefined || !command.includes("worker process") || command.includes("shutting down")) continue
      if (stat.startTime < answering.startTime - 2) return false
    }
    return true
  })

/**
 * Waits until the worker generation before `answeringPid` has stopped accepting connections.
 * Where /proc cannot tell (nginx in another PID namespace, not Linux), waits out nginx's own
 * 100 ms hand-over instead.
 */
export const awaitOldWorkersClosed = (answeringPid: number) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    oldGenerationClosed(fs, answeringPid).pipe(
      Effect.repeat({ until: (closed) => closed, schedule: Schedule.spaced(Duration.millis(5)) }),
      Effect.asVoid,
      Effect.catchAll(() => Effect.sleep(Duration.millis(150)))
    ))

/** /proc could not tell (not Linux, or nginx in another PID namespace). */
export class NoProcInfo extends Data.TaggedError("NoProcInfo")<{}> {}

/** The pids of every worker (of any generation) of the master that `answeringPid` belongs to. */
export const siblingWorkers = (answeringPid: number) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    readStat(fs, answeringPid).pipe(
      Effect.flatMap((stat) => fs.readFileString(`/proc/${stat.ppid}/task/${stat.ppid}/children`)),
      Effect.map((text) => new Set(text.trim().split(/\s+/).filter((pid) => pid !== "").map(Number))),
      Effect.mapError(() => new NoProcInfo())
    ))
