// The benchmark of issue 4: raw outside calls, the service's start latency, throughput in both
// reload modes, latency against the number of active routes, rollback latency and memory.
// Plain async code; run.ts owns the stack (Effect scope) and calls `runBench`.
import * as Reactivity from "@effect/experimental/Reactivity"
import { PgClient } from "@effect/sql-pg"
import { Effect, Redacted } from "effect"
import { randomUUID } from "node:crypto"
import { copyFileSync, existsSync, readFileSync } from "node:fs"
import { rename, writeFile } from "node:fs/promises"
import os from "node:os"
import path from "node:path"
import { freePort } from "../../src/lib/ports.ts"
import type { LocalStack } from "../../src/dev/stack.ts"
import { type AllocationId, Generation, type OrganizationId, type Upstream } from "../../src/domain/ids.ts"
import { renderRoute, routeFileName } from "../../src/nginx/config.ts"
import { ApiClient, type AllocationView, expectStatus } from "./api.ts"
import {
  controlGateway,
  gatewayHandshake,
  gatewayHealth,
  type NginxTarget,
  nginxReload,
  nginxTest,
  pdnsDelete,
  pdnsReplace,
  type PowerDnsTarget,
  ProbeRoute,
  probeSecretOf,
  timedProbe
} from "./outside.ts"
import { cpuDelta, cpuSnapshot } from "./cpu.ts"
import { startPdnsProxy } from "./pdnsProxy.ts"
import { memoryOf, processTree, type Server, serverArgs, type ServerRuntime, startServer, stopChild } from "./server.ts"
import { type BystanderTally, startBystander } from "./bystander.ts"
import { measurePropagation, type PropagationFigures, routeApi, type RouteTableTarget } from "./routeTable.ts"
import { forEachConcurrent, median, now, round, runWorkers, sleep, type Summary, summarize } from "./stats.ts"

export interface BenchOptions {
  readonly projectRoot: string
  /** Where the server runs from: the working tree, or a `git archive` of BENCH_REF. */
  readonly serverRoot: string
  readonly workDir: string
  /** Active routes of the largest latency level (10,000 by default). */
  readonly maxRoutes: number
  /** Scales the repetition counts (1 = the full run; BENCH_QUICK uses less). */
  readonly scale: number
  /** Wall-clock budget of the whole run; the 10,000-route fill gives up when it runs out. */
  readonly budgetMs: number
  /** NODE_OPTIONS for the server only (BENCH_SERVER_NODE_OPTIONS), e.g. heap limits. */
  readonly serverNodeOptions?: string | undefined
  /** How the server runs: compiled (`npm start`'s command over dist/) or through tsx. */
  readonly runtime: ServerRuntime
  /** The proxy in front of PowerDNS (see pdnsProxy.ts): "pass" by default. */
  readonly pdnsProxy: "pass" | "serialize" | "off"
  /** Where the server logs are copied at the end (they are *.log, ignored by git). */
  readonly logsPrefix: string
  readonly signal: AbortSignal
  readonly log: (line: string) => void
}

export interface RawFigures {
  readonly routes: number
  readonly reload: Summary
  readonly nginxTest: Summary
  readonly pdnsPatch: Summary
  readonly probe: Summary
  readonly health?: Summary
  readonly handshake?: Summary
  readonly pdnsPatchBurst?: { requests: number; concurrency: number; failed: number; ms: number }
  /** nginx -s reload, then the probe until nginx answers the new entry and no older worker still accepts. */
  readonly reloadToFirstAnswer: Summary
  readonly reloadToLive: Summary
  readonly cpuSecondsDuring: Record<string, number>
}

export interface Breakdown {
  /** Medians of the journal's duration_ms per forward step, and the rest of the client-seen time. */
  readonly dns: number
  readonly nginxConfig: number
  readonly nginxReload: number
  readonly handshake: number
  readonly rest: number
}

/** How the server under measurement routes: NGINX_ROUTING=lua, or reload with NGINX_RELOAD_MODE. */
export type ServerMode = "lua" | "coalesce" | "each"

export interface LatencyFigures {
  readonly routes: number
  readonly concurrency: 1
  readonly mode: ServerMode
  readonly latency: Summary
  readonly stop: Summary
  readonly breakdown: Breakdown
  readonly errors: number
  /** CPU milliseconds per start-and-stop pair, by component. */
  readonly cpuPerStartAndStopMs: Record<string, number>
}

export interface ThroughputFigures {
  readonly mode: ServerMode
  readonly concurrency: number
  /** "stubbed": the benchmark's proxy answered the PowerDNS writes itself (nginx-only figure). */
  readonly dns: "powerdns" | "stubbed"
  readonly routes: number
  readonly starts: number
  readonly errors: number
  readonly elapsedMs: number
  readonly startsPerSecond: number
  readonly latency: Summary
  /** nginx reconfigurations during the case (the master's ": reconfiguring" log lines), and starts per one. */
  readonly reloads: number
  /** SIGHUPs nginx received during the case: `nginx -s reload` runs. */
  readonly reloadSignals: number
  readonly startsPerReload: number
  /** CPU seconds per component during the case, and the share of all cores it kept busy. */
  readonly cpuSeconds: Record<string, number>
  readonly cpuBusy: number
  /** Journal step medians over every 8th start of the case. */
  readonly breakdown: Breakdown
}

export interface FillFigures {
  readonly from: number
  readonly target: number
  readonly reached: number
  readonly concurrency: number
  readonly ms: number
  readonly startsPerSecond: number
  readonly errors: number
  readonly gaveUp: boolean
  readonly cpuSeconds: Record<string, number>
  /** Set when the rest was created directly (SQL, route files, one PowerDNS PATCH) to stay in the time budget. */
  readonly synthetic?: { readonly count: number; readonly ms: number }
}

export interface RollbackFigures {
  readonly routes: number
  readonly n: number
  /** Journal: last undo event `at` minus the handshake `failed` event `at`. */
  readonly journal: Summary
  /** Sum of the undos' own duration_ms (rollback report). */
  readonly undoSum: Summary
  /** The failing start's 502 answer, seen by the client. */
  readonly response: Summary
  /** Median duration_ms of the nginx-reload undo (remove + reload + probe until gone). */
  readonly unrouteUndo: number
  readonly reloadP50: number
  readonly ratioToReload: number
}

