// The benchmark: the measures of bench/lib/measures/, in order, on one local stack, with one server
// at a time in each routing mode. Each measure takes the shared context (context.ts) and returns
// its figures; this file only says which server runs which measures and where the figures go.
// Plain async code; run.ts owns the stack (Effect scope) and calls `runBench`. See bench/README.md.
import { copyFileSync, existsSync } from "node:fs"
import type { LocalStack } from "../../src/dev/stack.ts"
import { type BenchContext, type BenchOptions, openContext, reps } from "./context.ts"
import { measureBystanderConnections } from "./measures/bystanderConnections.ts"
import { measureWholeRunCpu, startWholeRunCpu } from "./measures/cpu.ts"
import { measureEdgeCatchUp, measureEdges } from "./measures/edges.ts"
import { failedStartVsStart, measureFailedStart } from "./measures/failedStart.ts"
import { FILL_CONCURRENCY } from "./measures/fill.ts"
import { measureMemory, noteMemory } from "./measures/memory.ts"
import { checkPoolConsistency } from "./measures/poolConsistency.ts"
import { measureProfile, prepareProfileBundle } from "./measures/profile.ts"
import { measurePropagation } from "./measures/propagation.ts"
import { measureRawCalls } from "./measures/rawCalls.ts"
import { measureRawCallsLua } from "./measures/rawCallsLua.ts"
import { measureRouteRefill } from "./measures/routeRefill.ts"
import { measureLargestLevel, measureLevel } from "./measures/routeLevels.ts"
import { luaStartVsRawSum, measureStartLatency, reloadStartVsRawSum } from "./measures/startLatency.ts"
import { measureNpmStart } from "./measures/startup.ts"
import { measureTls } from "./measures/tls.ts"
import { measureThroughput, THROUGHPUT_MAX_MS, THROUGHPUT_MAX_STARTS, throughputRatio } from "./measures/throughput.ts"
import { nginxReload, pdnsDelete } from "./outside.ts"
import { poolSize, fillPool } from "./pool.ts"
import type { BundleMap } from "./profile/bundleMap.ts"
import type { LuaFigures, Results } from "./results.ts"
import { sleep } from "./stats.ts"

/** Start-up work (the first reconcile pass, lazy imports) finishes before the first measure. */
const SETTLE_AFTER_START_MS = 3000

/** What a run writes beside its results (run.ts writes them, also when the run fails part way). */
export interface BenchArtifacts {
  /** The profiled server's flame graph (measures/profile.ts). */
  flameSvg?: string
  /** Its raw .cpuprofile, in the run's temp directory (kept with BENCH_KEEP_PROFILE=1). */
  cpuProfileFile?: string
}

export const runBench = async (stack: LocalStack, results: Results, options: BenchOptions, artifacts: BenchArtifacts = {}): Promise<void> => {
  const ctx = await openContext(stack, options)
  results.settings = settingsOf(ctx, options)
  // Right after the fleet built dist/ (if stale): the profile's source map, from the same sources.
  const profileBundle = await prepareProfileBundle(ctx)
  const runCpu = startWholeRunCpu(ctx)
  try {
    await luaServer(ctx, results, artifacts, profileBundle)
    const coalescePeakMiB = await coalesceServer(ctx, results)
    const eachLeftovers = await eachServer(ctx, results)
    await largestLevelServer(ctx, results, eachLeftovers, coalescePeakMiB)
    // Server D: `npm start` itself (compiled runs only: a tsx run has no build to start).
    if (ctx.fleet.command.runtime === "compiled") await measureNpmStart(ctx)
  } finally {
    results.setup.serverStartups = ctx.fleet.startups
    if (ctx.proxy !== undefined) {
      results.setup.pdnsProxy = ctx.proxy.stats()
      await ctx.proxy.close()
    }
    results.memoryTimeline = ctx.memoryTimeline
    results.setup.cpuSecondsWholeRun = measureWholeRunCpu(ctx, runCpu)
    results.errors = ctx.errors.toRecord()
    await ctx.fleet.shutdown().catch(() => undefined)
    await pdnsDelete(ctx.outside.pdns, ctx.outside.benchRecord).catch(() => undefined)
    await ctx.outside.probeRoute.remove().catch(() => undefined)
    if (existsSync(stack.nginx.errorLog)) copyFileSync(stack.nginx.errorLog, `${options.logsPrefix}.nginx-error.log`)
    ctx.fleet.copyLogs(options.logsPrefix)
  }
}

/**
 * Server L, lua (the default): what a start costs with no reload: raw calls, c=1 start, failed
 * start, propagation to every worker, a bystander's connections, 100 routes. It fills the pool
 * first; its allocations are stopped before the next server. Then servers P-cpu, P and P-traces
 * (where a start and a stop go) and server T (HTTPS), with the same 0 routes.
 */
