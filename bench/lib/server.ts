// The service as a child process: compiled, as `npm start` runs it in production (the command of
// package.json's start script, dist/ built first), or the old way through tsx, for comparison.
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from "node:fs"
import path from "node:path"
import { now, sleep } from "./stats.ts"

/** `compiled`: `node ... dist/main.js` (package.json's start script); `tsx`: `node --import tsx src/main.ts`. */
export type ServerRuntime = "compiled" | "tsx"

/**
 * The server's node arguments in `root`. Compiled: builds dist/ when missing or stale (the same
 * check `npm start` runs first), then the start script's own arguments, so the benchmark runs the
 * server exactly as production does. A tree without a build (an old BENCH_REF) runs through tsx.
 */
export const serverArgs = (root: string, runtime: ServerRuntime): { readonly runtime: ServerRuntime; readonly args: Array<string> } => {
  const prestart = path.join(root, "scripts", "prestart.mjs")
  if (runtime === "tsx" || !existsSync(prestart)) return { runtime: "tsx", args: ["--import", "tsx", "src/main.ts"] }
  const build = spawnSync(process.execPath, [prestart], { cwd: root, stdio: "inherit", timeout: 120_000 })
  if (build.status !== 0) throw new Error(`building dist/ in ${root} failed (${build.status ?? build.signal})`)
  const start: unknown = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8")).scripts?.start
  // `exec node ...`: npm's SIGTERM reaches node itself, not a shell that would not pass it on.
  const words = (typeof start === "string" ? start.trim().split(/\s+/) : []).filter((word, i) => !(i === 0 && word === "exec"))
  if (words[0] !== "node") throw new Error(`package.json's start script is not \`[exec] node ...\`: ${String(start)}`)
  return { runtime: "compiled", args: words.slice(1) }
}

export interface Server {
  readonly pid: number
  readonly port: number
  readonly baseUrl: string
  readonly mode: "lua" | "coalesce" | "each"
  readonly logFile: string
  /** Spawn to the first 200 of GET /healthz. */
  readonly startupMs: number
  readonly child: ChildProcess
}

const SETPRIV = "/usr/bin/setpriv"

/** Every server child still running: the run's finalizer stops them, whatever happened. */
export const liveChildren = new Set<ChildProcess>()

const exited = (child: ChildProcess) => child.exitCode !== null || child.signalCode !== null

const waitExit = (child: ChildProcess, timeoutMs: number): Promise<boolean> =>
  exited(child)
    ? Promise.resolve(true)
    : new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs)
      child.once("exit", () => {
        clearTimeout(timer)
        resolve(true)
      })
    })

/** SIGTERM (the service's graceful shutdown), SIGKILL after `graceMs`; the ms from SIGTERM to exit (NaN if killed). */
export const stopChild = async (child: ChildProcess, graceMs = 20_000): Promise<number> => {
  const start = now()
  let ms = 0
  if (!exited(child)) {
    child.kill("SIGTERM")
    if (await waitExit(child, graceMs)) ms = now() - start
    else {
      ms = Number.NaN
      child.kill("SIGKILL")
      await waitExit(child, 5000)
    }
  }
  liveChildren.delete(child)
  return ms
}

export const stopAllChildren = () => Promise.all([...liveChildren].map((child) => stopChild(child)))

export const tail = (file: string, lines = 30): string => {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-lines).join("\n")
  } catch {
    return "(no log)"
  }
}

/**
 * Spawns the server with `env` (the stack's configuration plus the run's), its output appended
 * to `logFile`, and waits (at most `timeoutMs`) until /healthz answers. Where setpriv exists the
 * child also gets SIGTERM if this process dies without cleaning up.
 */
export const startServer = async (options: {
  readonly projectRoot: string
  /** node's arguments (serverArgs), or a whole command line (e.g. `npm start`). */
  readonly args: ReadonlyArray<string>
  readonly command?: string
  readonly env: Readonly<Record<string, string>>
  readonly port: number
  readonly mode: "lua" | "coalesce" | "each"
  readonly logFile: string
  readonly timeoutMs?: number
}): Promise<Server> => {
  const node = [options.command ?? process.execPath, ...options.args]
  const argv = existsSync(SETPRIV) ? [SETPRIV, "--pdeathsig", "SIGTERM", "--", ...node] : node
  const fd = openSync(options.logFile, "a")
  const start = now()
  let child: ChildProcess
  try {
    child = spawn(argv[0]!, argv.slice(1), {
      cwd: options.projectRoot,
      env: { ...process.env, ...options.env },
      stdio: ["ignore", fd, fd]
    })
  } finally {
    closeSync(fd)
  }
  liveChildren.add(child)
  const spawnError = new Promise<Error>((resolve) => child.once("error", resolve))
  const baseUrl = `http://127.0.0.1:${options.port}`
  const deadline = start + (options.timeoutMs ?? 90_000)
  try {
    while (true) {
      if (exited(child)) throw new Error(`the server exited (${child.exitCode ?? child.signalCode}) before answering`)
      const failure = await Promise.race([spawnError, sleep(0).then(() => undefined)])
      if (failure !== undefined) throw failure
      if (now() > deadline) throw new Error(`the server did not answer /healthz within ${options.timeoutMs ?? 90_000} ms`)
      const healthy = await fetch(`${baseUrl}/healthz`, { signal: AbortSignal.timeout(1000) })
        .then(async (response) => {
          await response.arrayBuffer()
          return response.status === 200
        })
        .catch(() => false)
      if (healthy) break
      await sleep(100)
    }
  } catch (error) {
    await stopChild(child)
    throw new Error(`${(error as Error).message}; ${options.logFile}:\n${tail(options.logFile)}`)
  }
  return {
    pid: child.pid!,
    port: options.port,
    baseUrl,
    mode: options.mode,
    logFile: options.logFile,
    startupMs: now() - start,
    child
  }
}

/** VmHWM (peak resident set) and VmRSS of a process, in MiB, from /proc. */
export const memoryOf = (pid: number): { readonly hwmMiB: number; readonly rssMiB: number } | undefined => {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8")
    const field = (name: string) => {
      const match = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)
      return match === null ? Number.NaN : Number(match[1]) / 1024
    }
    return { hwmMiB: field("VmHWM"), rssMiB: field("VmRSS") }
  } catch {
    return undefined
  }
}

/** The pid and its descendants (from /proc/PID/stat), e.g. an nginx master and its workers. */
export const processTree = (root: number): Array<number> => {
  const parents = new Map<number, number>()
  try {
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue
      try {
        const stat = readFileSync(`/proc/${entry}/stat`, "utf8")
        const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
        parents.set(Number(entry), Number(fields[1]))
      } catch {
        // gone meanwhile
      }
    }
  } catch {
    return [root]
  }
  const tree = [root]
  for (let i = 0; i < tree.length && i < 10_000; i++) {
    for (const [pid, ppid] of parents) if (ppid === tree[i] && !tree.includes(pid)) tree.push(pid)
  }
  return tree
}
