// Several edges (lua): two remote nginx edges beside the stack's own, each registered through the
// service's API as an operator would (POST /edges, the file of GET /edges/{id}/config installed,
// nginx started with it) and awaited `ready`. At ~1,000 routes: the c=1 start with the local edge
// alone and then with all three, and how soon after a start's (stop's) 200 every edge serves the
// org (none does). At the largest level: one remote edge's nginx restarted, its table empty, and
// the time until the service has caught it up from Postgres. The edges are deregistered and
// stopped after each part, so the measures between and after see the local edge alone.
import { Effect, Exit, Scope } from "effect"
import { randomUUID } from "node:crypto"
import { readFileSync } from "node:fs"
import path from "node:path"
import { type NginxHandle, startNginx } from "../../../src/dev/NginxProcess.ts"
import { freePort } from "../../../src/lib/ports.ts"
import { PROBE_SECRET_HEADER } from "../../../src/nginx/config.ts"
import type { ApiClient } from "../api.ts"
import { type BenchContext, checkAbort, reps, routeTable } from "../context.ts"
import { cpuSnapshot } from "../cpu.ts"
import { probe } from "../outside.ts"
import type { EdgeCatchUpFigures, EdgePropagationFigures, EdgeReadyFigures, EdgesFigures, EdgeStanding } from "../results.ts"
import { routeApi, type RouteTableTarget } from "../routeTable.ts"
import { now, round, sleep, summarize } from "../stats.ts"
import { measureStartLatency, WARMUP_STARTS } from "./startLatency.ts"

const REMOTE_EDGES = 2
/** worker_processes of each remote edge (as the dev stack's and the tests' edges run). */
const REMOTE_WORKERS = 2
/** Fresh connections to each edge after each start's or stop's 200: one, then AT_ONCE at a time. */
const CONNECTIONS_PER_EDGE = 16
const AT_ONCE = 8
/** An edge that serves no change this long after the 200 is broken, not slow. */
const GIVE_UP_MS = 5_000
/** Registered → ready, or restarted → ready again: far above the 2 s target, so a failure names the edge's state. */
const READY_WITHIN_MS = 30_000
const POLL_MS = 20

/** What GET /edges shows of an edge. */
interface EdgeView {
  readonly edge_id: string
  readonly name: string
  readonly state: string
  readonly boot_id: string | null
  readonly route_count: number
  readonly held_gateways: number
  readonly last_error: string | null
}

interface RemoteEdge {
  readonly edgeId: string
  readonly name: string
  readonly nginx: NginxHandle
  readonly dir: string
  /** Its org listener and route API, with its own secret (from the file the API rendered). */
  readonly table: RouteTableTarget
}

interface EdgeTarget {
  readonly name: string
  readonly listenPort: number
  readonly secret: string
}

/**
 * At ~1,000 routes (lua): start p50 at c=1 with the local edge alone, then with the two remote
 * edges registered too (same server, same route count), and propagation to every edge.
 */
export const measureEdges = async (ctx: BenchContext): Promise<EdgesFigures> => {
  const { api } = ctx.fleet.require("the edges measure")
  const count = reps(ctx.run, 30)
  const startOneEdge = await measureStartLatency(ctx, count, "lua")
  const edges = await startRemoteEdges(ctx, api)
  try {
    // The remote edges' nginx are children of this process: their CPU is apart from "nginx" (the local edge).
    const cpuOf = () => cpuSnapshot(Object.fromEntries(edges.edges.map((edge) => [edge.name, masterPid(edge)])))
    const cpuBefore = cpuOf()
    const startAllEdges = await measureStartLatency(ctx, count, "lua")
    const cpuAfter = cpuOf()
    const remoteSeconds = edges.edges.reduce((sum, edge) => sum + (cpuAfter[edge.name] ?? Number.NaN) - (cpuBefore[edge.name] ?? Number.NaN), 0)
    const startRatio = round(startAllEdges.latency.p50 / startOneEdge.latency.p50)
    ctx.run.log(`  c=1 start p50 with ${REMOTE_EDGES + 1} edges ${startAllEdges.latency.p50} ms, local edge alone ${startOneEdge.latency.p50} ms: ${startRatio}x`)
    const propagation = await measureEdgePropagation(ctx, api, edges.edges)
    return {
      remoteEdges: REMOTE_EDGES,
      workersPerRemoteEdge: REMOTE_WORKERS,
      routes: ctx.allocations.size,
      registered: edges.registered,
      startOneEdge,
      startAllEdges,
      startRatio,
      remoteEdgesCpuPerStartAndStopMs: round((remoteSeconds * 1000) / (count + WARMUP_STARTS), 1),
      propagation,
      standing: await standingOf(api, edges.edges)
    }
  } finally {
    await edges.close()
  }
}

