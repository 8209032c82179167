// Where a start and a stop go (lua, c=1, the routes the caller left: 0 in the run). Three servers
// of their own, each after a warm-up running N sequential cycles (start a new org, then stop it):
//
// - server P-cpu, as production runs it: its CPU over the cycles from /proc (user and system
//   apart), its CPU when idle (its background work), and Postgres's counters for the service's
//   database. The CPU figures come from this server: node's sampling profiler at 250 µs costs
//   about 0.16 s of CPU per second of wall time by itself (measured on an idle script: +0.27 s
//   user and +0.70 s system over 6 s), which would weigh on a figure of a few ms per cycle;
// - server P, run with `node --cpu-prof` (a sample every 250 µs): once it has stopped (gracefully:
//   node writes the profile at exit), the profile's samples taken during the cycles, their frames
//   mapped through the bundle's whole source map (profile/bundleMap.ts): self time by category and
//   by function, and the flame graph (flame.ts); its CPU is shown, to see the sampling's cost;
// - server P-traces, exporting its traces over OTLP/HTTP to a receiver in this process
//   (profile/otlp.ts): the cycles' spans by name (profile/spans.ts), i.e. where the wall time goes.
//   Its CPU is shown, not used: exporting costs CPU.
//
// Aligning the samples with the cycles: a .cpuprofile's timestamps are µs of CLOCK_MONOTONIC (V8's
// TimeTicks on Linux), the clock process.hrtime reads, the same in every process of the machine.
// So the window is taken with process.hrtime in this process, just before the first cycle's
// request and just after the last one's answer, and compared with the profile's timestamps as
// they are. Checked every run: the profile must end after the SIGTERM this process sent and before
// it saw the server exit; if not, nothing is attributed.
import { randomUUID } from "node:crypto"
import { existsSync, mkdirSync, statSync } from "node:fs"
import path from "node:path"
import type { ApiClient } from "../api.ts"
import { type BenchContext, checkAbort, cpuNow, reps } from "../context.ts"
import { cpuDelta, processCpuMs } from "../cpu.ts"
import { FLAME_MIN_SHARE, renderFlameGraph } from "../flame.ts"
import { type BundleMap, bundleSourceMap, readBundle } from "../profile/bundleMap.ts"
import { type CpuProfile, type Frame, mergedTree, readCpuProfile, resolveFrames, selfTimeBy, selfTimeInWindow } from "../profile/cpuProfile.ts"
import { startOtlpReceiver } from "../profile/otlp.ts"
import { type DatabaseStats, PGSTAT_IDLE_FLUSH_MS, readDatabaseStats, readDatabaseStatsOnceAlone } from "../profile/pgStats.ts"
import { spanBreakdown } from "../profile/spans.ts"
import { measureIoFloor } from "./ioFloor.ts"
import type { ProfileCategory, ProfileFigures, ProfileFunction, TraceBreakdown } from "../results.ts"
import { projectRoot } from "../stack.ts"
import { now, round, sleep, summarize } from "../stats.ts"

/** Cycles before the measured ones, on each server (JIT, connections, caches). */
export const PROFILE_WARMUP = 10
/** --cpu-prof-interval, µs (BENCH_PROFILE_INTERVAL_US: to see what the sampling itself costs). */
export const PROFILE_INTERVAL_US = Number(process.env.BENCH_PROFILE_INTERVAL_US ?? 250)
/** The flame graph's deepest frame (Effect's stacks run deep: the fiber runtime's loop under every call). */
export const PROFILE_DEPTH_CAP = 80
/** Functions in the top list. */
const TOP_FUNCTIONS = 25
/** After start-up: its first reconcile pass and lazy imports happen before the warm-up. */
const SETTLE_MS = 3000
/**
 * Server P's idle window after the warm-up, profiled like the cycles: its background work. A bit
 * over GATEWAY_HEALTH_INTERVAL_MS's default (10 s), so that it holds one health pass.
 */
const IDLE_WINDOW_MS = 10_500
/** Functions in the idle window's top list. */
const TOP_IDLE_FUNCTIONS = 12

const monotonicUs = (): number => Number(process.hrtime.bigint() / 1000n)
const epochMs = (): number => performance.timeOrigin + performance.now()

