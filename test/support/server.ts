// The service as a child process (`node --import tsx src/main.ts`, or `npm start`), the way it runs in
// production, over a local stack: what crash tests need (kill -9, SIGSTOP, restart) and what the
// in-process layers cannot give. Several servers may share one stack (same Postgres, same
// NGINX_CONF_DIR, same PowerDNS): they are replicas.
import { Data, Duration, Effect, Schedule, type Scope } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync } from "node:fs"
import path from "node:path"
import { fileURLToPath } from "node:url"
import { freePort } from "../../src/lib/ports.ts"
import type { LocalStack } from "../../src/dev/stack.ts"

export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")

const SETPRIV = "/usr/bin/setpriv"

export class ServerError extends Data.TaggedError("ServerError")<{ readonly message: string; readonly cause?: unknown }> {}

/** What the harness sets on top of the stack's env unless the caller overrides it. */
export const defaultServerEnv: Readonly<Record<string, string>> = {
  // One gateway per start and no quarantine, unless a suite is about them (test/crash/gateways.test.ts):
  // the other suites fail gateways on purpose and count on every gateway staying in the pool.
  START_ATTEMPTS: "1",
  GATEWAY_QUARANTINE_MS: "1",
  RECONCILE_INTERVAL_MS: "1000",
  STEP_TIMEOUT_MS: "10000",
  UNDO_TIMEOUT_MS: "5000",
  SHUTDOWN_GRACE_MS: "3000",
  LOG_FORMAT: "json",
  LOG_LEVEL: "Info"
}

export interface ServerOptions {
  /** Used in the log file's name and in messages. */
  readonly name?: string
  /** Added to (and winning over) the stack's env and `defaultServerEnv`. */
  readonly env?: Readonly<Record<string, string>>
  /** How long to wait for `GET /healthz` to answer 200 (default 60 s). */
  readonly startTimeoutMs?: number
  /** The command line (default `node --import tsx src/main.ts`, the sources as they are), e.g. `npm start`. */
  readonly command?: readonly [string, ...Array<string>]
}

export interface ServiceProcess {
  readonly name: string
  /** `http://127.0.0.1:PORT` (the port stays the same across restarts). */
  readonly url: string
  readonly port: number
  /** The API token (bearer). */
  readonly token: string
  /** stdout and stderr of every run, appended. */
  readonly logFile: string
  /** The env the child runs with (stack env + defaults + overrides). */
  readonly env: Readonly<Record<string, string>>
  /** The current run's pid (changes with each restart). */
  readonly pid: number
  /** Whether the current run has not exited. */
  readonly running: () => boolean
  /** How many times the process was (re)spawned. */
  readonly runs: () => number
  /** Sends `signal` to the current run. SIGKILL and SIGTERM wait for the exit (SIGTERM: SIGKILL after the grace). */
  readonly kill: (signal?: NodeJS.Signals) => Effect.Effect<void>
  /** Sends a signal and returns at once (SIGSTOP, SIGCONT...). */
  readonly signal: (signal: NodeJS.Signals) => Effect.Effect<void>
  /** Kills the current run if it is still alive (SIGKILL), spawns a new one, waits for /healthz. */
  readonly restart: Effect.Effect<void, ServerError>
  /** Graceful stop: SIGTERM, SIGKILL after `graceMs`. No-op when not running. */
  readonly stop: (graceMs?: number) => Effect.Effect<void>
  /** The last lines of the log file. */
  readonly tail: (lines?: number) => string
}

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

export const tailOf = (file: string, lines = 40): string => {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n")
  } catch {
    return "(no log)"
  }
}

const healthy = (url: string) =>
  Effect.tryPromise(async () => {
    const response = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1000) })
    await response.arrayBuffer()
    return response.status === 200
  }).pipe(Effect.orElseSucceed(() => false))

/**
 * Spawns the service over `stack` on a free port and waits until `GET /healthz` answers; stops it
 * (SIGTERM, then SIGKILL) when the Scope closes. The child gets SIGKILL if this process dies
 * without closing the Scope (setpriv --pdeathsig), so no orphan keeps the runner lock.
 */