export interface LuaFigures {
  readonly raw: {
    readonly pdnsPatch: Summary
    readonly routePut: Summary
    readonly routeDelete: Summary
    readonly probe: Summary
    readonly health: Summary
    readonly handshake: Summary
  }
  readonly startC1?: LatencyFigures & { readonly rawSumMs: number; readonly rawComponents: Record<string, number>; readonly ratio: number }
  /** The failing start's 502 against a successful start, both p50 at c=1. */
  readonly rollback?: RollbackFigures & { readonly startP50: number; readonly ratioToStart: number }
  readonly propagation?: PropagationFigures
  /** nginx restarted with this many active allocations: the next server's start-up, which pushes them all. */
  readonly restore?: { readonly routes: number; readonly startupMs: number }
}

export interface Results {
  complete: boolean
  error?: string
  startedAt: string
  finishedAt?: string
  durationSeconds?: number
  machine: Record<string, unknown>
  project: Record<string, unknown>
  settings: Record<string, unknown>
  setup: Record<string, unknown>
  raw?: RawFigures
  rawByRoutes: Array<RawFigures>
  startC1?: LatencyFigures & {
    readonly rawSumMs: number
    readonly rawComponents: Record<string, number>
    readonly ratio: number
    readonly ratioP99: number
    readonly rawSumServedMs: number
    readonly ratioToServed: number
  }
  throughput: Array<ThroughputFigures>
  throughputRatio: Record<string, number>
  latencyByRoutes: Array<LatencyFigures>
  fills: Array<FillFigures>
  rollback: Array<RollbackFigures>
  memory?: Record<string, unknown>
  /** NGINX_ROUTING=lua: raw calls, c=1 start, rollback, propagation to every worker, restore after a restart. */
  lua?: LuaFigures
  /** A bystander org's kept-alive connections while other orgs start and stop, per mode. */
  keptAlive: Array<{ readonly mode: ServerMode; readonly operations: number } & BystanderTally>
  /** The server's RSS after each phase. */
  memoryTimeline?: Array<{ phase: string; server: number; routes: number; rssMiB: number; hwmMiB: number }>
  /** Failed calls by phase, status and message, with counts. */
  errors?: Record<string, number>
  consistency?: Record<string, unknown>
  targets: Array<{ id: string; description: string; value: number; limit: number; unit: string; pass: boolean; note?: string }>
}

const WARMUP = 3
/** worker_processes of the stack's nginx in lua mode (src/dev/stack.ts). */
const LUA_WORKERS = 4
const POOL_HEADROOM = 300

/**
 * The pool's `i`-th upstream: one gateway process is in the pool once (upstreams are unique), so
 * each entry gets its own loopback address, `127.{a}.{b}.{c}` (all of 127/8 is loopback on Linux),
 * at the port of sample gateway `i % ports.length` (they listen on 0.0.0.0).
 */
export const poolUpstream = (i: number, ports: ReadonlyArray<number>): string => {
  const host = Math.floor(i / ports.length)
  return `127.${1 + Math.floor(host / 62_500)}.${Math.floor(host / 250) % 250}.${1 + (host % 250)}:${ports[i % ports.length]}`
}
const THROUGHPUT_MAX_STARTS = 256
const THROUGHPUT_MAX_MS = 20_000
const FILL_CONCURRENCY = 64