export interface ProfileOutcome {
  readonly figures: ProfileFigures
  /** The flame graph (SVG), when the samples could be attributed. */
  readonly flameSvg: string | undefined
  /** The raw .cpuprofile, in the run's temp directory (BENCH_KEEP_PROFILE=1 keeps a copy). */
  readonly cpuProfileFile: string | undefined
}

interface Cycles {
  readonly starts: Array<number>
  readonly stops: Array<number>
  readonly cycles: Array<number>
}

/** `count` sequential cycles: a start of a new org, then its stop (no journal read in between). */
const runCycles = async (ctx: BenchContext, api: ApiClient, count: number, phase: string): Promise<Cycles> => {
  const out: Cycles = { starts: [], stops: [], cycles: [] }
  let errors = 0
  for (let i = 0; i < count; i++) {
    checkAbort(ctx.run)
    const org = randomUUID()
    const began = now()
    const started = await ctx.allocations.start(api, org)
    if (started.status !== 200) {
      errors += 1
      ctx.errors.answer(phase, started)
      if (errors > 5) throw new Error(`${phase}: too many failed starts: ${JSON.stringify(started.body).slice(0, 400)}`)
      continue
    }
    const stopped = await ctx.allocations.stopWithRetry(api, org, `stop (${phase})`)
    out.starts.push(started.ms)
    out.stops.push(stopped.ms)
    out.cycles.push(now() - began)
  }
  return out
}

const perCycle = (value: number, cycles: number, digits = 2) => round(value / cycles, digits)

const pgDelta = (before: DatabaseStats, after: DatabaseStats, cycles: number, seconds: number): ProfileFigures["postgres"] => ({
  database: after.database,
  transactionsPerCycle: perCycle(after.commits + after.rollbacks - before.commits - before.rollbacks, cycles),
  rollbacksPerCycle: perCycle(after.rollbacks - before.rollbacks, cycles),
  tuplesPerCycle: {
    returned: perCycle(after.returned - before.returned, cycles, 1),
    fetched: perCycle(after.fetched - before.fetched, cycles, 1),
    inserted: perCycle(after.inserted - before.inserted, cycles, 1),
    updated: perCycle(after.updated - before.updated, cycles, 1),
    deleted: perCycle(after.deleted - before.deleted, cycles, 1)
  },
  windowSeconds: round(seconds, 1)
})

/**
 * A lua server of its own for one pass: launched, settled, warmed up, then `body`; stopped after
 * it, unless `body` stopped it itself (`stop`: where the pass needs the exit at a given moment).
 */
const onWarmServer = async <A>(
  ctx: BenchContext,
  launch: { readonly env?: Readonly<Record<string, string>>; readonly nodeArgs?: ReadonlyArray<string> },
  body: (server: { readonly pid: number }, api: ApiClient, stop: () => Promise<void>) => Promise<A>
): Promise<A> => {
  const { server, api } = await ctx.fleet.launch("lua", "node", launch.env ?? {}, launch.nodeArgs ?? [])
  let running = true
  const stop = async () => {
    if (!running) return
    running = false
    await ctx.fleet.shutdown()
  }
  try {
    await sleep(SETTLE_MS)
    await runCycles(ctx, api, PROFILE_WARMUP, "profile warm-up")
    return await body(server, api, stop)
  } finally {
    await stop()
  }
}

type ProcCpu = ReturnType<typeof processCpuMs>

/** CPU per cycle between two /proc readings (NaN where one could not be read). */
const cpuPerCycle = (before: ProcCpu, after: ProcCpu, count: number) => {
  const user = (after?.userMs ?? Number.NaN) - (before?.userMs ?? Number.NaN)
  const system = (after?.systemMs ?? Number.NaN) - (before?.systemMs ?? Number.NaN)
  return { userMsPerCycle: perCycle(user, count), systemMsPerCycle: perCycle(system, count), totalMsPerCycle: perCycle(user + system, count) }
}

