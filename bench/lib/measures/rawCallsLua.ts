// Raw outside calls, lua mode: a PowerDNS PATCH, a route PUT and DELETE through nginx's route API,
// the route probe (of a route of the benchmark's own in the table), the gateway's health and
// handshake; made directly, with the service idle.
import { randomUUID } from "node:crypto"
import { type BenchContext, checkAbort, reps, routeTable, sampleAfterWarmup } from "../context.ts"
import { gatewayHandshake, gatewayHealth, pdnsReplace, timedProbe } from "../outside.ts"
import type { LuaRawFigures } from "../results.ts"
import { routeApi } from "../routeTable.ts"
import { summarize } from "../stats.ts"

/** The route API fences writes by generation: each write for the benchmark's org goes one higher. */
const FIRST_GENERATION = 9_500_000_000

export const measureRawCallsLua = async (ctx: BenchContext): Promise<LuaRawFigures> => {
  const { run } = ctx
  const n = reps(run, 50)
  run.log(`raw outside calls, lua (${n} each)`)
  const table = routeTable(ctx)
  const org = randomUUID()
  const host = `org-${org}.${ctx.outside.domain}`
  let generation = FIRST_GENERATION
  const put = async () => {
    generation += 1
    const answer = await routeApi(table, "PUT", `/routes/${org}?upstream=127.0.0.1:9&allocation=${randomUUID()}&generation=${generation}`)
    if (answer.status !== 200) throw new Error(`route API PUT answered ${answer.status}: ${answer.body}`)
    return answer.ms
  }
  const routePut = await sampleAfterWarmup(run, n, put)
  const deletes: Array<number> = []
  for (let i = 0; i < n; i++) {
    checkAbort(run)
    generation += 1
    const allocation = randomUUID()
    await routeApi(table, "PUT", `/routes/${org}?upstream=127.0.0.1:9&allocation=${allocation}&generation=${generation}`)
    deletes.push((await routeApi(table, "DELETE", `/routes/${org}?allocation=${allocation}&generation=${generation}`)).ms)
  }
  await put()
  const probe = await sampleAfterWarmup(run, n, () => timedProbe(ctx.outside.nginx, host))
  generation += 1
  await routeApi(table, "DELETE", `/routes/${org}?allocation=${randomUUID()}&generation=${generation}`)
  const gateway = ctx.outside.rawCallUpstream
  return {
    pdnsPatch: await sampleAfterWarmup(run, n, () => pdnsReplace(ctx.outside.pdns, ctx.outside.benchRecord)),
    routePut,
    routeDelete: summarize(deletes),
    probe,
    health: await sampleAfterWarmup(run, n, () => gatewayHealth(gateway)),
    handshake: await sampleAfterWarmup(run, n, () => gatewayHandshake(gateway))
  }
}
