// A bystander org's kept-alive connections (8 clients, a request every ~5 ms each) while other
// orgs start and stop one after another: how many of its requests break. A reload closes the old
// workers' idle kept-alive connections under it; a route-table write touches none.
import { randomUUID } from "node:crypto"
import { expectStatus } from "../api.ts"
import { startBystander } from "../bystander.ts"
import { type BenchContext, checkAbort } from "../context.ts"
import type { KeptAliveFigures, ServerMode } from "../results.ts"
import { sleep } from "../stats.ts"

const CONNECTIONS = 8
/** Lets the bystander's connections open and settle before the first start. */
const SETTLE_MS = 200

export const measureBystanderConnections = async (ctx: BenchContext, mode: ServerMode, operations: number): Promise<KeptAliveFigures> => {
  const { api } = ctx.fleet.require("the bystander measure")
  const { allocations, run } = ctx
  run.log(`kept-alive connections of a bystander org during ${operations} starts and stops of others (${mode})`)
  const bystander = randomUUID()
  expectStatus(await allocations.start(api, bystander), 200, "start (bystander)")
  const traffic = startBystander({ port: ctx.outside.nginx.port, host: `org-${bystander}.${ctx.outside.domain}`, connections: CONNECTIONS })
  // The bystander's clients stop even when a start fails, or they would outlive the run.
  try {
    await sleep(SETTLE_MS)
    for (let i = 0; i < operations; i++) {
      checkAbort(run)
      const org = randomUUID()
      expectStatus(await allocations.start(api, org), 200, "start (kept-alive case)")
      await allocations.stopWithRetry(api, org, "stop (kept-alive case)")
    }
  } catch (error) {
    await traffic.stop()
    throw error
  }
  const tally = await traffic.stop()
  await allocations.stopWithRetry(api, bystander, "stop (bystander)")
  run.log(`  ${tally.broken} of ${tally.requests} requests broken (${tally.reused} on reused connections)`)
  return { mode, operations, ...tally }
}