/** Server P-cpu: the CPU per cycle as production runs the server, its idle CPU, and Postgres's counters. */
const cpuPass = (ctx: BenchContext, count: number) =>
  onWarmServer(ctx, {}, async (server, api, stop) => {
    // Postgres publishes a backend's counters up to 10 s late when it is idle (profile/pgStats.ts):
    // the warm-up's are all in once it has been idle that long. Meanwhile, the server's CPU when
    // no request comes: its background work (health checks, heartbeats, the edge watch).
    const idleFrom = processCpuMs(server.pid)
    const idleFromAt = now()
    await sleep(PGSTAT_IDLE_FLUSH_MS)
    const idleTo = processCpuMs(server.pid)
    const idleSeconds = (now() - idleFromAt) / 1000
    const pgBefore = await readDatabaseStats(ctx.stack.databaseUrl)
    const pgBeforeAt = now()
    const cpuBefore = cpuNow(ctx)
    const procBefore = processCpuMs(server.pid)
    const fromUs = monotonicUs()
    const timed = await runCycles(ctx, api, count, "profile (CPU)")
    const toUs = monotonicUs()
    const procAfter = processCpuMs(server.pid)
    const cpuAfter = cpuNow(ctx)
    // What Postgres had published by the cycles' end: less than after the exit (logged, to see the lag).
    const pgAtEnd = await readDatabaseStats(ctx.stack.databaseUrl)
    // Its backends exit with it and publish their counters.
    await stop()
    const pgAfter = await readDatabaseStatsOnceAlone(ctx.stack.databaseUrl)
    if (pgAfter.otherBackends > 0) ctx.errors.note("profile", `${pgAfter.otherBackends} other backends still connected when Postgres's counters were read`)
    const published = (stats: DatabaseStats) => stats.commits + stats.rollbacks - pgBefore.commits - pgBefore.rollbacks
    ctx.run.log(`  Postgres transactions published by the cycles' end: ${published(pgAtEnd)}; once the server's backends exited: ${published(pgAfter)}`)
    if (procBefore === undefined || procAfter === undefined || idleFrom === undefined || idleTo === undefined) {
      throw new Error("profile: the server's /proc/PID/stat could not be read")
    }
    const components = cpuDelta(cpuBefore, cpuAfter)
    const cpu = {
      ...cpuPerCycle(procBefore, procAfter, count),
      idle: {
        seconds: round(idleSeconds, 1),
        userMsPerSecond: round((idleTo.userMs - idleFrom.userMs) / idleSeconds, 2),
        systemMsPerSecond: round((idleTo.systemMs - idleFrom.systemMs) / idleSeconds, 2)
      },
      byComponentMsPerCycle: Object.fromEntries(Object.entries(components).map(([name, seconds]) => [name, perCycle(seconds * 1000, count)]))
    }
    ctx.run.log(
      `  server P-cpu: ${cpu.totalMsPerCycle} ms CPU per start+stop (user ${cpu.userMsPerCycle}, system ${cpu.systemMsPerCycle}); ` +
        `idle ${round(cpu.idle.userMsPerSecond + cpu.idle.systemMsPerSecond, 1)} ms/s; cycle p50 ${summarize(timed.cycles).p50} ms`
    )
    return { timed, windowMs: (toUs - fromUs) / 1000, cpu, postgres: pgDelta(pgBefore, pgAfter, count, (now() - pgBeforeAt) / 1000) }
  })

/** Server P: the same cycles under node's CPU profiler; the profile file, the window, its CPU. */
const profiledPass = (ctx: BenchContext, count: number, profileFile: string) =>
  onWarmServer(ctx, {
    nodeArgs: [
      "--cpu-prof",
      `--cpu-prof-dir=${path.dirname(profileFile)}`,
      `--cpu-prof-name=${path.basename(profileFile)}`,
      `--cpu-prof-interval=${PROFILE_INTERVAL_US}`
    ]
  }, async (server, api, stop) => {
    const idleFromUs = monotonicUs()
    await sleep(IDLE_WINDOW_MS)
    const idleToUs = monotonicUs()
    const procBefore = processCpuMs(server.pid)
    const fromUs = monotonicUs()
    const timed = await runCycles(ctx, api, count, "profile")
    const toUs = monotonicUs()
    const procAfter = processCpuMs(server.pid)
    // SIGTERM: the graceful shutdown, at whose end node writes the profile.
    const sigtermUs = monotonicUs()
    await stop()
    const exitUs = monotonicUs()
    return { timed, idleFromUs, idleToUs, fromUs, toUs, sigtermUs, exitUs, cpu: cpuPerCycle(procBefore, procAfter, count) }
  })