const luaServer = async (ctx: BenchContext, results: Results, artifacts: BenchArtifacts, profileBundle: BundleMap): Promise<void> => {
  const { api } = await ctx.fleet.launch("lua")
  results.setup.pool = await fillPool(ctx)
  noteMemory(ctx, "started, pool filled")
  await sleep(SETTLE_AFTER_START_MS)
  const raw = await measureRawCallsLua(ctx)
  const start = await measureStartLatency(ctx, reps(ctx.run, 50), "lua")
  const failed = await measureFailedStart(ctx, Number.NaN)
  const lua = {
    raw,
    startC1: { ...start, ...luaStartVsRawSum(start, raw) },
    rollback: { ...failed, ...failedStartVsStart(failed, start) }
  }
  results.lua = lua
  ctx.run.log(`  lua c=1: p50 ${start.latency.p50} ms; raw sum ${lua.startC1.rawSumMs} ms; failed start p50 ${failed.response.p50} ms`)
  addLuaFigures(results, { propagation: await measurePropagation(ctx) })
  results.keptAlive.push(await measureBystanderConnections(ctx, "lua", reps(ctx.run, 50)))
  if (ctx.run.maxRoutes >= 100) {
    const level = await measureLevel(ctx, 100, "lua")
    results.fills.push(level.fill)
    results.latencyByRoutes.push(level.latency)
  }
  await ctx.allocations.stopAll(api, ctx.allocations.orgs())
  noteMemory(ctx, "end of server L")
  await ctx.fleet.shutdown()
  // Servers P-cpu, P and P-traces: where a start and a stop go (CPU, Postgres, CPU profile, spans), 0 routes.
  await profileServers(ctx, results, artifacts, profileBundle)
  // Server T: the same with HTTPS on, against server L's c=1 start (same route count).
  results.tls = await measureTls(ctx, start)
}

/** Servers P-cpu, P and P-traces (measures/profile.ts): the figures in the results, the flame graph and profile aside. */
export const profileServers = async (ctx: BenchContext, results: Results, artifacts: BenchArtifacts, bundle: BundleMap): Promise<void> => {
  const outcome = await measureProfile(ctx, bundle)
  results.profile = outcome.figures
  if (outcome.flameSvg !== undefined) artifacts.flameSvg = outcome.flameSvg
  if (outcome.cpuProfileFile !== undefined) artifacts.cpuProfileFile = outcome.cpuProfileFile
}

/**
 * Server A, reload with NGINX_RELOAD_MODE=coalesce: raw costs, c=1 start, rollback, the 100 and
 * 1,000 levels, throughput at ~1,000 routes, a bystander's connections. Returns its peak RSS.
 */
const coalesceServer = async (ctx: BenchContext, results: Results): Promise<number> => {
  const { api } = await ctx.fleet.launch("coalesce")
  await ctx.outside.probeRoute.write()
  await nginxReload(ctx.outside.nginx)
  await sleep(SETTLE_AFTER_START_MS)
  const raw = await measureRawCalls(ctx, true)
  results.raw = raw
  results.rawByRoutes.push(raw)
  const start = await measureStartLatency(ctx, reps(ctx.run, 50))
  noteMemory(ctx, "c=1 latency")
  results.startC1 = { ...start, ...reloadStartVsRawSum(start, raw) }
  ctx.run.log(`  c=1: p50 ${start.latency.p50} ms, p99 ${start.latency.p99} ms; raw sum ${results.startC1.rawSumMs} ms; ratio ${results.startC1.ratio}`)
  results.rollback.push(await measureFailedStart(ctx, raw.reload.p50))

  let rawAtLargest = raw
  for (const level of [100, 1000].filter((l) => l <= ctx.run.maxRoutes)) {
    const measured = await measureLevel(ctx, level, "coalesce")
    results.fills.push(measured.fill)
    results.latencyByRoutes.push(measured.latency)
    if (measured.raw !== undefined) {
      results.rawByRoutes.push(measured.raw)
      rawAtLargest = measured.raw
    }
  }
  results.rollback.push(await measureFailedStart(ctx, rawAtLargest.reload.p50))

  for (const concurrency of [8, 64]) {
    const { figures, orgs } = await measureThroughput(ctx, "coalesce", concurrency)
    results.throughput.push(figures)
    noteMemory(ctx, `throughput coalesce c=${concurrency}`)
    await ctx.allocations.stopAll(api, orgs)
  }
  if (ctx.proxy !== undefined) {
    const { figures, orgs } = await measureThroughput(ctx, "coalesce", 64, "stubbed")
    results.throughput.push(figures)
    await ctx.allocations.stopAll(api, orgs, true)
  }
  results.keptAlive.push(await measureBystanderConnections(ctx, "coalesce", reps(ctx.run, 50)))
  noteMemory(ctx, "end of server A")
  const memory = await ctx.fleet.shutdown()
  return memory?.hwmMiB ?? Number.NaN
}

/**
 * Server B, reload with NGINX_RELOAD_MODE=each: the baseline throughput at the same ~1,000 routes.
 * Returns the last case's starts, which the next server stops (it is faster at it).
 */