export const runBench = async (stack: LocalStack, results: Results, options: BenchOptions): Promise<void> => {
  const { log, signal } = options
  const runStart = now()
  const reps = (n: number) => Math.max(5, Math.round(n * options.scale))
  const checkAbort = () => {
    if (signal.aborted) throw new Error("interrupted")
  }
  const nginx: NginxTarget = {
    bin: stack.nginx.bin,
    mainConf: stack.nginx.mainConf,
    confDir: stack.nginx.confDir,
    port: stack.nginx.listenPort
  }
  const pdns: PowerDnsTarget = {
    apiUrl: stack.powerDns.apiUrl,
    apiKey: Redacted.value(stack.powerDns.apiKey),
    serverId: stack.powerDns.serverId,
    zone: stack.powerDns.zone
  }
  const domain = stack.env.DOMAIN ?? "domain.local"
  const cores = os.cpus().length
  const upstreams = stack.gateways.map((gateway) => gateway.upstream)
  const ports = stack.gateways.map((gateway) => gateway.port)
  const probeRoute = new ProbeRoute(nginx, domain)
  const benchRecord = `bench-raw.${domain}.`
  const poolSize = options.maxRoutes + POOL_HEADROOM
  const proxy = options.pdnsProxy === "off" ? undefined : await startPdnsProxy(pdns.apiUrl, options.pdnsProxy)
  results.settings = {
    sampleGateways: upstreams.length,
    poolSize,
    maxRoutes: options.maxRoutes,
    scale: options.scale,
    stepTimeoutMs: 30_000,
    undoTimeoutMs: 30_000,
    throughputBound: { starts: THROUGHPUT_MAX_STARTS, ms: THROUGHPUT_MAX_MS },
    fillConcurrency: FILL_CONCURRENCY,
    serverNodeOptions: options.serverNodeOptions ?? null,
    pdnsProxy: options.pdnsProxy === "off"
      ? "off: the service calls PowerDNS directly"
      : options.pdnsProxy === "serialize"
      ? "serialize: one PowerDNS API call at a time"
      : "pass: forwards as it comes (stubs writes in the stubbed cases only)"
  }

  const pidFrom = (file: string): number | undefined => {
    try {
      const pid = Number(readFileSync(file, "utf8").split("\n")[0]?.trim())
      return Number.isInteger(pid) && pid > 0 ? pid : undefined
    } catch {
      return undefined
    }
  }
  const dataDir = stack.env.DATA_DIR!
  const nginxPid = () => pidFrom(path.join(path.dirname(nginx.mainConf), "nginx.pid"))
  /** CPU seconds so far of the server (with the `nginx -s reload` processes it ran), nginx, PowerDNS, Postgres, this process. */
  const cpuNow = () =>
    cpuSnapshot({
      server: server?.pid,
      nginx: nginxPid(),
      powerdns: pidFrom(path.join(dataDir, "powerdns", "pdns.pid")),
      postgres: pidFrom(path.join(dataDir, "postgres", "postmaster.pid"))
    })

  // ---- the server ------------------------------------------------------------------------------
  let server: Server | undefined
  let serverCount = 0
  const startups: Array<{ mode: string; via: string; ms: number; idleRssMiB: number; shutdownMs?: number }> = []
  const command = serverArgs(options.serverRoot, options.runtime)
  results.settings.serverRuntime = command.runtime
  results.settings.serverCommand = `node ${command.args.join(" ")}`
  log(`server command: node ${command.args.join(" ")}`)
  /** A server: `node` with the start script's arguments, or `npm start` itself (its start-up as an operator sees it). */
  const launch = async (mode: ServerMode, via: "node" | "npm start" = "node") => {
    serverCount += 1
    const port = await Effect.runPromise(freePort)
    const logFile = path.join(options.workDir, `server-${serverCount}-${mode}.log`)
    log(`server #${serverCount} (${mode === "lua" ? "NGINX_ROUTING=lua" : `NGINX_ROUTING=reload, NGINX_RELOAD_MODE=${mode}`}, ${via}) starting on port ${port}`)
    server = await startServer({
      projectRoot: options.serverRoot,
      ...(via === "node" ? { args: command.args } : { command: "npm", args: ["start", "--silent"] }),
      port,
      mode,
      logFile,
      env: {
        ...stack.env,
        ...(proxy === undefined ? {} : { PDNS_API_URL: proxy.url }),
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
        ...(options.serverNodeOptions === undefined ? {} : { NODE_OPTIONS: options.serverNodeOptions })
      }
    })
    // Idle RSS right after start-up: the baseline the per-allocation cost adds to (npm start: its node process).
    const nodePid = via === "node" ? server.pid : processTree(server.pid).find((pid) => isServerNode(pid))
    startups.push({ mode, via, ms: round(server.startupMs), idleRssMiB: round(memoryOf(nodePid ?? server.pid)?.rssMiB ?? Number.NaN) })
    log(`server #${serverCount} up in ${Math.round(server.startupMs)} ms (pid ${server.pid})`)
    return { server, api: new ApiClient(server.baseUrl, stack.apiToken) }
  }
  const isServerNode = (pid: number) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("dist/main.js")
    } catch {
      return false
    }
  }
  const shutdown = async () => {
    if (server === undefined) return
    const stopping = server
    server = undefined
    const memory = memoryOf(stopping.pid)
    const shutdownMs = await stopChild(stopping.child)
    const startup = startups.at(-1)
    if (startup !== undefined) startup.shutdownMs = round(shutdownMs)
    log(`server #${serverCount} stopped in ${Math.round(shutdownMs)} ms (SIGTERM to exit)`)
    return memory
  }

  /** The route API of the stack's nginx (lua mode), with the edge secret the first server wrote. */
  const routeTarget = (): RouteTableTarget => ({
    listenPort: stack.nginx.listenPort,
    routeApiPort: stack.nginx.routeApiPort,
    secret: probeSecretOf(nginx.confDir),
    domain,
    workers: LUA_WORKERS
  })
  const routeApiText = (method: string, pathAndQuery: string, body?: string) => routeApi(routeTarget(), method, pathAndQuery, body)

  const active = new Set<string>()
  const memoryTimeline: Array<{ phase: string; server: number; routes: number; rssMiB: number; hwmMiB: number }> = []
  const noteMemory = (phase: string) => {
    const memory = server === undefined ? undefined : memoryOf(server.pid)
    if (memory !== undefined) {
      memoryTimeline.push({ phase, server: serverCount, routes: active.size, rssMiB: round(memory.rssMiB), hwmMiB: round(memory.hwmMiB) })
    }
  }

  /** Failed answers by status and error, for the report (a benchmark that hides its errors lies). */
  const errorKinds = new Map<string, number>()
  const noteError = (phase: string, answer: { status: number; body: any } | undefined, error?: unknown) => {
    // Times, pids, ids and temp paths vary per call: dropped, so that one kind of error is one line.
    const normalize = (text: string) =>
      text
        .replace(/\d{4}\/\d\d\/\d\d \d\d:\d\d:\d\d /g, "")
        .replace(/\d+#\d+: /g, "")
        .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, "{uuid}")
        .replace(/\/tmp\/ga-bench-[^/]+/g, "{tmp}")
        .slice(0, 220)
    const what = answer === undefined
      ? `exception: ${normalize(String((error as Error | undefined)?.message ?? error))}`
      : `HTTP ${answer.status} ${answer.body?._tag ?? ""} ${answer.body?.step ?? ""}: ${
        normalize(String(answer.body?.message ?? JSON.stringify(answer.body)))
      }`
    const key = `${phase}: ${what}`
    errorKinds.set(key, (errorKinds.get(key) ?? 0) + 1)
  }

  const startOk = async (api: ApiClient, org: string) => {
    const answer = await api.start(org)
    if (answer.status === 200) active.add(org)
    return answer
  }
  const stopOk = async (api: ApiClient, org: string) => {
    const answer = await api.stop(org)
    if (answer.status === 200) active.delete(org)
    return answer
  }

  // ---- measurements ----------------------------------------------------------------------------
  const sample = async (count: number, f: () => Promise<number>, pauseMs = 0): Promise<Summary> => {
    const values: Array<number> = []
    for (let i = 0; i < count + WARMUP; i++) {
      checkAbort()
      const ms = await f()
      if (i >= WARMUP) values.push(ms)
      if (pauseMs > 0) await sleep(pauseMs)
    }
    return summarize(values)
  }

  /** 64 PATCHes at c=8 straight to PowerDNS: how many its gsqlite3 backend refuses. */
  const pdnsBurst = async () => {
    let failed = 0
    const names = Array.from({ length: 64 }, (_, i) => `bench-burst-${i}.${domain}.`)
    const start = now()
    await forEachConcurrent(names, 8, async (name) => {
      await pdnsReplace(pdns, name).catch(() => {
        failed += 1
      })
    })
    const ms = now() - start
    for (const name of names) await pdnsDelete(pdns, name).catch(() => undefined)
    return { requests: names.length, concurrency: 8, failed, ms: round(ms) }
  }

  const measureRaw = async (routes: number, full: boolean): Promise<RawFigures> => {
    const n = reps(full ? 50 : 10)
    log(`raw outside calls at ${routes} active routes (${n} each)`)
    const cpuBefore = cpuNow()
    // Old workers finish their graceful exit between reloads, as they would between real starts.
    const reload = await sample(n, () => nginxReload(nginx), 50)
    const test = await sample(reps(full ? 20 : 5), () => nginxTest(nginx))
    const pdnsPatch = await sample(n, () => pdnsReplace(pdns, benchRecord))
    const probe = await sample(n, () => timedProbe(nginx, probeRoute.host))
    const burst = full ? await pdnsBurst() : undefined
    const health = full ? await sample(n, () => gatewayHealth(upstreams[0]!)) : undefined
    const handshake = full ? await sample(n, () => gatewayHandshake(upstreams[0]!)) : undefined
    const first: Array<number> = []
    const live: Array<number> = []
    for (let i = 0; i < reps(full ? 20 : 10); i++) {
      checkAbort()
      const result = await probeRoute.reloadUntilLive()
      first.push(result.firstMs)
      live.push(result.liveMs)
      await sleep(50)
    }
    return {
      routes,
      reload,
      nginxTest: test,
      pdnsPatch,
      probe,
      ...(burst === undefined ? {} : { pdnsPatchBurst: burst }),
      ...(health === undefined ? {} : { health }),
      ...(handshake === undefined ? {} : { handshake }),
      reloadToFirstAnswer: summarize(first),
      reloadToLive: summarize(live),
      // Everything that ran during the raw calls: the idle server's share shows it stayed idle.
      cpuSecondsDuring: cpuDelta(cpuBefore, cpuNow())
    }
  }

  /**
   * lua mode's raw outside calls: a PowerDNS PATCH, a route PUT and DELETE through the route API,
   * the route probe (of a route of the benchmark's own in the table), the gateway's health and
   * handshake.
   */
  const measureRawLua = async (): Promise<LuaFigures["raw"]> => {
    const n = reps(50)
    log(`raw outside calls, lua (${n} each)`)
    const org = randomUUID()
    const host = `org-${org}.${domain}`
    let generation = 9_500_000_000
    const put = async () => {
      generation += 1
      const answer = await routeApiText("PUT", `/routes/${org}?upstream=127.0.0.1:9&allocation=${randomUUID()}&generation=${generation}`)
      if (answer.status !== 200) throw new Error(`route API PUT answered ${answer.status}: ${answer.body}`)
      return answer.ms
    }
    const routePut = await sample(n, put)
    const deletes: Array<number> = []
    for (let i = 0; i < n; i++) {
      checkAbort()
      generation += 1
      const allocation = randomUUID()
      await routeApiText("PUT", `/routes/${org}?upstream=127.0.0.1:9&allocation=${allocation}&generation=${generation}`)
      deletes.push((await routeApiText("DELETE", `/routes/${org}?allocation=${allocation}&generation=${generation}`)).ms)
    }
    await put()
    const probed = await sample(n, () => timedProbe(nginx, host))
    generation += 1
    await routeApiText("DELETE", `/routes/${org}?allocation=${randomUUID()}&generation=${generation}`)
    return {
      pdnsPatch: await sample(n, () => pdnsReplace(pdns, benchRecord)),
      routePut,
      routeDelete: summarize(deletes),
      probe: probed,
      health: await sample(n, () => gatewayHealth(upstreams[0]!)),
      handshake: await sample(n, () => gatewayHandshake(upstreams[0]!))
    }
  }

  /** A bystander org's kept-alive connections while `operations` other orgs start and stop. */
  const measureKeptAlive = async (api: ApiClient, mode: ServerMode, operations: number) => {
    log(`kept-alive connections of a bystander org during ${operations} starts and stops of others (${mode})`)
    const bystander = randomUUID()
    expectStatus(await startOk(api, bystander), 200, "start (bystander)")
    const traffic = startBystander({ port: nginx.port, host: `org-${bystander}.${domain}`, connections: 8 })
    await sleep(200)
    for (let i = 0; i < operations; i++) {
      checkAbort()
      const org = randomUUID()
      expectStatus(await startOk(api, org), 200, "start (kept-alive case)")
      await stopWithRetry(api, org, "stop (kept-alive case)")
    }
    const tally = await traffic.stop()
    await stopWithRetry(api, bystander, "stop (bystander)")
    results.keptAlive.push({ mode, operations, ...tally })
    log(`  ${tally.broken} of ${tally.requests} requests broken (${tally.reused} on reused connections)`)
  }

  /** Median journal duration_ms per forward step over some allocations, and the rest of the client-seen time. */
  const journalBreakdown = async (
    api: ApiClient,
    samples: ReadonlyArray<{ allocationId: string; ms: number }>
  ): Promise<Breakdown> => {
    const steps: Record<string, Array<number>> = { dns: [], "nginx-config": [], "nginx-reload": [], handshake: [] }
    const rests: Array<number> = []
    for (const sample of samples) {
      const view = expectStatus(await api.allocation(sample.allocationId), 200, "GET /allocations").body
      let sum = 0
      for (const entry of view.steps) {
        if (entry.event === "completed" && entry.duration_ms !== null && entry.step in steps) {
          steps[entry.step]!.push(entry.duration_ms)
          sum += entry.duration_ms
        }
      }
      rests.push(sample.ms - sum)
    }
    return {
      dns: median(steps.dns!),
      nginxConfig: median(steps["nginx-config"]!),
      nginxReload: median(steps["nginx-reload"]!),
      handshake: median(steps.handshake!),
      rest: median(rests)
    }
  }

  /** Sequential starts, each followed by its stop (not timed), with the journal's step times. */
  const measureLatency = async (api: ApiClient, routes: number, count: number, mode: ServerMode = "coalesce"): Promise<LatencyFigures> => {
    log(`start latency at c=1 with ${routes} active routes (${count} starts, ${mode})`)
    const latencies: Array<number> = []
    const stops: Array<number> = []
    const steps: Record<string, Array<number>> = { dns: [], "nginx-config": [], "nginx-reload": [], handshake: [] }
    const rests: Array<number> = []
    let errors = 0
    const cpuBefore = cpuNow()
    for (let i = 0; i < count + 2; i++) {
      checkAbort()
      const org = randomUUID()
      const started = await startOk(api, org)
      if (started.status !== 200) {
        errors += 1
        noteError(`latency at ${routes}`, started)
        if (errors > 5) throw new Error(`too many failed starts: ${JSON.stringify(started.body).slice(0, 400)}`)
        continue
      }
      const journal = expectStatus(await api.allocation(started.body.allocation_id), 200, "GET /allocations").body
      const stopped = await stopWithRetry(api, org, "stop (c=1)")
      if (i < 2) continue
      latencies.push(started.ms)
      stops.push(stopped.ms)
      let sum = 0
      for (const entry of journal.steps) {
        if (entry.event === "completed" && entry.duration_ms !== null && entry.step in steps) {
          steps[entry.step]!.push(entry.duration_ms)
          sum += entry.duration_ms
        }
      }
      rests.push(started.ms - sum)
    }
    const cpu = cpuDelta(cpuBefore, cpuNow())
    // Per start *and* its stop (the stop is not timed, but its CPU is in the same window).
    const cpuPerStartAndStopMs = Object.fromEntries(
      Object.entries(cpu).map(([name, seconds]) => [name, round((seconds * 1000) / (count + 2), 1)])
    )
    return {
      routes,
      concurrency: 1,
      mode,
      cpuPerStartAndStopMs,
      latency: summarize(latencies),
      stop: summarize(stops),
      breakdown: {
        dns: median(steps.dns!),
        nginxConfig: median(steps["nginx-config"]!),
        nginxReload: median(steps["nginx-reload"]!),
        handshake: median(steps.handshake!),
        rest: median(rests)
      },
      errors
    }
  }

  const fillTo = async (api: ApiClient, target: number, deadline: number): Promise<FillFigures> => {
    const from = active.size
    log(`filling to ${target} active allocations at c=${FILL_CONCURRENCY} (from ${from})`)
    let inFlight = 0
    let errors = 0
    let lastReport = now()
    const cpuBefore = cpuNow()
    const start = now()
    await runWorkers(
      FILL_CONCURRENCY,
      () => !signal.aborted && active.size + inFlight < target && now() < deadline && errors < 200,
      async () => {
        inFlight += 1
        try {
          const answer = await startOk(api, randomUUID())
          if (answer.status !== 200) {
            errors += 1
            noteError("fill", answer)
          }
        } catch (error) {
          errors += 1
          noteError("fill", undefined, error)
        } finally {
          inFlight -= 1
        }
        if (now() - lastReport > 10_000) {
          lastReport = now()
          log(`  ... ${active.size} active, ${Math.round((active.size - from) / ((now() - start) / 1000))} starts/s`)
        }
      }
    )
    checkAbort()
    const ms = now() - start
    const figures: FillFigures = {
      from,
      target,
      reached: active.size,
      concurrency: FILL_CONCURRENCY,
      ms: round(ms),
      startsPerSecond: round((active.size - from) / (ms / 1000)),
      errors,
      gaveUp: active.size < target,
      cpuSeconds: cpuDelta(cpuBefore, cpuNow())
    }
    results.fills.push(figures)
    log(`  reached ${active.size} in ${(ms / 1000).toFixed(1)} s (${figures.startsPerSecond} starts/s, ${errors} errors)`)
    return figures
  }

  /**
   * Creates `count` active allocations directly, as the service would leave them: rows in
   * Postgres (allocation + gateway claimed), the route files, the DNS records (one PATCH per 500),
   * then one reload. Used only when the API fill runs out of the time budget, and reported.
   */
  const synthesize = async (count: number): Promise<{ count: number; ms: number }> => {
    log(`  creating the remaining ${count} active allocations directly (SQL, route files, PowerDNS)`)
    const start = now()
    const rows = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function*() {
          const sql = yield* PgClient.make({ url: stack.databaseUrl, maxConnections: 1 })
          return yield* sql<{ allocation_id: string; organization_id: string; upstream: string; generation: string }>`
            with picked as (
              select id, upstream, gen_random_uuid() as allocation_id, gen_random_uuid() as organization_id
                from gateways where allocation_id is null
               order by created_at, id limit ${count} for update skip locked
            ), inserted as (
              insert into allocations (id, organization_id, gateway_id, upstream, state, runner)
              select allocation_id, organization_id, id, upstream, 'active', 'bench-synthetic' from picked
              returning id, organization_id, gateway_id, upstream, generation
            )
            update gateways g set allocation_id = inserted.id from inserted where g.id = inserted.gateway_id
            returning inserted.id as allocation_id, inserted.organization_id, inserted.upstream, inserted.generation`
        })
      ).pipe(Effect.provide(Reactivity.layer))
    )
    // Rows first: a reconcile pass in between sees live allocations missing their routes (and
    // restores them), never orphan files.
    for (let i = 0; i < rows.length; i += 500) {
      checkAbort()
      const chunk = rows.slice(i, i + 500)
      const response = await fetch(
        `${pdns.apiUrl}/api/v1/servers/${encodeURIComponent(pdns.serverId)}/zones/${encodeURIComponent(pdns.zone)}`,
        {
          method: "PATCH",
          headers: { "x-api-key": pdns.apiKey, "content-type": "application/json" },
          body: JSON.stringify({
            rrsets: chunk.map((row) => ({
              name: `org-${row.organization_id}.${domain}.`,
              type: "A",
              ttl: 60,
              changetype: "REPLACE",
              records: [{ content: stack.env.DNS_RECORD_IP ?? "127.0.0.1", disabled: false }]
            }))
          }),
          signal: AbortSignal.timeout(120_000)
        }
      )
      await response.arrayBuffer()
      if (response.status !== 204) throw new Error(`PowerDNS bulk PATCH answered HTTP ${response.status}`)
    }
    if (server?.mode === "lua") {
      // The route table: one bulk request, as the service does after an nginx restart.
      const boot = /^boot (\S+)/.exec((await routeApiText("GET", "/boot")).body)?.[1] ?? ""
      const lines = rows.map((row) => `${row.organization_id} ${row.upstream} ${row.allocation_id} ${row.generation}\n`).join("")
      const pushed = await routeApiText("POST", `/routes?boot=${boot}`, lines)
      if (pushed.status !== 200) throw new Error(`route API bulk push answered ${pushed.status}: ${pushed.body}`)
      for (const row of rows) active.add(row.organization_id)
      return { count: rows.length, ms: round(now() - start) }
    }
    const routesDir = path.join(nginx.confDir, "routes")
    await forEachConcurrent(rows, 16, async (row) => {
      const file = path.join(routesDir, routeFileName(row.organization_id as OrganizationId))
      await writeFile(`${file}.bench.tmp`, renderRoute({
        organizationId: row.organization_id as OrganizationId,
        allocationId: row.allocation_id as AllocationId,
        upstream: row.upstream as Upstream,
        generation: Generation.make(Number(row.generation)),
        domain
      }))
      await rename(`${file}.bench.tmp`, file)
    })
    await nginxReload(nginx)
    for (const row of rows) active.add(row.organization_id)
    return { count: rows.length, ms: round(now() - start) }
  }

  /**
   * From nginx's error log (notice level): SIGHUPs received (one per `nginx -s reload`) and
   * reconfigurations the master ran ("...: reconfiguring" on its own; the master merges SIGHUPs
   * that arrive while it is busy, so there can be fewer of these).
   */
  const nginxReloadCounts = (): { signals: number; reconfigurations: number } => {
    try {
      const lines = readFileSync(stack.nginx.errorLog, "utf8").split("\n")
      return {
        signals: lines.filter((line) => line.includes("(SIGHUP) received")).length,
        reconfigurations: lines.filter((line) => line.endsWith(": reconfiguring")).length
      }
    } catch {
      return { signals: Number.NaN, reconfigurations: Number.NaN }
    }
  }

  const throughputCase = async (
    api: ApiClient,
    mode: ServerMode,
    concurrency: number,
    dns: "powerdns" | "stubbed" = "powerdns"
  ): Promise<{ figures: ThroughputFigures; orgs: Array<string> }> => {
    log(`throughput: ${mode}, c=${concurrency}, ${active.size} active routes${dns === "stubbed" ? ", PowerDNS writes stubbed" : ""}`)
    proxy?.setStub(dns === "stubbed")
    const routes = active.size
    const reloadsBefore = nginxReloadCounts()
    const orgs: Array<string> = []
    const latencies: Array<number> = []
    let issued = 0
    let errors = 0
    const sampled: Array<{ allocationId: string; ms: number }> = []
    const cpuBefore = cpuNow()
    const start = now()
    const endBy = start + THROUGHPUT_MAX_MS
    await runWorkers(
      concurrency,
      () => !signal.aborted && issued < THROUGHPUT_MAX_STARTS && now() < endBy,
      async () => {
        issued += 1
        const org = randomUUID()
        const answer = await startOk(api, org).catch((error) => {
          noteError(`throughput ${mode} c=${concurrency}`, undefined, error)
          return undefined
        })
        if (answer?.status === 200) {
          orgs.push(org)
          latencies.push(answer.ms)
          if (orgs.length % 8 === 0) sampled.push({ allocationId: answer.body.allocation_id, ms: answer.ms })
        } else {
          errors += 1
          if (answer !== undefined) noteError(`throughput ${mode} c=${concurrency}`, answer)
        }
      }
    )
    checkAbort()
    const elapsedMs = now() - start
    proxy?.setStub(false)
    const cpuSeconds = cpuDelta(cpuBefore, cpuNow())
    const reloadsAfter = nginxReloadCounts()
    const reloads = reloadsAfter.reconfigurations - reloadsBefore.reconfigurations
    const signals = reloadsAfter.signals - reloadsBefore.signals
    const figures: ThroughputFigures = {
      mode,
      concurrency,
      dns,
      routes,
      starts: orgs.length,
      errors,
      elapsedMs: round(elapsedMs),
      startsPerSecond: round(orgs.length / (elapsedMs / 1000)),
      latency: summarize(latencies),
      reloads,
      reloadSignals: signals,
      startsPerReload: round(reloads === 0 ? Number.NaN : orgs.length / reloads),
      cpuSeconds,
      cpuBusy: round(cpuSeconds.total! / ((elapsedMs / 1000) * cores)),
      breakdown: await journalBreakdown(api, sampled)
    }
    results.throughput.push(figures)
    log(
      `  ${figures.starts} starts in ${(elapsedMs / 1000).toFixed(1)} s: ${figures.startsPerSecond}/s, ` +
        `p50 ${figures.latency.p50} ms, p99 ${figures.latency.p99} ms, ${reloads} reloads, ${errors} errors`
    )
    return { figures, orgs }
  }

  /**
   * Stops, retried: a stop can fail when nginx refuses a reload because another stop removed a
   * route file while the reload was parsing (reported as a finding); the retry finds it settled.
   */
  const stopWithRetry = async (api: ApiClient, org: string, phase: string) => {
    for (let attempt = 1; attempt <= 4; attempt++) {
      const answer = await stopOk(api, org).catch((error) => {
        noteError(phase, undefined, error)
        return undefined
      })
      if (answer?.status === 200) return answer
      if (answer !== undefined) noteError(phase, answer)
      await sleep(200 * attempt)
    }
    throw new Error(`could not stop ${org} after 4 attempts (see the errors in the results)`)
  }

  /** Stops at c=64; orgs started with PowerDNS stubbed are stopped with it stubbed too (no record to delete). */
  const stopAll = async (api: ApiClient, orgs: ReadonlyArray<string>, stubbed = false) => {
    proxy?.setStub(stubbed)
    try {
      await forEachConcurrent(orgs, 64, async (org) => {
        await stopWithRetry(api, org, "stop (c=64)")
      })
    } finally {
      proxy?.setStub(false)
    }
  }

  const measureRollback = async (api: ApiClient, routes: number, reloadP50: number): Promise<RollbackFigures> => {
    const n = reps(10)
    log(`rollback latency at ${routes} active routes (${n} starts failing at handshake)`)
    for (const upstream of upstreams) await controlGateway(upstream, { handshake: "fail" })
    const journalMs: Array<number> = []
    const undoSums: Array<number> = []
    const responses: Array<number> = []
    const unroutes: Array<number> = []
    try {
      for (let i = 0; i < n + 1; i++) {
        checkAbort()
        const answer = await api.start(randomUUID())
        if (answer.status !== 502 || answer.body?.step !== "handshake") {
          throw new Error(`expected a 502 at handshake, got ${answer.status}: ${JSON.stringify(answer.body).slice(0, 400)}`)
        }
        const view: AllocationView = expectStatus(await api.allocation(answer.body.allocation_id), 200, "GET /allocations").body
        if (view.state !== "rolled_back") throw new Error(`allocation ${view.allocation_id} is ${view.state}, not rolled_back`)
        if (i === 0) continue // warm-up
        const failed = view.steps.find((entry) => entry.step === "handshake" && entry.event === "failed")
        const undoEvents = view.steps.filter((entry) => entry.event.startsWith("undo") || entry.event === "undone")
        const last = undoEvents.at(-1)
        if (failed === undefined || last === undefined) throw new Error(`incomplete journal for ${view.allocation_id}`)
        journalMs.push(Date.parse(last.at) - Date.parse(failed.at))
        undoSums.push(view.rollback.reduce((sum, outcome) => sum + (outcome.duration_ms ?? 0), 0))
        responses.push(answer.ms)
        const unroute = view.rollback.find((outcome) => outcome.step === "nginx-reload")
        if (unroute?.duration_ms !== undefined) unroutes.push(unroute.duration_ms)
      }
    } finally {
      for (const upstream of upstreams) await controlGateway(upstream, { handshake: "ok" }).catch(() => undefined)
    }
    const journal = summarize(journalMs)
    const figures: RollbackFigures = {
      routes,
      n: journalMs.length,
      journal,
      undoSum: summarize(undoSums),
      response: summarize(responses),
      unrouteUndo: median(unroutes),
      reloadP50,
      ratioToReload: round(journal.p50 / reloadP50)
    }
    log(`  rollback p50 ${journal.p50} ms (journal), 502 answered p50 ${figures.response.p50} ms`)
    return figures
  }

  const addPool = async (api: ApiClient) => {
    const viaApi = 64
    log(`pool: ${viaApi} gateways through POST /pool/gateways, ${poolSize - viaApi} by SQL`)
    const latencies: Array<number> = []
    await forEachConcurrent(Array.from({ length: viaApi }, (_, i) => i), 8, async (i) => {
      const answer = expectStatus(
        await api.addGateway(`bench-api-${String(i).padStart(3, "0")}`, poolUpstream(i, ports)),
        201,
        "POST /pool/gateways"
      )
      latencies.push(answer.ms)
    })
    const sqlStart = now()
    const rows = Array.from({ length: poolSize - viaApi }, (_, k) => viaApi + k)
    await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function*() {
          const sql = yield* PgClient.make({ url: stack.databaseUrl, maxConnections: 1 })
          yield* sql.unsafe(
            `insert into gateways (name, upstream)
             select 'bench-gw-' || lpad(g::text, 5, '0'), u from unnest($1::int[], $2::text[]) as t(g, u)`,
            [rows, rows.map((i) => poolUpstream(i, ports))]
          )
          // Now rather than by autovacuum in the middle of the raw measurements.
          yield* sql.unsafe("vacuum analyze gateways")
        })
      ).pipe(Effect.provide(Reactivity.layer))
    )
    const pool = expectStatus(await api.call("GET", "/pool"), 200, "GET /pool").body
    results.setup.pool = {
      viaApi,
      apiLatency: summarize(latencies),
      viaSql: poolSize - viaApi,
      sqlMs: round(now() - sqlStart),
      total: pool.total,
      free: pool.free
    }
    if (pool.total !== poolSize) throw new Error(`pool has ${pool.total} gateways, expected ${poolSize}`)
  }

  // ---- the run ---------------------------------------------------------------------------------
  results.setup.serverStartups = startups
  const runCpuBefore = cpuNow()
  try {
    // Server L, lua (the default): what a start costs with no reload (raw calls, c=1, rollback,
    // propagation to every worker, a bystander's connections, 100 routes). Its allocations are
    // stopped before server A.
    let { api } = await launch("lua")
    await addPool(api)
    noteMemory("started, pool filled")
    // Let start-up work (the first reconcile pass, lazy imports) finish first.
    await sleep(3000)
    const rawLua = await measureRawLua()
    const luaC1 = await measureLatency(api, 0, reps(50), "lua")
    const luaComponents = {
      pdnsPatch: rawLua.pdnsPatch.p50,
      routePut: rawLua.routePut.p50,
      probe: rawLua.probe.p50,
      health: rawLua.health.p50,
      handshake: rawLua.handshake.p50
    }
    const luaRawSum = round(Object.values(luaComponents).reduce((a, b) => a + b, 0))
    const luaRollback = await measureRollback(api, 0, Number.NaN)
    results.lua = {
      raw: rawLua,
      startC1: { ...luaC1, rawSumMs: luaRawSum, rawComponents: luaComponents, ratio: round(luaC1.latency.p50 / luaRawSum) },
      rollback: { ...luaRollback, startP50: luaC1.latency.p50, ratioToStart: round(luaRollback.response.p50 / luaC1.latency.p50) }
    }
    log(`  lua c=1: p50 ${luaC1.latency.p50} ms; raw sum ${luaRawSum} ms; failed start p50 ${luaRollback.response.p50} ms`)
    log(`route-table propagation to every worker (${reps(100)} writes and removals)`)
    results.lua = { ...results.lua, propagation: await measurePropagation(routeTarget(), reps(100)) }
    await measureKeptAlive(api, "lua", reps(50))
    if (options.maxRoutes >= 100) {
      await fillTo(api, 100, runStart + options.budgetMs)
      results.latencyByRoutes.push(await measureLatency(api, active.size, reps(20), "lua"))
    }
    await stopAll(api, [...active])
    noteMemory("end of server L")
    await shutdown()

    // Server A, coalesce: raw costs, c=1 latency, rollback, 100 and 1,000 routes, coalesce throughput.
    ;({ api } = await launch("coalesce"))
    await probeRoute.write()
    await nginxReload(nginx)
    await sleep(3000)

    const raw0 = await measureRaw(0, true)
    results.raw = raw0
    results.rawByRoutes.push(raw0)
    const c1 = await measureLatency(api, 0, reps(50))
    noteMemory("c=1 latency")
    const components = {
      pdnsPatch: raw0.pdnsPatch.p50,
      reload: raw0.reload.p50,
      probe: raw0.probe.p50,
      health: raw0.health!.p50,
      handshake: raw0.handshake!.p50
    }
    const rawSum = round(Object.values(components).reduce((a, b) => a + b, 0))
    const rawSumServed = rawSum - raw0.reload.p50 + raw0.reloadToLive.p50
    results.startC1 = {
      ...c1,
      rawSumMs: rawSum,
      rawComponents: components,
      ratio: round(c1.latency.p50 / rawSum),
      // The same sum with "reload, then probe until served" in place of the bare reload process.
      rawSumServedMs: round(rawSumServed),
      ratioToServed: round(c1.latency.p50 / rawSumServed),
      ratioP99: round(
        c1.latency.p99 /
          (raw0.pdnsPatch.p99 + raw0.reload.p99 + raw0.probe.p99 + raw0.health!.p99 + raw0.handshake!.p99)
      )
    }
    log(`  c=1: p50 ${c1.latency.p50} ms, p99 ${c1.latency.p99} ms; raw sum ${rawSum} ms; ratio ${results.startC1.ratio}`)
    results.rollback.push(await measureRollback(api, 0, raw0.reload.p50))

    for (const level of [100, 1000].filter((l) => l <= options.maxRoutes)) {
      await fillTo(api, level, runStart + options.budgetMs)
      noteMemory(`filled to ${level}`)
      results.latencyByRoutes.push(await measureLatency(api, active.size, reps(20)))
      results.rawByRoutes.push(await measureRaw(active.size, false))
    }
    const rawBase = results.rawByRoutes.at(-1)!
    results.rollback.push(await measureRollback(api, active.size, rawBase.reload.p50))

    for (const concurrency of [8, 64]) {
      const { orgs } = await throughputCase(api, "coalesce", concurrency)
      noteMemory(`throughput coalesce c=${concurrency}`)
      await stopAll(api, orgs)
    }
    if (proxy !== undefined) {
      const { orgs } = await throughputCase(api, "coalesce", 64, "stubbed")
      await stopAll(api, orgs, true)
    }
    await measureKeptAlive(api, "coalesce", reps(50))
    noteMemory("end of server A")
    const memoryA = await shutdown()

    // Server B, each: the baseline throughput at the same 1,000 routes.
    ;({ api } = await launch("each"))
    let leftovers: { orgs: Array<string>; stubbed: boolean } = { orgs: [], stubbed: false }
    for (const [concurrency, dns] of [[8, "powerdns"], [64, "powerdns"], [64, "stubbed"]] as const) {
      if (dns === "stubbed" && proxy === undefined) continue
      // The previous case's starts are stopped before the next case, so each case sees ~1,000 routes.
      if (leftovers.orgs.length > 0) await stopAll(api, leftovers.orgs, leftovers.stubbed)
      const { orgs } = await throughputCase(api, "each", concurrency, dns)
      noteMemory(`throughput each c=${concurrency} ${dns}`)
      leftovers = { orgs, stubbed: dns === "stubbed" }
    }
    await shutdown()
    for (const concurrency of [8, 64]) {
      for (const dns of ["powerdns", "stubbed"] as const) {
        const find = (mode: string) =>
          results.throughput.find((t) => t.mode === mode && t.concurrency === concurrency && t.dns === dns)
        const coalesce = find("coalesce")
        const each = find("each")
        if (coalesce !== undefined && each !== undefined) {
          results.throughputRatio[`c${concurrency}${dns === "stubbed" ? " (PowerDNS stubbed)" : ""}`] = round(
            coalesce.startsPerSecond / each.startsPerSecond
          )
        }
      }
    }

    // Server C, lua, fresh (its peak RSS covers the fill), after an nginx restart: the route table
    // starts empty and the server's start-up pushes every active route back in one request. Then
    // lua throughput at ~1,000 routes and the 10,000-route level.
    await Effect.runPromise(stack.nginx.stop)
    await Effect.runPromise(stack.nginx.start)
    const toRestore = active.size
    ;({ api } = await launch("lua"))
    const serverC = server!
    const table = await routeApiText("GET", "/boot")
    if (!/ ready 1 /.test(table.body)) throw new Error(`the route table is not ready after the server's start-up: ${table.body}`)
    results.lua = { ...results.lua, restore: { routes: toRestore, startupMs: round(serverC.startupMs) } }
    log(`  nginx restarted: ${toRestore} routes pushed back; server up (table ready) in ${Math.round(serverC.startupMs)} ms`)
    // The last each-mode case's starts are stopped by this server. Not stubbed: its first reconcile
    // pass may have restored their DNS records meanwhile.
    await stopAll(api, leftovers.orgs)
    for (const concurrency of [8, 64]) {
      const { orgs } = await throughputCase(api, "lua", concurrency)
      noteMemory(`throughput lua c=${concurrency}`)
      await stopAll(api, orgs)
      const coalesce = results.throughput.find((t) => t.mode === "coalesce" && t.concurrency === concurrency && t.dns === "powerdns")
      const lua = results.throughput.at(-1)
      if (coalesce !== undefined && lua !== undefined) {
        results.throughputRatio[`lua vs coalesce c${concurrency}`] = round(lua.startsPerSecond / coalesce.startsPerSecond)
      }
    }
    if (active.size < options.maxRoutes) {
      // About 75 s stay for the last level's measurements, the memory figures and the reports.
      const fill = await fillTo(api, options.maxRoutes, runStart + options.budgetMs - 75_000)
      noteMemory(`API fill to ${active.size}`)
      if (fill.gaveUp && fill.errors < 200) {
        const synthetic = await synthesize(options.maxRoutes - active.size)
        results.fills[results.fills.length - 1] = { ...fill, synthetic }
        log(`  ${synthetic.count} created directly in ${(synthetic.ms / 1000).toFixed(1)} s; ${active.size} active`)
        await sleep(500)
      }
      results.latencyByRoutes.push(await measureLatency(api, active.size, reps(20), "lua"))
      noteMemory(`c=1 latency at ${active.size}`)
      // (No reload-mode raw figures here: this server is lua, whose file does not include routes/.)
    }
    const nginxMaster = nginxPid()
    const nginxRss = (nginxMaster === undefined ? [] : processTree(nginxMaster))
      .reduce((sum, pid) => sum + (memoryOf(pid)?.rssMiB ?? 0), 0)
    const pool = expectStatus(await api.call("GET", "/pool"), 200, "GET /pool").body
    results.consistency = {
      activeByBench: active.size,
      poolAllocated: pool.allocated,
      poolFree: pool.free,
      poolTotal: pool.total,
      freePlusAllocatedIsTotal: pool.free + pool.allocated === pool.total,
      allocatedMatchesBench: pool.allocated === active.size
    }
    noteMemory("end of server C")
    const memoryC = memoryOf(serverC.pid)
    results.memory = {
      routes: active.size,
      serverPeakRssMiB: round(memoryC?.hwmMiB ?? Number.NaN),
      serverRssMiB: round(memoryC?.rssMiB ?? Number.NaN),
      serverIdleRssMiB: startups.at(-1)?.idleRssMiB,
      nginxRssMiB: round(nginxRss),
      serverAPeakRssMiB: round(memoryA?.hwmMiB ?? Number.NaN)
    }
    await shutdown()
    if (command.runtime === "compiled") {
      // As an operator starts it: `npm start` (dist/ built) to the first /healthz 200, Postgres
      // running with every allocation of the run in it; then its graceful shutdown.
      await launch("lua", "npm start")
      await shutdown()
    }
  } finally {
    if (proxy !== undefined) {
      results.setup.pdnsProxy = proxy.stats()
      await proxy.close()
    }
    results.memoryTimeline = memoryTimeline
    // Over the whole run; "other" is CPU used by processes that are not part of the benchmark.
    results.setup.cpuSecondsWholeRun = { ...cpuDelta(runCpuBefore, cpuNow()), elapsedSeconds: round((now() - runStart) / 1000, 1) }
    results.errors = Object.fromEntries([...errorKinds].sort((a, b) => b[1] - a[1]))
    await shutdown().catch(() => undefined)
    await pdnsDelete(pdns, benchRecord).catch(() => undefined)
    await probeRoute.remove().catch(() => undefined)
    if (existsSync(stack.nginx.errorLog)) copyFileSync(stack.nginx.errorLog, `${options.logsPrefix}.nginx-error.log`)
    for (let i = 1; i <= serverCount; i++) {
      for (const mode of ["coalesce", "each"]) {
        const file = path.join(options.workDir, `server-${i}-${mode}.log`)
        if (existsSync(file)) copyFileSync(file, `${options.logsPrefix}.server-${i}-${mode}.log`)
      }
    }
  }
}
