// The shape of bench/results/latest.json: what each measure returns and where the run puts it.
// The report (report.ts, chart.ts, figures.ts) reads only this, so it can redraw an old file.
import type { BystanderTally } from "./bystander.ts"
import type { Summary } from "./stats.ts"

/** How the server under measurement routes: NGINX_ROUTING=lua, or reload with NGINX_RELOAD_MODE. */
export type ServerMode = "lua" | "coalesce" | "each"

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

export interface LuaRawFigures {
  readonly pdnsPatch: Summary
  readonly routePut: Summary
  readonly routeDelete: Summary
  readonly probe: Summary
  readonly health: Summary
  readonly handshake: Summary
}

export interface Breakdown {
  /** Medians of the journal's duration_ms per forward step, and the rest of the client-seen time. */
  readonly dns: number
  readonly nginxConfig: number
  readonly nginxReload: number
  readonly handshake: number
  readonly rest: number
}

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

/** A c=1 start set against the sum of the p50s of the outside calls one start makes. */
export interface StartVsRawSum {
  readonly rawSumMs: number
  readonly rawComponents: Record<string, number>
  readonly ratio: number
}

/** Reload mode's c=1 start: also against p99s, and with "reload → served" in place of the bare reload. */
export interface ReloadStartVsRawSum extends StartVsRawSum {
  readonly ratioP99: number
  readonly rawSumServedMs: number
  readonly ratioToServed: number
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
  /** nginx reconfigurations during the case (the master's ": reconfiguring" log lines). */
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
  /** The server's mode (absent in files written before it was recorded). */
  readonly mode?: ServerMode
  readonly from: number
  readonly target: number
  readonly reached: number
  readonly concurrency: number
  readonly ms: number
  readonly startsPerSecond: number
  readonly errors: number
  readonly gaveUp: boolean
  readonly cpuSeconds: Record<string, number>
  /** Set when the rest was created directly (SQL, route files or table, PowerDNS) to stay in the time budget. */
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

export interface PropagationFigures {
  readonly trials: number
  readonly connectionsPerTrial: number
  /** ms from the write's answer until every worker served the new route. */
  readonly put: Summary
  /** ms from the removal's answer until no worker served the route. */
  readonly remove: Summary
  /** Answers that still showed the old state after the change had returned (must be 0). */
  readonly staleAnswers: number
  /** Distinct workers seen answering, over all trials. */
  readonly workersSeen: number
  readonly routeApiPut: Summary
  readonly routeApiDelete: Summary
}

export interface LuaFigures {
  readonly raw: LuaRawFigures
  readonly startC1?: LatencyFigures & StartVsRawSum
  /** The failing start's 502 against a successful start, both p50 at c=1. */
  readonly rollback?: RollbackFigures & { readonly startP50: number; readonly ratioToStart: number }
  readonly propagation?: PropagationFigures
  /** nginx restarted with this many active allocations: the next server's start-up, which pushes them all. */
  readonly restore?: RouteRefillFigures
}

export interface RouteRefillFigures {
  readonly routes: number
  readonly startupMs: number
}

/** A remote edge registered: from its nginx up (with the file of GET /edges/{id}/config) to `ready` holding every route. */
export interface EdgeReadyFigures {
  readonly name: string
  readonly routes: number
  readonly readyMs: number
}

/** How a remote edge stood on GET /edges at the end of a part, before it was deregistered. */
export interface EdgeStanding {
  readonly name: string
  readonly state: string
  readonly routeCount: number
  readonly heldGateways: number
  readonly lastError: string | null
}

export interface EdgePropagationFigures {
  readonly trials: number
  /** The local edge and the remote ones. */
  readonly edges: number
  /** Fresh connections to each edge after each 200, at least. */
  readonly connectionsPerEdge: number
  /** ms from a start's 200 until every edge answered the new allocation (the slowest edge's first answer). */
  readonly start: Summary
  /** ms from a stop's 200 until no edge answered it. */
  readonly stop: Summary
  /** Answers after the 200 that still showed the old state (must be 0: the service proves on each edge first). */
  readonly staleAnswers: number
  readonly answers: number
  /** Starts that did not answer 200. */
  readonly errors: number
  /** Distinct nginx workers seen answering, per edge. */
  readonly workersSeen: Record<string, number>
}

export interface EdgeCatchUpFigures {
  /** Active allocations (routes every edge must hold). */
  readonly routes: number
  /** The remote edges registered at this level, each filled from Postgres from empty. */
  readonly registered: ReadonlyArray<EdgeReadyFigures>
  /** The edge whose nginx was restarted. */
  readonly edge: string
  /** Its nginx stopped and started again (the table is in shared memory: empty after). */
  readonly restartMs: number
  /** From the new nginx up until its route API said the table is ready (GET /boot). */
  readonly tableReadyMs: number
  /** From the new nginx up until GET /edges showed it `ready` for its new boot with every route, and its table ready. */
  readonly ms: number
  /** route_count on GET /edges then, and the routes its route API lists (GET /routes). */
  readonly routeCount: number
  readonly routesListed: number
  readonly standing: ReadonlyArray<EdgeStanding>
}

/** HTTPS on the org server block (NGINX_TLS_*), lua: a start's cost and a request's through nginx. */
export interface TlsFigures {
  readonly routes: number
  /** The plain lua server's c=1 start just before, same route count. */
  readonly plainStart: LatencyFigures
  /** The same with TLS on (the health wait over HTTPS). */
  readonly tlsStart: LatencyFigures
  /** tlsStart p50 ÷ plainStart p50. */
  readonly startRatio: number
  /** GET /hello through nginx to the org's gateway. */
  readonly requests: {
    readonly plainKeptAlive: Summary
    readonly tlsKeptAlive: Summary
    readonly plainNewConnection: Summary
    readonly tlsFullHandshake: Summary
    readonly tlsResumed: Summary
    /** Of the resuming series, the share of connections that did resume their session. */
    readonly resumedShare: number
  }
}

/** Self time of one category of a CPU profile's frames (an npm package, node's internals, a folder of src/, ...). */
export interface ProfileCategory {
  readonly name: string
  readonly kind: "state" | "package" | "node" | "native" | "service" | "bundle" | "other"
  /** Sampled self time ÷ cycles. */
  readonly msPerCycle: number
  /** Of all the samples in the window (idle included), and of the busy ones (idle excluded). */
  readonly shareOfWall: number
  readonly shareOfBusy: number
}

export interface ProfileFunction {
  readonly name: string
  /** Source file relative to the server's root (mapped through the bundle's whole source map), "" for native. */
  readonly file: string
  readonly line: number
  readonly category: string
  readonly selfMsPerCycle: number
  readonly shareOfBusy: number
}

/** One span name of the trace pass: per cycle, how many, their summed duration, and that minus their child spans'. */
export interface SpanRow {
  readonly name: string
  readonly countPerCycle: number
  readonly msPerCycle: number
  readonly selfMsPerCycle: number
}

/** Pass 2: the same cycles on a server exporting its traces (OTLP/HTTP) to the benchmark. */
export interface TraceBreakdown {
  readonly cycles: number
  /** Client-seen start + stop, with tracing on. */
  readonly cycle: Summary
  readonly cpuMsPerCycle: { readonly user: number; readonly system: number }
  /** The cycles' requests (traces whose root is an HTTP server span) by span name. */
  readonly requestTraces: number
  readonly spansPerCycle: number
  readonly bySpan: ReadonlyArray<SpanRow>
  /** Spans of other traces started during the cycles (the service's background work). */
  readonly background: {
    readonly spans: number
    readonly seconds: number
    readonly bySpan: ReadonlyArray<{ readonly name: string; readonly perSecond: number; readonly msPerSecond: number }>
  }
  readonly exportRequests: number
  /** Spans seen whose parent never arrived (dropped by the exporter, or not yet flushed). */
  readonly orphans: number
}

/** The I/O of a start and a stop made by plain Node in a process of its own: CPU per operation and per cycle. */
export interface IoFloorFigures {
  readonly reps: number
  readonly perOperationMs: {
    readonly freshRequest: number
    readonly keptRequest: number
    readonly statement: number
    readonly servedRequest: number
  }
  /** From the trace pass's spans per cycle. */
  readonly perCycle: { readonly clientRequests: number; readonly statements: number; readonly servedRequests: number }
  /** Every client request kept-alive / every one on a connection of its own. */
  readonly lowerMsPerCycle: number
  readonly upperMsPerCycle: number
}

/**
 * Where a start and its stop go (lua, c=1, measures/profile.ts): server P-cpu's CPU and Postgres's
 * counters, server P's CPU profile by category and function, server P-traces' spans.
 */
export interface ProfileFigures {
  readonly routes: number
  readonly cycles: number
  readonly warmup: number
  /** --cpu-prof-interval. */
  readonly intervalUs: number
  /** Server P-cpu (no profiler), client-seen. */
  readonly start: Summary
  readonly stop: Summary
  /** Start + stop. */
  readonly cycle: Summary
  /** First cycle's start to the last one's end. */
  readonly windowMs: number
  /** Server P-cpu's, from /proc: all its threads. */
  readonly cpu: {
    readonly userMsPerCycle: number
    readonly systemMsPerCycle: number
    readonly totalMsPerCycle: number
    /** The same server with no request coming, before the cycles: its background work. */
    readonly idle?: { readonly seconds: number; readonly userMsPerSecond: number; readonly systemMsPerSecond: number }
    /** CPU ms per cycle of each part of the stack (server, nginx, PowerDNS, Postgres, bench, other), from /proc. */
    readonly byComponentMsPerCycle: Record<string, number>
  }
  readonly postgres: {
    readonly database: string
    /** xact_commit + xact_rollback per cycle (a statement outside a transaction block is one). */
    readonly transactionsPerCycle: number
    readonly rollbacksPerCycle: number
    readonly tuplesPerCycle: { readonly returned: number; readonly fetched: number; readonly inserted: number; readonly updated: number; readonly deleted: number }
    /** From the read before the first cycle to the server's exit (the counters are published late: see profile/pgStats.ts). */
    readonly windowSeconds: number
  }
  /** Server P, under the profiler. */
  readonly samples: {
    /** How the bundle's frames were mapped, or why they were not. */
    readonly mapping: string
    /** False: the samples could not be placed in the cycles' window; no table, no flame graph. */
    readonly attributed: boolean
    readonly alignment: string
    readonly windowMs: number
    readonly cycle: Summary
    /** Its CPU from /proc, the sampling's cost included. */
    readonly cpu: { readonly userMsPerCycle: number; readonly systemMsPerCycle: number; readonly totalMsPerCycle: number }
    readonly inWindow: number
    /** Sampled time ÷ cycles: all of it, and the busy part (not idle). */
    readonly wallMsPerCycle: number
    readonly busyMsPerCycle: number
    readonly idleShare: number
    readonly maxDepth: number
    readonly depthCap: number
  }
  readonly categories: ReadonlyArray<ProfileCategory>
  readonly topFunctions: ReadonlyArray<ProfileFunction>
  /** Server P's idle window before the cycles (its background work), sampled the same way, per second. */
  readonly background?: {
    readonly seconds: number
    /** Busy samples (not idle) per second of the window. */
    readonly busyMsPerSecond: number
    readonly categories: ReadonlyArray<{ readonly name: string; readonly msPerSecond: number; readonly shareOfBusy: number }>
    readonly topFunctions: ReadonlyArray<{
      readonly name: string
      readonly file: string
      readonly line: number
      readonly category: string
      readonly selfMsPerSecond: number
      readonly shareOfBusy: number
    }>
  }
  readonly traces?: TraceBreakdown | { readonly error: string }
  /** The same I/O in plain Node (measures/ioFloor.ts), counted from the trace pass. */
  readonly ioFloor?: IoFloorFigures | { readonly error: string }
  /** The flame graph's file name, beside the results (set when it is written). */
  flameGraph?: string
}

/** Several edges (lua): two remote nginx edges registered beside the local one. */
export interface EdgesFigures {
  readonly remoteEdges: number
  readonly workersPerRemoteEdge: number
  /** Active allocations while the start cost and propagation were measured (~1,000). */
  readonly routes: number
  readonly registered: ReadonlyArray<EdgeReadyFigures>
  /** c=1 starts, same server and route count: the local edge alone, then every edge registered. */
  readonly startOneEdge: LatencyFigures
  readonly startAllEdges: LatencyFigures
  /** startAllEdges p50 / startOneEdge p50. */
  readonly startRatio: number
  /** CPU of the remote edges' nginx (masters and workers) per start and stop of startAllEdges. */
  readonly remoteEdgesCpuPerStartAndStopMs: number
  readonly propagation: EdgePropagationFigures
  readonly standing: ReadonlyArray<EdgeStanding>
  /** At the largest level: one remote edge's nginx restarted, caught up from Postgres. */
  readonly catchUp?: EdgeCatchUpFigures
}

export type KeptAliveFigures = { readonly mode: ServerMode; readonly operations: number } & BystanderTally

export interface StartupFigures {
  readonly mode: string
  /** How the server was started: `node` with the start script's arguments, or `npm start` itself. */
  readonly via?: "node" | "npm start"
  /** Spawn to the first /healthz 200. */
  readonly ms: number
  readonly idleRssMiB: number
  /** SIGTERM to exit. */
  shutdownMs?: number
}

export interface MemoryFigures {
  readonly routes: number
  readonly serverPeakRssMiB: number
  readonly serverRssMiB: number
  readonly serverIdleRssMiB: number | undefined
  readonly nginxRssMiB: number
  /** Peak of the coalesce server (the first reload server, ~1,000 routes, after its c=64 cases). */
  readonly serverAPeakRssMiB: number
}

export interface MemoryPoint {
  readonly phase: string
  readonly server: number
  readonly routes: number
  readonly rssMiB: number
  readonly hwmMiB: number
}

export interface ConsistencyFigures {
  readonly activeByBench: number
  readonly poolAllocated: number
  readonly poolFree: number
  readonly poolTotal: number
  readonly freePlusAllocatedIsTotal: boolean
  readonly allocatedMatchesBench: boolean
}

export interface PoolSetup {
  readonly viaApi: number
  readonly apiLatency: Summary
  readonly viaSql: number
  readonly sqlMs: number
  readonly total: number
  readonly free: number
}

export interface Setup {
  stackStartMs?: number
  pool?: PoolSetup
  serverStartups?: ReadonlyArray<StartupFigures>
  pdnsProxy?: Record<string, number>
  /** Over the whole run; "other" is CPU used by processes that are not part of the benchmark. */
  cpuSecondsWholeRun?: Record<string, number>
}

/**
 * One figure of the report: a name, a unit, its value, and its target with whether it is met
 * (targets.ts). `id` is stable across runs; `name` may carry the run's own numbers.
 */
export interface Figure {
  readonly id: string
  readonly name: string
  readonly unit: string
  readonly value: number
  readonly target?: { readonly comparison: "<=" | ">="; readonly limit: number; readonly why: string }
  readonly met?: boolean
  readonly note?: string
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
  setup: Setup
  raw?: RawFigures
  rawByRoutes: Array<RawFigures>
  startC1?: LatencyFigures & ReloadStartVsRawSum
  throughput: Array<ThroughputFigures>
  throughputRatio: Record<string, number>
  latencyByRoutes: Array<LatencyFigures>
  fills: Array<FillFigures>
  rollback: Array<RollbackFigures>
  memory?: MemoryFigures
  /** NGINX_ROUTING=lua: raw calls, c=1 start, rollback, propagation to every worker, restore after a restart. */
  lua?: LuaFigures
  /** Several edges (lua): start cost with 3 edges vs 1, propagation to every edge, catch-up of a restarted edge. */
  edges?: EdgesFigures
  /** HTTPS (lua): a start's cost with TLS on, and a request's through nginx. */
  tls?: TlsFigures
  /** Where a start and a stop go (lua, c=1): CPU, Postgres, a CPU profile by category and function, spans. */
  profile?: ProfileFigures
  /** A bystander org's kept-alive connections while other orgs start and stop, per mode. */
  keptAlive: Array<KeptAliveFigures>
  /** The server's RSS after each phase. */
  memoryTimeline?: Array<MemoryPoint>
  /** Failed calls by phase, status and message, with counts. */
  errors?: Record<string, number>
  consistency?: ConsistencyFigures
  /** The headline figures with their targets (figures.ts); recomputed by the report from the rest. */
  figures: Array<Figure>
}
