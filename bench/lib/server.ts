// The service as a child process (`node --import tsx src/main.ts`), the way it runs in production.
import { type ChildProcess, spawn } from "node:child_process"
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from "node:fs"
import { now, sleep } from "./stats.ts"

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

/** SIGTERM (the service's graceful shutdown), SIGKILL after `graceMs`. */
export const stopChild = async (child: ChildProcess, graceMs = 20_000): Promise<void> => {
  if (!exited(child)) {
    child.kill("SIGTERM")
    if (!(await waitExit(child, graceMs))) {
      child.kill("SIGKILL")
      await waitExit(child, 5000)
    }
  }
  liveChildren.delete(child)
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
  readonly env: Readonly<Record<string, string>>
  readonly port: number
  readonly mode: "lua" | "coalesce" | "each"
  readonly logFile: string
  readonly timeoutMs?: number
}): Promise<Server> => {
  const node = [process.execPath, "--import", "tsx", "src/main.ts"]
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