const eachServer = async (ctx: BenchContext, results: Results): Promise<{ orgs: Array<string>; stubbed: boolean }> => {
  const { api } = await ctx.fleet.launch("each")
  let leftovers: { orgs: Array<string>; stubbed: boolean } = { orgs: [], stubbed: false }
  for (const [concurrency, dns] of [[8, "powerdns"], [64, "powerdns"], [64, "stubbed"]] as const) {
    if (dns === "stubbed" && ctx.proxy === undefined) continue
    // The previous case's starts are stopped before the next case, so each case sees ~1,000 routes.
    if (leftovers.orgs.length > 0) await ctx.allocations.stopAll(api, leftovers.orgs, leftovers.stubbed)
    const { figures, orgs } = await measureThroughput(ctx, "each", concurrency, dns)
    results.throughput.push(figures)
    noteMemory(ctx, `throughput each c=${concurrency} ${dns}`)
    leftovers = { orgs, stubbed: dns === "stubbed" }
  }
  await ctx.fleet.shutdown()
  for (const concurrency of [8, 64]) {
    for (const dns of ["powerdns", "stubbed"] as const) {
      const ratio = throughputRatio(results.throughput, { mode: "coalesce", concurrency, dns }, { mode: "each", concurrency, dns })
      if (ratio !== undefined) results.throughputRatio[`c${concurrency}${dns === "stubbed" ? " (PowerDNS stubbed)" : ""}`] = ratio
    }
  }
  return leftovers
}

/**
 * Server C, lua, started after an nginx restart (the route table refill), fresh so that its peak
 * RSS covers the largest level: lua throughput at ~1,000 routes, several edges there, then the
 * 10,000-route level, the pool's books, the memory figures and a remote edge's catch-up.
 */
const largestLevelServer = async (
  ctx: BenchContext,
  results: Results,
  eachLeftovers: { orgs: ReadonlyArray<string> },
  coalescePeakMiB: number
): Promise<void> => {
  addLuaFigures(results, { restore: await measureRouteRefill(ctx) })
  const { api } = ctx.fleet.require("the largest level")
  // Not stubbed: this server's first reconcile pass may have restored their DNS records meanwhile.
  await ctx.allocations.stopAll(api, eachLeftovers.orgs)
  for (const concurrency of [8, 64]) {
    const { figures, orgs } = await measureThroughput(ctx, "lua", concurrency)
    results.throughput.push(figures)
    noteMemory(ctx, `throughput lua c=${concurrency}`)
    await ctx.allocations.stopAll(api, orgs)
    const ratio = throughputRatio(results.throughput, { mode: "lua", concurrency, dns: "powerdns" }, { mode: "coalesce", concurrency, dns: "powerdns" })
    if (ratio !== undefined) results.throughputRatio[`lua vs coalesce c${concurrency}`] = ratio
  }
  // Two remote edges at ~1,000 routes; deregistered and stopped again before the largest level.
  results.edges = await measureEdges(ctx)
  noteMemory(ctx, "several edges")
  if (ctx.allocations.size < ctx.run.maxRoutes) {
    const level = await measureLargestLevel(ctx)
    results.fills.push(level.fill)
    results.latencyByRoutes.push(level.latency)
  }
  results.consistency = await checkPoolConsistency(ctx)
  noteMemory(ctx, "end of server C")
  results.memory = measureMemory(ctx, coalescePeakMiB)
  // The edges are registered again only now, at the largest level: the routes created directly
  // went to the local edge alone, and their catch-ups stay out of the memory figures above.
  const catchUp = await measureEdgeCatchUp(ctx)
  if (results.edges !== undefined) results.edges = { ...results.edges, catchUp }
  await ctx.fleet.shutdown()
}

/** The lua server's figures come first; later servers add to them. */
const addLuaFigures = (results: Results, more: Partial<Omit<LuaFigures, "raw">>): void => {
  if (results.lua === undefined) throw new Error("the lua figures are added to before the lua server measured them")
  results.lua = { ...results.lua, ...more }
}

export const settingsOf = (ctx: BenchContext, options: BenchOptions): Record<string, unknown> => ({
  sampleGateways: ctx.outside.gateways.length,
  poolSize: poolSize(ctx.run.maxRoutes),
  maxRoutes: ctx.run.maxRoutes,
  scale: ctx.run.scale,
  stepTimeoutMs: 30_000,
  undoTimeoutMs: 30_000,
  throughputBound: { starts: THROUGHPUT_MAX_STARTS, ms: THROUGHPUT_MAX_MS },
  fillConcurrency: FILL_CONCURRENCY,
  serverNodeOptions: options.serverNodeOptions ?? null,
  pdnsProxy: options.pdnsProxy === "off"
    ? "off: the service calls PowerDNS directly"
    : options.pdnsProxy === "serialize"
    ? "serialize: one PowerDNS API call at a time"
    : "pass: forwards as it comes (stubs writes in the stubbed cases only)",
  serverRuntime: ctx.fleet.command.runtime,
  serverCommand: `node ${ctx.fleet.command.args.join(" ")}`
})
