// NGINX_ROUTING=lua: how soon a route write is served by every worker, and a removal gone from
// every worker, measured from the moment the route API's answer arrives. After each write (or
// removal) returns, 200 fresh connections go to nginx's probe, 20 at a time; for each worker, the
// time of its first answer showing the change; the trial's figure is the slowest worker's. Any
// answer still showing the old state after the write returned is counted (it must be none).
import { randomUUID } from "node:crypto"
import * as http from "node:http"
import { PROBE_SECRET_HEADER } from "../../src/nginx/config.ts"
import { probe } from "./outside.ts"
import { forEachConcurrent, now, type Summary, summarize } from "./stats.ts"

export interface RouteTableTarget {
  /** The org server block's port (NGINX_LISTEN). */
  readonly listenPort: number
  /** The route API's port (NGINX_ROUTE_API_LISTEN). */
  readonly routeApiPort: number
  readonly secret: string
  readonly domain: string
  readonly workers: number
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

const CONNECTIONS = 200
const MAX_CONNECTIONS = 4000
const AT_ONCE = 20

/** One route API call (with the edge secret): its status and body, timing the round trip. */
export const routeApi = (
  target: Pick<RouteTableTarget, "routeApiPort" | "secret">,
  method: string,
  path: string,
  body?: string
): Promise<{ status: number; body: string; ms: number }> =>
  new Promise((resolve, reject) => {
    const start = now()
    const request = http.request({
      host: "127.0.0.1",
      port: target.routeApiPort,
      path,
      method,
      headers: { [PROBE_SECRET_HEADER]: target.secret },
      agent: false
    }, (response) => {
      const chunks: Array<Buffer> = []
      response.on("data", (chunk: Buffer) => chunks.push(chunk))
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8"), ms: now() - start }))
    })
    request.on("error", reject)
    request.end(body)
  })

export const measurePropagation = async (target: RouteTableTarget, trials: number): Promise<PropagationFigures> => {
  const put: Array<number> = []
  const remove: Array<number> = []
  const apiPut: Array<number> = []
  const apiDelete: Array<number> = []
  const workers = new Set<string>()
  let stale = 0

  /**
   * Fresh connections after `t0`, AT_ONCE at a time, until every worker has answered (at least
   * CONNECTIONS, at most MAX_CONNECTIONS: nginx does not spread connections evenly): per worker,
   * when it first answered as `expected`; the slowest worker's time.
   */
  const everyWorker = async (host: string, expected: string, t0: number) => {
    const firstSeen = new Map<string, number>()
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
    return Math.max(...firstSeen.values())
  }

  for (let trial = 0; trial < trials; trial++) {
    const org = randomUUID()
    const allocation = randomUUID()
    const generation = 9_000_000_000 + trial
    const host = `org-${org}.${target.domain}`
    const written = await routeApi(
      target,
      "PUT",
      `/routes/${org}?upstream=127.0.0.1:9&allocation=${allocation}&generation=${generation}`
    )
    if (written.status !== 200) throw new Error(`route API PUT answered ${written.status}`)
    apiPut.push(written.ms)
    put.push(await everyWorker(host, allocation, now()))
    const removed = await routeApi(target, "DELETE", `/routes/${org}?allocation=${allocation}&generation=${generation}`)
    if (removed.status !== 200) throw new Error(`route API DELETE answered ${removed.status}`)
    apiDelete.push(removed.ms)
    remove.push(await everyWorker(host, "", now()))
  }
  return {
    trials,
    connectionsPerTrial: CONNECTIONS,
    put: summarize(put),
    remove: summarize(remove),
    staleAnswers: stale,
    workersSeen: workers.size,
    routeApiPut: summarize(apiPut),
    routeApiDelete: summarize(apiDelete)
  }
}