/**
 * At the largest level (lua): the two remote edges registered (each filled from Postgres, the
 * routes created directly included), then one's nginx restarted: its table comes back empty and
 * the service must notice and push every route back. Timed from the new nginx up.
 */
export const measureEdgeCatchUp = async (ctx: BenchContext): Promise<EdgeCatchUpFigures> => {
  const { api } = ctx.fleet.require("the edge catch-up")
  const routes = ctx.allocations.size
  const edges = await startRemoteEdges(ctx, api)
  try {
    const edge = edges.edges[0]
    if (edge === undefined) throw new Error("no remote edge to restart")
    ctx.run.log(`edge catch-up: ${edge.name}'s nginx restarted with ${routes} active routes`)
    const down = now()
    await Effect.runPromise(edge.nginx.stop)
    await Effect.runPromise(edge.nginx.start)
    const restartMs = now() - down
    const caughtUp = await untilCaughtUp(api, edge, routes, now())
    const listed = await routeApi(edge.table, "GET", "/routes")
    // The first line is the boot line; every other one a route.
    const routesListed = listed.body.split("\n").filter((line) => line !== "").length - 1
    if (listed.status !== 200 || routesListed < routes) {
      throw new Error(`${edge.name} caught up, but its route API lists ${routesListed} routes of ${routes} (HTTP ${listed.status})`)
    }
    const ms = Math.max(caughtUp.tableReadyMs, caughtUp.readyMs)
    ctx.run.log(`  ${edge.name} ready again in ${Math.round(ms)} ms (table ready ${Math.round(caughtUp.tableReadyMs)} ms), ${routesListed} routes`)
    return {
      routes,
      registered: edges.registered,
      edge: edge.name,
      restartMs: round(restartMs),
      tableReadyMs: round(caughtUp.tableReadyMs),
      ms: round(ms),
      routeCount: caughtUp.routeCount,
      routesListed,
      standing: await standingOf(api, edges.edges)
    }
  } finally {
    await edges.close()
  }
}

/**
 * Registers and starts the remote edges one after the other, each awaited `ready` with every
 * active route; `close` deregisters and stops them (it does not throw: a failed DELETE is a
 * failed call of the run).
 */
const startRemoteEdges = async (
  ctx: BenchContext,
  api: ApiClient
): Promise<{ edges: Array<RemoteEdge>; registered: Array<EdgeReadyFigures>; close: () => Promise<void> }> => {
  const scope = Effect.runSync(Scope.make())
  const edges: Array<RemoteEdge> = []
  const registered: Array<EdgeReadyFigures> = []
  const routes = ctx.allocations.size
  const close = async () => {
    for (const edge of edges) {
      const removed = await api.call("DELETE", `/edges/${edge.edgeId}`).catch((error: unknown) => {
        ctx.errors.exception("edges: DELETE /edges", error)
        return undefined
      })
      if (removed !== undefined && removed.status !== 200) ctx.errors.answer("edges: DELETE /edges", removed)
    }
    // The service reads the registry again every second: past that, no change goes to them any more.
    if (edges.length > 0) await sleep(1_100)
    await Effect.runPromise(Scope.close(scope, Exit.void))
    ctx.run.log(`  ${edges.length} remote edge(s) deregistered and stopped`)
  }
  try {
    for (let n = 2; n < 2 + REMOTE_EDGES; n++) {
      checkAbort(ctx.run)
      const edge = await registerEdge(ctx, api, scope, `bench-edge-${n}`)
      edges.push(edge)
      const ready = await untilCaughtUp(api, edge, routes, now())
      registered.push({ name: edge.name, routes, readyMs: round(Math.max(ready.tableReadyMs, ready.readyMs)) })
      ctx.run.log(`  ${edge.name} registered; ready with ${ready.routeCount} routes ${Math.round(ready.readyMs)} ms after its nginx was up`)
    }
  } catch (error) {
    await close()
    throw error
  }
  return { edges, registered, close }
}

