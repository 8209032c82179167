// The headline figures of a run, named by what they measure, each with its unit, its value, and
// its target from targets.ts with whether it is met. Computed from the results alone, so an old
// results file gets them too (bench/render.ts).
import type { Figure, LatencyFigures, Results, ServerMode, StartupFigures } from "./results.ts"
import { isMet, targetOf } from "./targets.ts"
import { round } from "./stats.ts"

const MODE_LABEL: Record<ServerMode, string> = { lua: "lua", coalesce: "reload (coalesce)", each: "reload (each)" }

const count = (n: number) => n.toLocaleString("en")
const ms = (value: number) => (Number.isFinite(value) ? value.toFixed(value >= 100 ? 0 : 1) : "-")

const figure = (id: string, name: string, unit: string, value: number, note?: string): Figure => {
  const target = targetOf(id)
  return {
    id,
    name,
    unit,
    value,
    ...(target === undefined ? {} : { target, met: isMet(target, value) }),
    ...(note === undefined ? {} : { note })
  }
}

/** Every server's start-up, `via` filled in for files written before it was recorded. */
export const startupsOf = (results: Results): ReadonlyArray<StartupFigures & { readonly via: "node" | "npm start" }> =>
  (results.setup.serverStartups ?? []).map((s) => ({ ...s, via: s.via ?? "node" }))

/** The share of the machine's CPU that processes outside the benchmark used over the run (0..1). */
export const otherProcessesShare = (results: Results): number | undefined => {
  const cpu = results.setup.cpuSecondsWholeRun
  if (cpu?.other === undefined || cpu.elapsedSeconds === undefined) return undefined
  return cpu.other / (cpu.elapsedSeconds * Number(results.machine.cores ?? 1))
}

/** The smallest level at 100 or more routes and the largest, if they differ: p50 largest / p50 smallest. */
const growth = (levels: ReadonlyArray<LatencyFigures>) => {
  const small = levels.find((l) => l.routes >= 100 && l.routes < 1000)
  const large = levels.at(-1)
  if (small === undefined || large === undefined || large === small) return undefined
  return { small, large, ratio: round(large.latency.p50 / small.latency.p50) }
}