export const startServer = (
  stack: LocalStack,
  options: ServerOptions = {}
): Effect.Effect<ServiceProcess, ServerError, Scope.Scope> =>
  Effect.gen(function*() {
    const port = yield* freePort
    const name = options.name ?? `server-${port}`
    const logDir = path.join(stack.env["DATA_DIR"] ?? PROJECT_ROOT, "servers")
    mkdirSync(logDir, { recursive: true })
    const logFile = path.join(logDir, `${name}.log`)
    const env: Record<string, string> = {
      ...stack.env,
      ...defaultServerEnv,
      ...options.env,
      PORT: String(port),
      HOST: "127.0.0.1"
    }
    const url = `http://127.0.0.1:${port}`
    const startTimeoutMs = options.startTimeoutMs ?? 60_000
    let child: ChildProcess | undefined
    let runs = 0

    const spawnOnce = Effect.gen(function*() {
      const [command, ...args] = options.command ?? [process.execPath, "--import", "tsx", "src/main.ts"]
      const argv = existsSync(SETPRIV) ? [SETPRIV, "--pdeathsig", "SIGKILL", "--", command, ...args] : [command, ...args]
      const fd = openSync(logFile, "a")
      const spawned = yield* Effect.try({
        try: () =>
          spawn(argv[0] ?? command, argv.slice(1), {
            cwd: PROJECT_ROOT,
            // Only what the service needs: no NODE_OPTIONS or VITEST_* leaking from the runner.
            env: { PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin", HOME: process.env["HOME"] ?? "/root", ...env },
            stdio: ["ignore", fd, fd]
          }),
        catch: (cause) => new ServerError({ message: `cannot spawn ${name}`, cause })
      }).pipe(Effect.ensuring(Effect.sync(() => closeSync(fd))))
      let spawnError: Error | undefined
      spawned.once("error", (error) => {
        spawnError = error
      })
      child = spawned
      runs += 1
      const startedAt = Date.now()
      yield* Effect.gen(function*() {
        if (spawnError !== undefined) return yield* new ServerError({ message: spawnError.message })
        if (exited(spawned)) {
          return yield* new ServerError({
            message: `${name} exited (${spawned.exitCode ?? spawned.signalCode}) before answering /healthz`
          })
        }
        if (Date.now() - startedAt > startTimeoutMs) {
          return yield* new ServerError({ message: `${name} did not answer /healthz within ${startTimeoutMs} ms` })
        }
        return yield* healthy(url)
      }).pipe(
        Effect.repeat({ schedule: Schedule.spaced(Duration.millis(100)), until: (ok) => ok }),
        Effect.tapError(() => Effect.promise(() => hardKill(spawned))),
        Effect.mapError((error) => new ServerError({ message: `${error.message}; ${logFile}:\n${tailOf(logFile)}` }))
      )
    })

    const hardKill = async (target: ChildProcess) => {
      if (exited(target)) return
      target.kill("SIGKILL")
      await waitExit(target, 10_000)
    }

    const stop = (graceMs = 15_000) =>
      Effect.promise(async () => {
        const target = child
        if (target === undefined || exited(target)) return
        // A stopped process would not act on SIGTERM.
        target.kill("SIGCONT")
        target.kill("SIGTERM")
        if (!(await waitExit(target, graceMs))) await hardKill(target)
      })

    const handle: ServiceProcess = {
      name,
      url,
      port,
      token: stack.apiToken,
      logFile,
      env,
      get pid() {
        return child?.pid ?? -1
      },
      running: () => child !== undefined && !exited(child),
      runs: () => runs,
      kill: (signal = "SIGKILL") =>
        Effect.promise(async () => {
          const target = child
          if (target === undefined || exited(target)) return
          if (signal === "SIGKILL") return hardKill(target)
          if (signal === "SIGTERM") {
            target.kill("SIGCONT")
            target.kill("SIGTERM")
            if (!(await waitExit(target, 15_000))) await hardKill(target)
            return
          }
          target.kill(signal)
        }),
      signal: (signal) =>
        Effect.sync(() => {
          if (child !== undefined && !exited(child)) child.kill(signal)
        }),
      restart: Effect.suspend(() => {
        const previous = child
        return (previous === undefined ? Effect.void : Effect.promise(() => hardKill(previous))).pipe(
          Effect.zipRight(spawnOnce)
        )
      }),
      stop,
      tail: (lines) => tailOf(logFile, lines)
    }

    yield* Effect.acquireRelease(spawnOnce, () => stop())
    return handle
  })

// ---------------------------------------------------------------------------------------------
// A small client for the service's API (the README's API table).

export interface ApiAnswer {
  readonly status: number
  /** The parsed JSON body, or undefined. */
  readonly json: any
  readonly text: string
}

export interface Endpoint {
  readonly url: string
  readonly token: string
}

export class RequestError extends Data.TaggedError("RequestError")<{ readonly message: string; readonly cause?: unknown }> {}

/**
 * One request with fetch on a fresh connection (a killed server must not poison a pooled one).
 * Any HTTP status is a success; no answer (connection refused or reset, timeout, abort) is a
 * RequestError.
 */
export const request = (
  endpoint: Endpoint,
  method: string,
  pathname: string,
  options: { readonly body?: unknown; readonly timeoutMs?: number; readonly signal?: AbortSignal } = {}
): Effect.Effect<ApiAnswer, RequestError> =>
  Effect.tryPromise({
    try: async (interrupt) => {
      const signals = [interrupt, AbortSignal.timeout(options.timeoutMs ?? 60_000)]
      if (options.signal !== undefined) signals.push(options.signal)
      const headers: Record<string, string> = { authorization: `Bearer ${endpoint.token}`, connection: "close" }
      if (options.body !== undefined) headers["content-type"] = "application/json"
      const response = await fetch(`${endpoint.url}${pathname}`, {
        method,
        headers,
        signal: AbortSignal.any(signals),
        ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) })
      })
      const text = await response.text()
      let json: unknown
      try {
        json = JSON.parse(text)
      } catch {
        json = undefined
      }
      return { status: response.status, json, text }
    },
    catch: (cause) =>
      new RequestError({
        message: `${method} ${endpoint.url}${pathname}: ${
          cause instanceof Error ? `${cause.name}: ${cause.message}${causeOf(cause)}` : String(cause)
        }`,
        cause
      })
  })

