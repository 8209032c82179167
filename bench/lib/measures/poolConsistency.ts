// The pool's books at the end: free + allocated = total in `GET /pool`, and allocated = the orgs
// the benchmark holds active (every start and stop of the run went through Allocations).
import { expectStatus } from "../api.ts"
import type { BenchContext } from "../context.ts"
import type { ConsistencyFigures } from "../results.ts"

export const checkPoolConsistency = async (ctx: BenchContext): Promise<ConsistencyFigures> => {
  const { api } = ctx.fleet.require("the pool check")
  const pool = expectStatus(await api.pool(), 200, "GET /pool").body
  return {
    activeByBench: ctx.allocations.size,
    poolAllocated: pool.allocated,
    poolFree: pool.free,
    poolTotal: pool.total,
    freePlusAllocatedIsTotal: pool.free + pool.allocated === pool.total,
    allocatedMatchesBench: pool.allocated === ctx.allocations.size
  }
}