export const computeFigures = (results: Results): Array<Figure> => {
  const figures: Array<Figure> = []
  const add = (id: string, name: string, unit: string, value: number, note?: string) => figures.push(figure(id, name, unit, value, note))
  const lua = results.lua

  // Start at c=1 against the raw outside calls of one start.
  if (lua?.startC1 !== undefined) {
    const c1 = lua.startC1
    add("lua.start.c1.p50", "lua: start p50 at c=1, 0 routes", "ms", c1.latency.p50)
    add(
      "lua.start.c1.vsRawSum",
      `lua: start p50 at c=1 ÷ the raw sum of its outside calls (PATCH + route PUT + probe + health + handshake, ${ms(c1.rawSumMs)} ms)`,
      "x",
      c1.ratio
    )
  }
  if (results.startC1 !== undefined) {
    const c1 = results.startC1
    add("coalesce.start.c1.p50", "reload (coalesce): start p50 at c=1, 0 routes", "ms", c1.latency.p50)
    add(
      "coalesce.start.c1.vsRawSum",
      `reload (coalesce): start p50 at c=1 ÷ the raw sum of its outside calls (PATCH + reload + probe + health + handshake, ${ms(c1.rawSumMs)} ms)`,
      "x",
      c1.ratio
    )
    add(
      "coalesce.start.c1.vsRawSumServed",
      `reload (coalesce): the same, with "reload until served" in place of the bare reload (${ms(c1.rawSumServedMs)} ms)`,
      "x",
      c1.ratioToServed
    )
  }

  // What a start and its stop cost the server in CPU (server P-cpu, measures/profile.ts).
  const profile = results.profile
  if (profile !== undefined) {
    const c = profile.cpu
    add(
      "lua.cpu.perStartStop",
      `lua: server CPU per start and its stop at c=1, ${count(profile.routes)} routes (user ${ms(c.userMsPerCycle)} + system ${ms(c.systemMsPerCycle)} ms, ` +
        `${profile.cycles} cycles, no profiler)`,
      "ms",
      c.totalMsPerCycle
    )
    const floor = profile.ioFloor
    if (floor !== undefined && !("error" in floor) && floor.lowerMsPerCycle > 0) {
      add(
        "lua.cpu.vsIoFloor",
        `lua: server CPU per start and its stop ÷ the same I/O in plain Node (${floor.perCycle.clientRequests} requests, ` +
          `${floor.perCycle.statements} statements, ${floor.perCycle.servedRequests} served: ${ms(floor.lowerMsPerCycle)}-${ms(floor.upperMsPerCycle)} ms; ` +
          "the lower bound)",
        "x",
        round(c.totalMsPerCycle / floor.lowerMsPerCycle, 2)
      )
    }
  }

  // A failed start and its rollback.
  if (lua?.rollback !== undefined) {
    add("lua.failedStart.vsStart", "lua: failed start (handshake refused, every undo run) p50 ÷ a successful start p50", "x", lua.rollback.ratioToStart)
  }
  const rollback = results.rollback.at(-1)
  if (rollback !== undefined) {
    add(
      "coalesce.rollback.largest.vsReload",
      `reload (coalesce): rollback p50 at ${count(rollback.routes)} routes (handshake failed → last undo, journal) ÷ one raw reload`,
      "x",
      rollback.ratioToReload
    )
  }

  // Throughput at c=64 with ~1,000 routes.
  for (const mode of ["lua", "coalesce", "each"] as const) {
    const c64 = results.throughput.find((t) => t.mode === mode && t.concurrency === 64 && t.dns === "powerdns")
    if (c64 !== undefined) {
      add(`${mode}.throughput.c64`, `${MODE_LABEL[mode]}: throughput at c=64, ~${count(c64.routes)} routes`, "starts/s", c64.startsPerSecond)
    }
  }
  const luaVsCoalesce = results.throughputRatio["lua vs coalesce c64"]
  if (luaVsCoalesce !== undefined) add("lua.throughput.c64.vsCoalesce", "lua: throughput at c=64 ÷ reload (coalesce)", "x", luaVsCoalesce)
  const coalesceVsEach = results.throughputRatio.c64
  if (coalesceVsEach !== undefined) add("coalesce.throughput.c64.vsEach", "reload: throughput at c=64, coalesce ÷ each", "x", coalesceVsEach)

  // Start latency against the number of active routes.
  const luaGrowth = growth(results.latencyByRoutes.filter((l) => l.mode === "lua"))
  if (luaGrowth !== undefined) {
    add(
      "lua.start.largest.vs100",
      `lua: start p50 at ${count(luaGrowth.large.routes)} routes ÷ at ${luaGrowth.small.routes}`,
      "x",
      luaGrowth.ratio,
      luaGrowth.large.routes < 10_000 ? `measured up to ${count(luaGrowth.large.routes)} routes only` : undefined
    )
  }
  const reloadGrowth = growth(results.latencyByRoutes.filter((l) => l.mode !== "lua"))
  if (reloadGrowth !== undefined) {
    add(
      "coalesce.start.largest.vs100",
      `reload (coalesce): start p50 at ${count(reloadGrowth.large.routes)} routes ÷ at ${reloadGrowth.small.routes}`,
      "x",
      reloadGrowth.ratio,
      reloadGrowth.large.routes < 10_000 ? `measured up to ${count(reloadGrowth.large.routes)} routes only: the 10,000 level runs in lua mode` : undefined
    )
  }

  // lua's route table: propagation to every worker, a bystander's connections, refill after a restart.
  if (lua?.propagation !== undefined) {
    const p = lua.propagation
    const stale = `${p.staleAnswers} of the answers after the change returned showed the old state`
    add("lua.propagation.write.p99", `lua: a route write returned → every one of ${p.workersSeen} workers serving it (fresh connections), p99`, "ms", p.put.p99, stale)
    add("lua.propagation.removal.p99", `lua: a route removal returned → no worker serving it, p99`, "ms", p.remove.p99, stale)
  }
  for (const kept of results.keptAlive ?? []) {
    add(
      `${kept.mode}.bystander.broken`,
      `${MODE_LABEL[kept.mode]}: a bystander org's kept-alive requests broken during ${kept.operations} starts and stops of other orgs`,
      "requests",
      kept.broken,
      `of ${count(kept.requests)} requests`
    )
  }
  if (lua?.restore !== undefined) {
    add(
      "lua.routeRefill.startup",
      `lua: nginx restarted with ${count(lua.restore.routes)} active allocations → next server up, route table refilled`,
      "ms",
      lua.restore.startupMs
    )
  }

  // HTTPS: what TLS adds to a start, and to a request through nginx.
  const tls = results.tls
  if (tls !== undefined) {
    add(
      "tls.start.c1.vsPlain",
      `lua, HTTPS on: start p50 at c=1 ÷ the same without TLS (${ms(tls.plainStart.latency.p50)} ms), ${count(tls.routes)} routes`,
      "x",
      tls.startRatio
    )
    const r = tls.requests
    add("tls.request.keptAlive.vsPlain", `GET through nginx on a kept-alive connection, HTTPS ÷ plain (${ms(r.plainKeptAlive.p50)} ms), p50`, "x", round(r.tlsKeptAlive.p50 / r.plainKeptAlive.p50))
    add("tls.request.newConnection.p50", `GET through nginx on a new HTTPS connection (full handshake; plain: ${ms(r.plainNewConnection.p50)} ms), p50`, "ms", r.tlsFullHandshake.p50)
  }

  // Several edges: the start's cost, propagation to every edge, a restarted edge's catch-up.
  const edges = results.edges
  if (edges !== undefined) {
    const all = edges.remoteEdges + 1
    add("edges.start.c1.p50", `lua, ${all} edges: start p50 at c=1, ~${count(edges.routes)} routes`, "ms", edges.startAllEdges.latency.p50)
    add(
      "edges.start.c1.vsOneEdge",
      `lua: start p50 at c=1 with ${all} edges ÷ with the local edge alone (${ms(edges.startOneEdge.latency.p50)} ms), same server and routes`,
      "x",
      edges.startRatio
    )
    const p = edges.propagation
    const stale = `${p.staleAnswers} of ${count(p.answers)} answers after the 200 showed the old state`
    add("edges.propagation.start.p99", `lua, ${p.edges} edges: a start's 200 → every edge serving the org (fresh connections), p99`, "ms", p.start.p99, stale)
    add("edges.propagation.stop.p99", `lua, ${p.edges} edges: a stop's 200 → no edge serving the org, p99`, "ms", p.stop.p99, stale)
  }
  const catchUp = edges?.catchUp
  if (catchUp !== undefined) {
    add(
      "edges.catchUp10k.ms",
      `lua: a remote edge's nginx restarted with ${count(catchUp.routes)} active routes → \`ready\` again on GET /edges, every route in its table`,
      "ms",
      catchUp.ms,
      catchUp.routes < 10_000 ? `measured at ${count(catchUp.routes)} routes only` : undefined
    )
  }

  // The process: memory, start-up, shutdown.
  if (results.memory !== undefined) {
    add("memory.peakRss.largest", `server peak RSS (VmHWM) at ${count(results.memory.routes)} active allocations`, "MiB", results.memory.serverPeakRssMiB)
  }
  const startups = startupsOf(results)
  const viaNode = startups.filter((s) => s.via === "node")
  const firstNode = viaNode[0]
  if (firstNode !== undefined) {
    const rss = startups.map((s) => s.idleRssMiB)
    add(
      "memory.rssAfterStartup",
      "server RSS right after start-up (the run's first server)",
      "MiB",
      firstNode.idleRssMiB,
      `${Math.min(...rss)}-${Math.max(...rss)} MiB over the run's ${startups.length} servers`
    )
    add("startup.spawnToHealthy", `server spawn to the first /healthz 200, slowest of ${viaNode.length}`, "ms", Math.max(...viaNode.map((s) => s.ms)))
  }
  const npmStart = startups.find((s) => s.via === "npm start")
  if (npmStart !== undefined) add("startup.npmStart", "`npm start` (built) to the first /healthz 200, Postgres running", "ms", npmStart.ms)
  const shutdowns = startups.flatMap((s) => (s.shutdownMs === undefined ? [] : [s.shutdownMs]))
  if (shutdowns.length > 0) add("shutdown.graceful", `graceful shutdown (SIGTERM to exit), slowest of ${shutdowns.length}`, "ms", Math.max(...shutdowns))

  const other = otherProcessesShare(results)
  if (other !== undefined) add("cpu.otherProcesses", "CPU used by processes outside the benchmark, share of the machine over the run", "%", Math.round(other * 100))
  return figures
}