/**
 * dist/main.js's whole source map, made when the run begins, just after the fleet built dist/ if
 * it was stale: the in-memory build reads the sources as they are *now*, and another hand may be
 * changing src/ while the benchmark runs. Compared with dist/main.js now; server P must then run
 * that very file (checked by hash before and after it runs).
 */
export const prepareProfileBundle = async (ctx: BenchContext): Promise<BundleMap> => {
  const serverRoot = ctx.fleet.serverRoot
  const onDisk = ctx.fleet.command.runtime === "compiled" ? readBundle(serverRoot) : undefined
  const bundle = await bundleSourceMap(projectRoot, serverRoot, onDisk)
  ctx.run.log(`profile: ${bundle.note}`)
  return bundle
}

export const measureProfile = async (ctx: BenchContext, prepared: BundleMap): Promise<ProfileOutcome> => {
  const count = reps(ctx.run, 100)
  const routes = ctx.allocations.size
  ctx.run.log(`profile: where a start and a stop go (lua, c=1, ${routes} other routes, ${PROFILE_WARMUP} warm-up + ${count} cycles on each server)`)

  // ---- server P-cpu: CPU and Postgres, no profiler -------------------------------------------
  const plain = await cpuPass(ctx, count)

  // ---- server P, profiled ------------------------------------------------------------------
  // The map is the one of the bundle compared when the run began (prepareProfileBundle): the
  // server must run that very file, before and after.
  const serverRoot = ctx.fleet.serverRoot
  const sameBundle = () => prepared.hash === undefined || readBundle(serverRoot)?.hash === prepared.hash
  const changedBefore = !sameBundle()
  const profileDir = path.join(ctx.fleet.workDir, "profile")
  mkdirSync(profileDir, { recursive: true })
  const profileFile = path.join(profileDir, `server-P-${Date.now()}.cpuprofile`)
  const pass1 = await profiledPass(ctx, count, profileFile)
  const bundleChanged = changedBefore || !sameBundle()
  const bundle: BundleMap = bundleChanged
    ? { ...prepared, payload: undefined, note: "dist/main.js not attributed: it was rebuilt after the run began" }
    : prepared
  const mapping = bundle.note
  const { fromUs, toUs } = pass1
  const windowMs = (toUs - fromUs) / 1000
  ctx.run.log(
    `  server P (profiled): ${pass1.cpu.totalMsPerCycle} ms CPU per start+stop (user ${pass1.cpu.userMsPerCycle}, ` +
      `system ${pass1.cpu.systemMsPerCycle}); cycle p50 ${summarize(pass1.timed.cycles).p50} ms`
  )

  // ---- the profile, restricted to the cycles ---------------------------------------------------
  let profile: CpuProfile | undefined
  let alignment = ""
  if (!existsSync(profileFile)) alignment = `no profile was written (${profileFile}): the server did not exit cleanly`
  else {
    profile = readCpuProfile(profileFile)
    const endAfterSigtermMs = (profile.endTime - pass1.sigtermUs) / 1000
    const exitAfterEndMs = (pass1.exitUs - profile.endTime) / 1000
    const ok = profile.startTime <= pass1.idleFromUs && toUs <= profile.endTime && endAfterSigtermMs >= 0 && exitAfterEndMs >= 0
    alignment = (ok ? "" : "NOT ALIGNED, nothing attributed: ") +
      `the profile's timestamps and this process's process.hrtime are both CLOCK_MONOTONIC; the profile ended ` +
      `${round(endAfterSigtermMs, 1)} ms after the SIGTERM and ${round(exitAfterEndMs, 1)} ms before the exit was seen ` +
      `(${(statSync(profileFile).size / 1024 / 1024).toFixed(1)} MiB, ${profile.samples.length.toLocaleString("en")} samples in all)`
    if (!ok) profile = undefined
  }

  let categories: Array<ProfileCategory> = []
  let topFunctions: Array<ProfileFunction> = []
  let flameSvg: string | undefined
  let samples: ProfileFigures["samples"] = {
    mapping,
    attributed: false,
    alignment,
    windowMs: round(windowMs),
    cycle: summarize(pass1.timed.cycles),
    cpu: pass1.cpu,
    inWindow: 0,
    wallMsPerCycle: Number.NaN,
    busyMsPerCycle: Number.NaN,
    idleShare: Number.NaN,
    maxDepth: 0,
    depthCap: PROFILE_DEPTH_CAP
  }
  let background: ProfileFigures["background"]
  if (profile !== undefined) {
    const frames = resolveFrames(profile, bundle, serverRoot)
    const window = selfTimeInWindow(profile, fromUs, toUs)
    const cycles = attribute(frames, window.self, count, TOP_FUNCTIONS)
    const idleUs = window.totalUs - cycles.busyUs
    const busyUs = cycles.busyUs
    categories = cycles.categories.map(({ kind, msPer, name, shareOfBusy, us }) => ({
      name,
      kind,
      msPerCycle: msPer,
      shareOfWall: round(us / window.totalUs, 4),
      shareOfBusy
    }))
    topFunctions = cycles.functions.map(({ category, file, line, msPer, name, shareOfBusy }) => ({
      name,
      file,
      line,
      category,
      selfMsPerCycle: msPer,
      shareOfBusy
    }))
    // The idle window before the cycles, per second: the background a cycle shares the server with.
    const idleWindow = selfTimeInWindow(profile, pass1.idleFromUs, pass1.idleToUs)
    const seconds = idleWindow.totalUs / 1e6
    const idle = attribute(frames, idleWindow.self, seconds, TOP_IDLE_FUNCTIONS)
    background = {
      seconds: round(seconds, 1),
      busyMsPerSecond: round(idle.busyUs / 1000 / seconds, 2),
      categories: idle.categories.filter((c) => c.name !== "(idle)").map(({ name, msPer, shareOfBusy }) => ({ name, msPerSecond: msPer, shareOfBusy })),
      topFunctions: idle.functions.map(({ name, file, line, category, msPer, shareOfBusy }) => ({ name, file, line, category, selfMsPerSecond: msPer, shareOfBusy }))
    }
    // The flame graph: busy samples only.
    const busySelf = new Map([...window.self].filter(([id]) => frames.get(id)?.category !== "(idle)"))
    const tree = mergedTree(profile, frames, busySelf, PROFILE_DEPTH_CAP)
    samples = {
      ...samples,
      attributed: true,
      inWindow: window.samples,
      wallMsPerCycle: round(window.totalUs / 1000 / count, 3),
      busyMsPerCycle: round(busyUs / 1000 / count, 3),
      idleShare: round(idleUs / window.totalUs, 4),
      maxDepth: tree.maxDepth
    }
    flameSvg = renderFlameGraph(tree.root, {
      title: `Server P (lua, c=1, ${routes} other routes): ${count} starts and their stops, ` +
        `${ms1(samples.busyMsPerCycle)} ms of busy samples per cycle (idle, ${(samples.idleShare * 100).toFixed(1)}% of the window, left out)`,
      subtitle: `${window.samples.toLocaleString("en")} samples every ${PROFILE_INTERVAL_US} µs over the cycles (${Math.round(windowMs)} ms); ` +
        `server CPU (/proc) unprofiled ${ms1(plain.cpu.totalMsPerCycle)} ms per cycle, profiled ${ms1(pass1.cpu.totalMsPerCycle)}; ` +
        `stacks cut at ${PROFILE_DEPTH_CAP} frames (deepest ${tree.maxDepth}); frames < ${FLAME_MIN_SHARE * 100}% dropped`,
      cycles: count,
      depthCap: PROFILE_DEPTH_CAP
    })
  }

  // ---- server P-traces: the spans ------------------------------------------------------------
  const traces = await tracePass(ctx, count).catch(failedPart(ctx, "profile traces"))
  // ---- the same I/O in plain Node, counted from the trace pass ------------------------------------
  const ioFloor = "error" in traces
    ? { error: "no trace pass to count the I/O from" }
    : await measureIoFloor(ctx, traces).catch(failedPart(ctx, "profile io floor"))

  const figures: ProfileFigures = {
    routes,
    cycles: count,
    warmup: PROFILE_WARMUP,
    intervalUs: PROFILE_INTERVAL_US,
    start: summarize(plain.timed.starts),
    stop: summarize(plain.timed.stops),
    cycle: summarize(plain.timed.cycles),
    windowMs: round(plain.windowMs),
    cpu: plain.cpu,
    postgres: plain.postgres,
    samples,
    categories,
    topFunctions,
    ...(background === undefined ? {} : { background }),
    traces,
    ioFloor
  }
  return { figures, flameSvg, cpuProfileFile: existsSync(profileFile) ? profileFile : undefined }
}

