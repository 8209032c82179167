// Propagation (lua): how soon a route write is served by every nginx worker, and a removal gone
// from every worker, from the moment the route API's answer arrives. After each write (or removal)
// returns, fresh connections go to nginx's probe, 20 at a time (at least 200, more until every
// worker has answered); per worker, the time of its first answer showing the change; the trial's
// figure is the slowest worker's. Any answer still showing the old state is counted (must be none).
import { randomUUID } from "node:crypto"
import { type BenchContext, checkAbort, reps, routeTable } from "../context.ts"
import { probe } from "../outside.ts"
import type { PropagationFigures } from "../results.ts"
import { routeApi, type RouteTableTarget } from "../routeTable.ts"
import { forEachConcurrent, now, summarize } from "../stats.ts"

const CONNECTIONS = 200
const MAX_CONNECTIONS = 4000
const AT_ONCE = 20
/** Generations of the benchmark's own trial routes (the route API fences writes by generation). */
const FIRST_GENERATION = 9_000_000_000

export const measurePropagation = async (ctx: BenchContext): Promise<PropagationFigures> => {
  const trials = reps(ctx.run, 100)
  ctx.run.log(`route-table propagation to every worker (${trials} writes and removals)`)
  const target = routeTable(ctx)
  const put: Array<number> = []
  const remove: Array<number> = []
  const apiPut: Array<number> = []
  const apiDelete: Array<number> = []
  const workersSeen = new Set<string>()
  let staleAnswers = 0
  const untilEveryWorker = async (host: string, expected: string) => {
    const seen = await untilEveryWorkerAnswers(target, host, expected, now())
    for (const worker of seen.workers) workersSeen.add(worker)
    staleAnswers += seen.stale
    return seen.slowestMs
  }

  for (let trial = 0; trial < trials; trial++) {
    checkAbort(ctx.run)
    const org = randomUUID()
    const allocation = randomUUID()
    const generation = FIRST_GENERATION + trial
    const host = `org-${org}.${target.domain}`
    const written = await routeApi(target, "PUT", `/routes/${org}?upstream=127.0.0.1:9&allocation=${allocation}&generation=${generation}`)
    if (written.status !== 200) throw new Error(`route API PUT answered ${written.status}`)
    apiPut.push(written.ms)
    put.push(await untilEveryWorker(host, allocation))
    const removed = await routeApi(target, "DELETE", `/routes/${org}?allocation=${allocation}&generation=${generation}`)
    if (removed.status !== 200) throw new Error(`route API DELETE answered ${removed.status}`)
    apiDelete.push(removed.ms)
    remove.push(await untilEveryWorker(host, ""))
  }
  return {
    trials,
    connectionsPerTrial: CONNECTIONS,
    put: summarize(put),
    remove: summarize(remove),
    staleAnswers,
    workersSeen: workersSeen.size,
    routeApiPut: summarize(apiPut),
    routeApiDelete: summarize(apiDelete)
  }
}

/**
 * Fresh connections after `t0`, AT_ONCE at a time, until every worker has answered (at least
 * CONNECTIONS, at most MAX_CONNECTIONS: nginx does not spread connections evenly): per worker,
 * when it first answered as `expected`; the slowest worker's time, the workers seen, and the
 * answers that did not show `expected`.
 */
const untilEveryWorkerAnswers = async (target: RouteTableTarget, host: string, expected: string, t0: number) => {
  const firstSeen = new Map<string, number>()
  const workers = new Set<string>()
  let stale = 0
  let sent = 0
  while (sent < CONNECTIONS || (firstSeen.size < target.workers && sent < MAX_CONNECTIONS)) {
    sent += AT_ONCE
    await forEachConcurrent(Array.from({ length: AT_ONCE }), AT_ONCE, async () => {
      const answer = await probe(target.listenPort, host, target.secret)
      const at = now() - t0
      const [allocation = "", pid = ""] = answer.body.split(" ")
      workers.add(pid)
      if (allocation.trim() !== expected) {
        stale += 1
        return
      }
      if (!firstSeen.has(pid)) firstSeen.set(pid, at)
    })
  }
  if (firstSeen.size < target.workers) {
    throw new Error(`only ${firstSeen.size} of ${target.workers} workers answered ${sent} fresh connections`)
  }
  return { slowestMs: Math.max(...firstSeen.values()), workers, stale }
}
