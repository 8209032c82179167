// Start latency at c=1: sequential starts of new orgs, each followed by its stop (untimed, so the
// route count stays put), with the journal's step times; and that latency set against the sum of
// the raw outside calls one start makes (measures/rawCalls*.ts).
import { randomUUID } from "node:crypto"
import { expectStatus } from "../api.ts"
import { type BenchContext, checkAbort, cpuNow } from "../context.ts"
import { cpuDelta } from "../cpu.ts"
import { StepTimes } from "../journal.ts"
import type { LatencyFigures, LuaRawFigures, RawFigures, ReloadStartVsRawSum, ServerMode, StartVsRawSum } from "../results.ts"
import { round, summarize } from "../stats.ts"

/** Warm-up starts before the timed ones (counted in the CPU per start, as before). */
export const WARMUP_STARTS = 2

export const measureStartLatency = async (ctx: BenchContext, count: number, mode: ServerMode = "coalesce"): Promise<LatencyFigures> => {
  const { api } = ctx.fleet.require("start latency")
  const routes = ctx.allocations.size
  ctx.run.log(`start latency at c=1 with ${routes} active routes (${count} starts, ${mode})`)
  const latencies: Array<number> = []
  const stops: Array<number> = []
  const steps = new StepTimes()
  let errors = 0
  const cpuBefore = cpuNow(ctx)
  for (let i = 0; i < count + WARMUP_STARTS; i++) {
    checkAbort(ctx.run)
    const org = randomUUID()
    const started = await ctx.allocations.start(api, org)
    if (started.status !== 200 || started.body?.allocation_id === undefined) {
      errors += 1
      ctx.errors.answer(`latency at ${routes}`, started)
      if (errors > 5) throw new Error(`too many failed starts: ${JSON.stringify(started.body).slice(0, 400)}`)
      continue
    }
    const journal = expectStatus(await api.allocation(started.body.allocation_id), 200, "GET /allocations").body
    const stopped = await ctx.allocations.stopWithRetry(api, org, "stop (c=1)")
    if (i < WARMUP_STARTS) continue
    latencies.push(started.ms)
    stops.push(stopped.ms)
    steps.add(journal, started.ms)
  }
  const cpu = cpuDelta(cpuBefore, cpuNow(ctx))
  // Per start *and* its stop (the stop is not timed, but its CPU is in the same window).
  const cpuPerStartAndStopMs = Object.fromEntries(
    Object.entries(cpu).map(([name, seconds]) => [name, round((seconds * 1000) / (count + WARMUP_STARTS), 1)])
  )
  return {
    routes,
    concurrency: 1,
    mode,
    cpuPerStartAndStopMs,
    latency: summarize(latencies),
    stop: summarize(stops),
    breakdown: steps.breakdown(),
    errors
  }
}

const sum = (values: ReadonlyArray<number>) => values.reduce((a, b) => a + b, 0)

/** Reload mode: PowerDNS PATCH + nginx reload + route probe + gateway health + handshake. */
export const reloadStartVsRawSum = (start: LatencyFigures, raw: RawFigures): ReloadStartVsRawSum => {
  if (raw.health === undefined || raw.handshake === undefined) throw new Error("the raw figures lack the gateway calls (measure them with full = true)")
  const components = {
    pdnsPatch: raw.pdnsPatch.p50,
    reload: raw.reload.p50,
    probe: raw.probe.p50,
    health: raw.health.p50,
    handshake: raw.handshake.p50
  }
  const rawSum = round(sum(Object.values(components)))
  const rawSumServed = rawSum - raw.reload.p50 + raw.reloadToLive.p50
  return {
    rawSumMs: rawSum,
    rawComponents: components,
    ratio: round(start.latency.p50 / rawSum),
    // The same sum with "reload, then probe until served" in place of the bare reload process.
    rawSumServedMs: round(rawSumServed),
    ratioToServed: round(start.latency.p50 / rawSumServed),
    ratioP99: round(start.latency.p99 / sum([raw.pdnsPatch.p99, raw.reload.p99, raw.probe.p99, raw.health.p99, raw.handshake.p99]))
  }
}

/** lua mode: PowerDNS PATCH + route API PUT + route probe + gateway health + handshake. */
export const luaStartVsRawSum = (start: LatencyFigures, raw: LuaRawFigures): StartVsRawSum => {
  const components = {
    pdnsPatch: raw.pdnsPatch.p50,
    routePut: raw.routePut.p50,
    probe: raw.probe.p50,
    health: raw.health.p50,
    handshake: raw.handshake.p50
  }
  const rawSum = round(sum(Object.values(components)))
  return { rawSumMs: rawSum, rawComponents: components, ratio: round(start.latency.p50 / rawSum) }
}