const ms1 = (value: number) => value.toFixed(1)

/** A part of the measure that failed: counted with the run's errors, its figures say why. */
const failedPart = (ctx: BenchContext, phase: string) => (error: unknown): { readonly error: string } => {
  ctx.errors.exception(phase, error)
  return { error: (error as Error).message ?? String(error) }
}

/**
 * A window's self time by category and its top functions, in ms per `divisor` (cycles, or
 * seconds); shares of the busy time (the idle samples left out).
 */
const attribute = (frames: Map<number, Frame>, self: Map<number, number>, divisor: number, top: number) => {
  const by = selfTimeBy(frames, self)
  const idleUs = by.categories.get("(idle)")?.us ?? 0
  const totalUs = [...by.categories.values()].reduce((sum, c) => sum + c.us, 0)
  const busyUs = totalUs - idleUs
  const categories = [...by.categories.entries()]
    .map(([name, c]) => ({
      name,
      kind: c.kind,
      us: c.us,
      msPer: round(c.us / 1000 / divisor, 3),
      shareOfBusy: name === "(idle)" ? Number.NaN : round(c.us / busyUs, 4)
    }))
    .sort((a, b) => b.us - a.us)
  const functions = [...by.functions.values()]
    .filter((f) => f.frame.kind !== "state")
    .sort((a, b) => b.us - a.us)
    .slice(0, top)
    .map((f) => ({
      name: f.frame.name,
      file: f.frame.file,
      line: f.frame.line,
      category: f.frame.category,
      msPer: round(f.us / 1000 / divisor, 3),
      shareOfBusy: round(f.us / busyUs, 4)
    }))
  return { busyUs, categories, functions }
}

