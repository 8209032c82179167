// The servers of a run, one at a time: each launch is recorded (start-up time, idle RSS) and
// its shutdown timed, so the start-up measure reads them all at the end.
import { Effect } from "effect"
import { copyFileSync, existsSync, readFileSync } from "node:fs"
import path from "node:path"
import type { LocalStack } from "../../src/dev/stack.ts"
import { freePort } from "../../src/lib/ports.ts"
import { ApiClient } from "./api.ts"
import type { ServerMode, StartupFigures } from "./results.ts"
import { memoryOf, processTree, type Server, serverArgs, type ServerRuntime, startServer, stopChild } from "./server.ts"
import { round } from "./stats.ts"

export interface RunningServer {
  readonly server: Server
  /** The API client of this server (the benchmark's only client of the service). */
  readonly api: ApiClient
  /** 1 for the run's first server: the number in its log file's name. */
  readonly number: number
}

export interface FleetSettings {
  readonly stack: LocalStack
  /** Where the server runs from: the working tree, or a `git archive` of BENCH_REF. */
  readonly serverRoot: string
  readonly runtime: ServerRuntime
  readonly workDir: string
  /** NODE_OPTIONS for the server only (BENCH_SERVER_NODE_OPTIONS). */
  readonly serverNodeOptions: string | undefined
  /** The benchmark's PowerDNS proxy, when there is one: the service calls PowerDNS through it. */
  readonly pdnsUrl: string | undefined
  readonly log: (line: string) => void
}

export class ServerFleet {
  readonly startups: Array<StartupFigures> = []
  private running: RunningServer | undefined
  private launched = 0
  private readonly logFiles: Array<string> = []

  private constructor(
    private readonly settings: FleetSettings,
    /** `node`'s arguments for the server: package.json's start script (dist/ built first), or tsx. */
    readonly command: { readonly runtime: ServerRuntime; readonly args: ReadonlyArray<string> }
  ) {}

  /** Builds dist/ when missing or stale (as `npm start` would), then is ready to launch servers. */
  static open(settings: FleetSettings): ServerFleet {
    const command = serverArgs(settings.serverRoot, settings.runtime)
    settings.log(`server command: node ${command.args.join(" ")}`)
    return new ServerFleet(settings, command)
  }

  /** Where the server runs from (the working tree, or a `git archive` of BENCH_REF). */
  get serverRoot(): string {
    return this.settings.serverRoot
  }

  /** The run's temp directory (server logs; the profile's .cpuprofile files). */
  get workDir(): string {
    return this.settings.workDir
  }

  get current(): RunningServer | undefined {
    return this.running
  }

  /** The running server; a measure that needs one and finds none is a bug of the orchestration. */
  require(what: string): RunningServer {
    if (this.running === undefined) throw new Error(`${what} needs a running server`)
    return this.running
  }

  /** A server: `node` with the start script's arguments, or `npm start` itself (its start-up as an operator sees it). */
  async launch(
    mode: ServerMode,
    via: "node" | "npm start" = "node",
    /** On top of the run's settings (the TLS measure's certificate, say). */
    extraEnv: Readonly<Record<string, string>> = {},
    /**
     * node's own options, put before the start script's (the profile's `--cpu-prof...`: Node 20
     * refuses those in NODE_OPTIONS). With `node` only: `npm start` runs the script as it is.
     */
    nodeArgs: ReadonlyArray<string> = []
  ): Promise<RunningServer> {
    if (this.running !== undefined) throw new Error(`server #${this.running.number} is still running`)
    if (via !== "node" && nodeArgs.length > 0) throw new Error("node arguments need a server launched with node, not npm start")
    const { stack, log } = this.settings
    const number = ++this.launched
    const port = await Effect.runPromise(freePort)
    const logFile = path.join(this.settings.workDir, `server-${number}-${mode}.log`)
    this.logFiles.push(logFile)
    const routing = mode === "lua" ? "NGINX_ROUTING=lua" : `NGINX_ROUTING=reload, NGINX_RELOAD_MODE=${mode}`
    log(`server #${number} (${routing}, ${via}${nodeArgs.length === 0 ? "" : ` ${nodeArgs.join(" ")}`}) starting on port ${port}`)
    const server = await startServer({
      projectRoot: this.settings.serverRoot,
      ...(via === "node" ? { args: [...nodeArgs, ...this.command.args] } : { command: "npm", args: ["start", "--silent"] }),
      port,
      mode,
      logFile,
      env: {
        ...stack.env,
        ...(this.settings.pdnsUrl === undefined ? {} : { PDNS_API_URL: this.settings.pdnsUrl }),
        PORT: String(port),
        HOST: "127.0.0.1",
        // Effect's Config.logLevel matches labels (WARN), so "Warning" would be refused at start-up.
        LOG_LEVEL: "Warn",
        STEP_TIMEOUT_MS: "30000",
        UNDO_TIMEOUT_MS: "30000",
        // The rollback figure fails every gateway's handshake on purpose: one attempt per start and
        // no quarantine, so each start measures one rollback and the pool stays whole.
        START_ATTEMPTS: "1",
        GATEWAY_QUARANTINE_MS: "1",
        NGINX_ROUTING: mode === "lua" ? "lua" : "reload",
        NGINX_RELOAD_MODE: mode === "lua" ? "coalesce" : mode,
        ...(this.settings.serverNodeOptions === undefined ? {} : { NODE_OPTIONS: this.settings.serverNodeOptions }),
        ...extraEnv
      }
    })
    // Idle RSS right after start-up: the baseline the per-allocation cost adds to (npm start: its node process).
    const nodePid = via === "node" ? server.pid : processTree(server.pid).find(isServerNode)
    this.startups.push({ mode, via, ms: round(server.startupMs), idleRssMiB: round(memoryOf(nodePid ?? server.pid)?.rssMiB ?? Number.NaN) })
    log(`server #${number} up in ${Math.round(server.startupMs)} ms (pid ${server.pid})`)
    this.running = { server, api: new ApiClient(server.baseUrl, stack.apiToken), number }
    return this.running
  }

  /** SIGTERM, timed to exit; returns the server's memory just before (its peak RSS is gone after). */
  async shutdown(): Promise<{ readonly hwmMiB: number; readonly rssMiB: number } | undefined> {
    const stopping = this.running
    if (stopping === undefined) return undefined
    this.running = undefined
    const memory = memoryOf(stopping.server.pid)
    const shutdownMs = await stopChild(stopping.server.child)
    const startup = this.startups.at(-1)
    if (startup !== undefined) startup.shutdownMs = round(shutdownMs)
    this.settings.log(`server #${stopping.number} stopped in ${Math.round(shutdownMs)} ms (SIGTERM to exit)`)
    return memory
  }

  /** The servers' logs next to the results (`*.log`, ignored by git). */
  copyLogs(prefix: string): void {
    for (const file of this.logFiles) {
      if (existsSync(file)) copyFileSync(file, `${prefix}.${path.basename(file)}`)
    }
  }
}

const isServerNode = (pid: number): boolean => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("dist/main.js")
  } catch {
    return false
  }
}
