// The small shared context every measure takes: the stack's outside systems as the benchmark calls
// them, the servers, the orgs held active, the failed calls, and the run's budget and scale.
// Nothing is captured: a measure reads and changes only what it is handed here.
import { Redacted } from "effect"
import { readFileSync } from "node:fs"
import path from "node:path"
import type { SampleGatewayHandle } from "../../src/dev/SampleGateway.ts"
import type { LocalStack } from "../../src/dev/stack.ts"
import { Allocations } from "./allocations.ts"
import { type CpuSnapshot, cpuSnapshot } from "./cpu.ts"
import { ErrorTally } from "./errors.ts"
import { ServerFleet } from "./fleet.ts"
import { type NginxTarget, type PowerDnsTarget, probeSecretOf, ProbeRoute } from "./outside.ts"
import { type PdnsProxy, startPdnsProxy } from "./pdnsProxy.ts"
import { poolSize } from "./pool.ts"
import type { MemoryPoint } from "./results.ts"
import type { RouteTableTarget } from "./routeTable.ts"
import type { ServerRuntime } from "./server.ts"
import { now, sleep, type Summary, summarize } from "./stats.ts"

export interface BenchOptions {
  /** One per pool entry (gateways.ts), started with the stack. */
  readonly poolGateways: ReadonlyArray<SampleGatewayHandle>
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

/** The outside systems as the benchmark calls them directly (the raw figures) or through nginx. */
export interface Outside {
  readonly nginx: NginxTarget
  /** PowerDNS itself, not the proxy: the raw figures must not include the proxy's hop. */
  readonly pdns: PowerDnsTarget
  readonly domain: string
  /** The pool's upstreams, one sample gateway each (gateways.ts). */
  readonly poolUpstreams: ReadonlyArray<string>
  /** A sample gateway outside the pool, for the raw gateway calls: nothing the service does touches it. */
  readonly rawCallUpstream: string
  /** Every sample gateway, to switch their behaviour (they run in this process). */
  readonly gateways: ReadonlyArray<SampleGatewayHandle>
  /** A route file of the benchmark's own, to see when a reload is served (reload mode). */
  readonly probeRoute: ProbeRoute
  /** An A record of the benchmark's own, for the raw PATCH figures. */
  readonly benchRecord: string
}

/** The run's bounds: how many repetitions, how many routes, how much time, and Ctrl-C. */
export interface RunControl {
  readonly log: (line: string) => void
  readonly signal: AbortSignal
  /** `now()` when the measures began: the time budget counts from here. */
  readonly startedAt: number
  readonly budgetMs: number
  readonly maxRoutes: number
  readonly scale: number
}

export interface BenchContext {
  readonly stack: LocalStack
  readonly outside: Outside
  readonly run: RunControl
  readonly fleet: ServerFleet
  readonly allocations: Allocations
  readonly errors: ErrorTally
  /** Between the service and PowerDNS; absent with BENCH_PDNS_PROXY=off (no stubbed cases then). */
  readonly proxy: PdnsProxy | undefined
  /** The server's RSS after each phase (measures/memory.ts notes them). */
  readonly memoryTimeline: Array<MemoryPoint>
}

/** worker_processes of the stack's nginx in lua mode (src/dev/stack.ts). */
const LUA_WORKERS = 4
/** Warm-up calls before each sampled series. */
const WARMUP = 3

export const openContext = async (stack: LocalStack, options: BenchOptions): Promise<BenchContext> => {
  // The budget includes what follows (the proxy, building dist/), as it always has.
  const startedAt = now()
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
  const rawCallUpstream = stack.gateways[0]?.upstream
  if (rawCallUpstream === undefined) throw new Error("the stack has no sample gateway for the raw calls")
  if (options.poolGateways.length !== poolSize(options.maxRoutes)) {
    throw new Error(`${options.poolGateways.length} pool gateways; the pool needs ${poolSize(options.maxRoutes)}`)
  }
  const errors = new ErrorTally()
  const proxy = options.pdnsProxy === "off" ? undefined : await startPdnsProxy(pdns.apiUrl, options.pdnsProxy)
  const fleet = ServerFleet.open({
    stack,
    serverRoot: options.serverRoot,
    runtime: options.runtime,
    workDir: options.workDir,
    serverNodeOptions: options.serverNodeOptions,
    pdnsUrl: proxy?.url,
    log: options.log
  })
  return {
    stack,
    outside: {
      nginx,
      pdns,
      domain,
      poolUpstreams: options.poolGateways.map((gateway) => gateway.upstream),
      rawCallUpstream,
      gateways: [...stack.gateways, ...options.poolGateways],
      probeRoute: new ProbeRoute(nginx, domain),
      benchRecord: `bench-raw.${domain}.`
    },
    run: {
      log: options.log,
      signal: options.signal,
      startedAt,
      budgetMs: options.budgetMs,
      maxRoutes: options.maxRoutes,
      scale: options.scale
    },
    fleet,
    allocations: new Allocations(errors, proxy),
    errors,
    proxy,
    memoryTimeline: []
  }
}

/** A repetition count scaled by BENCH_SCALE, never below 5. */
export const reps = (run: RunControl, n: number): number => Math.max(5, Math.round(n * run.scale))

export const checkAbort = (run: RunControl): void => {
  if (run.signal.aborted) throw new Error("interrupted")
}

/** `count` timings of `f` after WARMUP untimed ones, one at a time, with `pauseMs` between them. */
export const sampleAfterWarmup = async (
  run: RunControl,
  count: number,
  f: () => Promise<number>,
  pauseMs = 0
): Promise<Summary> => {
  const values: Array<number> = []
  for (let i = 0; i < count + WARMUP; i++) {
    checkAbort(run)
    const ms = await f()
    if (i >= WARMUP) values.push(ms)
    if (pauseMs > 0) await sleep(pauseMs)
  }
  return summarize(values)
}

const pidFrom = (file: string): number | undefined => {
  try {
    const pid = Number(readFileSync(file, "utf8").split("\n")[0]?.trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

export const nginxMasterPid = (ctx: BenchContext): number | undefined =>
  pidFrom(path.join(path.dirname(ctx.outside.nginx.mainConf), "nginx.pid"))

/** CPU seconds so far of the server (with the `nginx -s reload` processes it ran), nginx, PowerDNS, Postgres, this process. */
export const cpuNow = (ctx: BenchContext): CpuSnapshot => {
  const dataDir = ctx.stack.env.DATA_DIR
  const pidIn = (...parts: Array<string>) => (dataDir === undefined ? undefined : pidFrom(path.join(dataDir, ...parts)))
  return cpuSnapshot({
    server: ctx.fleet.current?.server.pid,
    nginx: nginxMasterPid(ctx),
    powerdns: pidIn("powerdns", "pdns.pid"),
    postgres: pidIn("postgres", "postmaster.pid")
  })
}

/** The route API of the stack's nginx (lua mode), with the edge secret the first server wrote. */
export const routeTable = (ctx: BenchContext): RouteTableTarget => ({
  listenPort: ctx.stack.nginx.listenPort,
  routeApiPort: ctx.stack.nginx.routeApiPort,
  secret: probeSecretOf(ctx.outside.nginx.confDir),
  domain: ctx.outside.domain,
  workers: LUA_WORKERS
})