/** POST /edges, GET /edges/{id}/config, and an nginx started with that file (as src/dev/edges.ts does). */
const registerEdge = async (ctx: BenchContext, api: ApiClient, scope: Scope.CloseableScope, name: string): Promise<RemoteEdge> => {
  const [routeApiPort, listenPort] = await Effect.runPromise(Effect.all([freePort, freePort]))
  const added = await api.call<{ edge_id?: string }>("POST", "/edges", {
    name,
    route_api_url: `http://127.0.0.1:${routeApiPort}`,
    probe_url: `http://127.0.0.1:${listenPort}`
  })
  if (added.status !== 201 || added.body.edge_id === undefined) {
    throw new Error(`POST /edges (${name}) answered ${added.status}: ${JSON.stringify(added.body).slice(0, 400)}`)
  }
  const edgeId = added.body.edge_id
  const config = await api.call<string>("GET", `/edges/${edgeId}/config`)
  if (config.status !== 200 || typeof config.body !== "string") {
    throw new Error(`GET /edges/${edgeId}/config answered ${config.status}: ${JSON.stringify(config.body).slice(0, 400)}`)
  }
  // The edge's secret guards its probe and route API; the benchmark reads it from the file, as nginx does.
  const secret = new RegExp(`\\$http_${PROBE_SECRET_HEADER.replace(/-/g, "_")} != "([^"]+)"`).exec(config.body)?.[1]
  if (secret === undefined) throw new Error(`the file of GET /edges/${edgeId}/config has no probe secret`)
  const dir = path.join(ctx.stack.env.DATA_DIR ?? ctx.stack.nginx.confDir, "bench-edges", `${name}-${randomUUID().slice(0, 8)}`)
  const nginx = await Effect.runPromise(
    startNginx({
      dir,
      listenPort,
      routeApiPort,
      workers: REMOTE_WORKERS,
      confFiles: [{ name: "gateway-allocator.conf", text: config.body }]
    }).pipe(Scope.extend(scope))
  )
  return {
    edgeId,
    name,
    nginx,
    dir,
    table: { listenPort, routeApiPort, secret, domain: ctx.outside.domain, workers: REMOTE_WORKERS }
  }
}

/**
 * From `t0` (its nginx just up, table empty): when its route API first says the table is ready
 * for its boot, and when GET /edges first shows it `ready` for that boot holding `routes` routes
 * or more (a `ready` of the nginx before the restart does not count).
 */
const untilCaughtUp = async (api: ApiClient, edge: RemoteEdge, routes: number, t0: number) => {
  let tableReadyMs: number | undefined
  let readyMs: number | undefined
  let bootLine = ""
  let view: EdgeView | undefined
  while (tableReadyMs === undefined || readyMs === undefined) {
    if (now() - t0 > READY_WITHIN_MS) {
      throw new Error(
        `edge ${edge.name} not caught up ${READY_WITHIN_MS} ms after its nginx was up with ${routes} active routes: ` +
          `its route API says "${bootLine.trim()}", GET /edges says ${JSON.stringify(view)}`
      )
    }
    const boot = await routeApi(edge.table, "GET", "/boot").catch(() => undefined)
    bootLine = boot?.body ?? bootLine
    const bootId = /^boot (\S+)/.exec(bootLine)?.[1]
    if (tableReadyMs === undefined && / ready 1 /.test(bootLine)) tableReadyMs = now() - t0
    view = await edgeView(api, edge.edgeId)
    if (readyMs === undefined && view?.state === "ready" && bootId !== undefined && view.boot_id === bootId && view.route_count >= routes) {
      readyMs = now() - t0
    }
    if (tableReadyMs === undefined || readyMs === undefined) await sleep(POLL_MS)
  }
  return { tableReadyMs, readyMs, routeCount: view?.route_count ?? Number.NaN }
}

/**
 * `reps(50)` starts and stops at c=1 with every edge registered: after each 200, fresh
 * connections to every edge's org listener (the route probe, with that edge's secret; one, then
 * AT_ONCE at a time), until each has answered with the change and at least CONNECTIONS_PER_EDGE
 * were sent to it. The trial's
 * figure is the slowest edge's first answer showing the change; every answer showing the old
 * state is counted (the service proves on each edge before it answers: must be 0).
 */