/** Pass 2: the same cycles on a server exporting its traces to a receiver here. */
const tracePass = async (ctx: BenchContext, count: number): Promise<TraceBreakdown> => {
  const receiver = await startOtlpReceiver()
  try {
    const env = {
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      // Metrics only at shutdown; no span dropped by a full queue (the SDK's default holds 2,048).
      OTEL_METRIC_EXPORT_INTERVAL: "3600000",
      OTEL_BSP_MAX_QUEUE_SIZE: "200000"
    }
    return await onWarmServer(ctx, { env }, async (server, api, stop) => {
      // A gap on each side, so that a few ms between this process's clock and the service's
      // cannot put a warm-up request in the window.
      await sleep(500)
      const procBefore = processCpuMs(server.pid)
      const fromMs = epochMs()
      const timed = await runCycles(ctx, api, count, "profile traces")
      const toMs = epochMs()
      const cpu = cpuPerCycle(procBefore, processCpuMs(server.pid), count)
      await sleep(500)
      // SIGTERM: the service flushes its batch of spans before it exits.
      await stop()
      const spans = receiver.spans()
      const breakdown = spanBreakdown(spans, fromMs - 250, toMs + 250, count)
      if (breakdown.requestTraces !== 2 * timed.cycles.length) {
        ctx.errors.note("profile traces", `${breakdown.requestTraces} request traces for ${timed.cycles.length} starts and stops`)
      }
      ctx.run.log(`  traces: ${spans.length} spans received in ${receiver.stats().traceRequests} requests; ${breakdown.spansPerCycle} spans per cycle`)
      return {
        cycles: count,
        cycle: summarize(timed.cycles),
        cpuMsPerCycle: { user: cpu.userMsPerCycle, system: cpu.systemMsPerCycle },
        ...breakdown,
        exportRequests: receiver.stats().traceRequests
      }
    })
  } finally {
    await receiver.close()
  }
}
