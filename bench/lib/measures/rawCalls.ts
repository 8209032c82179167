// Raw outside calls, reload mode: each call a start makes, made directly by the benchmark with the
// service idle, at the current route count. `full` adds the gateway calls and the PowerDNS burst
// (measured once, at 0 routes: they do not depend on the route count).
import { type BenchContext, checkAbort, cpuNow, reps, sampleAfterWarmup } from "../context.ts"
import { cpuDelta } from "../cpu.ts"
import {
  gatewayHandshake,
  gatewayHealth,
  nginxReload,
  nginxTest,
  pdnsDelete,
  pdnsReplace,
  type PowerDnsTarget,
  timedProbe
} from "../outside.ts"
import type { RawFigures } from "../results.ts"
import { forEachConcurrent, now, round, sleep, summarize } from "../stats.ts"

export const measureRawCalls = async (ctx: BenchContext, full: boolean): Promise<RawFigures> => {
  const { run } = ctx
  const { nginx, pdns, probeRoute, benchRecord } = ctx.outside
  const routes = ctx.allocations.size
  const n = reps(run, full ? 50 : 10)
  run.log(`raw outside calls at ${routes} active routes (${n} each)`)
  const cpuBefore = cpuNow(ctx)
  // Old workers finish their graceful exit between reloads, as they would between real starts.
  const reload = await sampleAfterWarmup(run, n, () => nginxReload(nginx), 50)
  const test = await sampleAfterWarmup(run, reps(run, full ? 20 : 5), () => nginxTest(nginx))
  const pdnsPatch = await sampleAfterWarmup(run, n, () => pdnsReplace(pdns, benchRecord))
  const probe = await sampleAfterWarmup(run, n, () => timedProbe(nginx, probeRoute.host))
  const gateway = ctx.outside.rawCallUpstream
  const gatewayCalls = full
    ? {
      pdnsPatchBurst: await pdnsBurst(pdns, ctx.outside.domain),
      health: await sampleAfterWarmup(run, n, () => gatewayHealth(gateway)),
      handshake: await sampleAfterWarmup(run, n, () => gatewayHandshake(gateway))
    }
    : {}
  const first: Array<number> = []
  const live: Array<number> = []
  for (let i = 0; i < reps(run, full ? 20 : 10); i++) {
    checkAbort(run)
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
    ...gatewayCalls,
    reloadToFirstAnswer: summarize(first),
    reloadToLive: summarize(live),
    // Everything that ran during the raw calls: the idle server's share shows it stayed idle.
    cpuSecondsDuring: cpuDelta(cpuBefore, cpuNow(ctx))
  }
}

/** 64 PATCHes at c=8 straight to PowerDNS: how many its gsqlite3 backend refuses. */
const pdnsBurst = async (pdns: PowerDnsTarget, domain: string) => {
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