const causeOf = (error: Error) =>
  error.cause instanceof Error ? ` (${error.cause.message})` : ""

export const startGateway = (endpoint: Endpoint, org: string, options: { readonly timeoutMs?: number; readonly signal?: AbortSignal } = {}) =>
  request(endpoint, "POST", "/gateway/start", { ...options, body: { organization_id: org } })

export const stopGateway = (endpoint: Endpoint, org: string, options: { readonly timeoutMs?: number } = {}) =>
  request(endpoint, "POST", "/gateway/stop", { ...options, body: { organization_id: org } })

export const gatewayStatus = (endpoint: Endpoint, org: string) => request(endpoint, "GET", `/gateway/${org}`, { timeoutMs: 10_000 })

/**
 * Puts the stack's sample gateways in the pool (POST /pool/gateways); a name already there (409)
 * is fine. Returns the pool's gateway ids by name.
 */
export const registerGateways = (endpoint: Endpoint, stack: LocalStack) =>
  Effect.gen(function*() {
    for (const gateway of stack.gateways) {
      const answer = yield* request(endpoint, "POST", "/pool/gateways", {
        body: { name: gateway.name, upstream: gateway.upstream }
      })
      if (answer.status !== 201 && answer.status !== 409) {
        return yield* new RequestError({ message: `POST /pool/gateways ${gateway.name}: ${answer.status} ${answer.text}` })
      }
    }
    const pool = yield* request(endpoint, "GET", "/pool")
    const ids = new Map<string, string>()
    for (const gateway of pool.json.gateways as Array<{ gateway_id: string; name: string }>) ids.set(gateway.name, gateway.gateway_id)
    return ids
  })

// ---------------------------------------------------------------------------------------------
// The stack's daemons, for SIGSTOP / SIGCONT faults (a stopped nginx master takes `nginx -s
// reload`'s signal but never acts on it; a stopped pdns_server accepts connections, never answers).

const pidFromFile = (file: string, command: string): number => {
  const pid = Number.parseInt(readFileSync(file, "utf8").trim(), 10)
  const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ")
  if (!cmdline.includes(command)) throw new Error(`${file} names pid ${pid} (${cmdline}), not ${command}`)
  return pid
}

/** The stack's nginx master (from its pid file), checked to be an nginx process. */
export const nginxMasterPid = (stack: LocalStack) => pidFromFile(path.join(path.dirname(stack.nginx.confDir), "nginx.pid"), "nginx")

/** The stack's nginx master and its workers (every process whose parent is the master); none while it is stopped. */
export const nginxPids = (stack: LocalStack): ReadonlyArray<number> => nginxPidsOf(stack.nginx.confDir)

/** The master and workers of the nginx (src/dev/NginxProcess.ts) whose conf.d is `confDir`; none while it is stopped. */
export const nginxPidsOf = (confDir: string): ReadonlyArray<number> => {
  const pidFile = path.join(path.dirname(confDir), "nginx.pid")
  if (!existsSync(pidFile)) return []
  const master = pidFromFile(pidFile, "nginx")
  const children = readdirSync("/proc").filter((name) => /^\d+$/.test(name)).filter((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
      return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === master
    } catch {
      return false // gone meanwhile
    }
  })
  return [master, ...children.map(Number)]
}

/** The stack's pdns_server (from its pid file in its socket-dir), checked to be pdns_server. */
export const powerDnsPid = (stack: LocalStack) => pidFromFile(path.join(path.dirname(stack.powerDns.logFile), "pdns.pid"), "pdns_server")

/** Sends a signal to a pid; a process that is gone is not an error. */
export const signalPid = (pid: number, signal: NodeJS.Signals) =>
  Effect.sync(() => {
    try {
      process.kill(pid, signal)
    } catch {
      // gone
    }
  })

/** The local TCP ports of a process's sockets (its fds' socket inodes, looked up in /proc/net/tcp*). */
export const localPortsOf = (pid: number): Set<number> => {
  const inodes = new Set<string>()
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))
        if (match !== null) inodes.add(match[1]!)
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    return new Set()
  }
  const ports = new Set<number>()
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = ""
    try {
      text = readFileSync(table, "utf8")
    } catch {
      continue
    }
    for (const line of text.split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/)
      if (fields.length > 9 && inodes.has(fields[9]!)) ports.add(Number.parseInt(fields[1]!.split(":")[1]!, 16))
    }
  }
  return ports
}