const measureEdgePropagation = async (ctx: BenchContext, api: ApiClient, remote: ReadonlyArray<RemoteEdge>): Promise<EdgePropagationFigures> => {
  const trials = reps(ctx.run, 50)
  const local = routeTable(ctx)
  const targets: Array<EdgeTarget> = [
    { name: "local", listenPort: local.listenPort, secret: local.secret },
    ...remote.map((edge) => ({ name: edge.name, listenPort: edge.table.listenPort, secret: edge.table.secret }))
  ]
  ctx.run.log(`propagation to every one of ${targets.length} edges (${trials} starts and stops at c=1)`)
  const start: Array<number> = []
  const stop: Array<number> = []
  const workers = new Map<string, Set<string>>(targets.map((target) => [target.name, new Set()]))
  let stale = 0
  let answers = 0
  let errors = 0
  /** One fresh connection to `target`: when it answered, and whether it showed `expected`. */
  const probeOnce = async (target: EdgeTarget, host: string, expected: string, t0: number) => {
    const answer = await probe(target.listenPort, host, target.secret)
    const at = now() - t0
    if (answer.status !== 200) throw new Error(`edge ${target.name}'s probe answered HTTP ${answer.status}`)
    const [allocation = "", pid = ""] = answer.body.split(" ")
    workers.get(target.name)?.add(pid.trim())
    return { at, current: allocation.trim() === expected }
  }
  const untilEveryEdge = async (host: string, expected: string, t0: number) => {
    const firsts = await Promise.all(targets.map(async (target) => {
      let first = Number.POSITIVE_INFINITY
      let sent = 0
      while (sent < CONNECTIONS_PER_EDGE || first === Number.POSITIVE_INFINITY) {
        if (now() - t0 > GIVE_UP_MS) throw new Error(`edge ${target.name} did not serve the change to ${host} within ${GIVE_UP_MS} ms`)
        // One connection first: the first answer is then one fresh connection's round trip, not a batch's.
        const batch = sent === 0 ? 1 : AT_ONCE
        sent += batch
        const seen = await Promise.all(Array.from({ length: batch }, () => probeOnce(target, host, expected, t0)))
        answers += seen.length
        for (const { at, current } of seen) {
          if (current) first = Math.min(first, at)
          else stale += 1
        }
      }
      return first
    }))
    return Math.max(...firsts)
  }

  for (let trial = 0; trial < trials; trial++) {
    checkAbort(ctx.run)
    const org = randomUUID()
    const host = `org-${org}.${ctx.outside.domain}`
    const started = await ctx.allocations.start(api, org)
    const startedAt = now()
    if (started.status !== 200 || started.body?.allocation_id === undefined) {
      errors += 1
      ctx.errors.answer("edges: start", started)
      if (errors > 5) throw new Error(`too many failed starts with ${targets.length} edges: ${JSON.stringify(started.body).slice(0, 400)}`)
      continue
    }
    start.push(await untilEveryEdge(host, started.body.allocation_id, startedAt))
    await ctx.allocations.stopWithRetry(api, org, "edges: stop")
    stop.push(await untilEveryEdge(host, "", now()))
  }
  return {
    trials,
    edges: targets.length,
    connectionsPerEdge: CONNECTIONS_PER_EDGE,
    start: summarize(start),
    stop: summarize(stop),
    staleAnswers: stale,
    answers,
    errors,
    workersSeen: Object.fromEntries([...workers].map(([name, pids]) => [name, pids.size]))
  }
}

const edgeView = async (api: ApiClient, edgeId: string): Promise<EdgeView | undefined> => {
  const answer = await api.call<{ edges?: ReadonlyArray<EdgeView> }>("GET", "/edges", undefined, 10_000).catch(() => undefined)
  return answer?.status === 200 ? answer.body.edges?.find((edge) => edge.edge_id === edgeId) : undefined
}

/** How each remote edge stands on GET /edges at the end of a part (before it is removed). */
const standingOf = async (api: ApiClient, edges: ReadonlyArray<RemoteEdge>): Promise<Array<EdgeStanding>> =>
  Promise.all(edges.map(async (edge) => {
    const view = await edgeView(api, edge.edgeId)
    return {
      name: edge.name,
      state: view?.state ?? "missing",
      routeCount: view?.route_count ?? Number.NaN,
      heldGateways: view?.held_gateways ?? Number.NaN,
      lastError: view?.last_error ?? null
    }
  }))

const masterPid = (edge: RemoteEdge): number | undefined => {
  try {
    const pid = Number(readFileSync(path.join(edge.dir, "nginx.pid"), "utf8").trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}
