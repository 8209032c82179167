// Throughput at c=N: N workers start new orgs until 256 starts or 20 s, whichever comes first;
// starts/s = successful starts / time to the last answer. From nginx's error log: the SIGHUPs it
// received and the reconfigurations it ran; the CPU of every component; the journal's step
// medians over every 8th start. `stubbed`: the benchmark's proxy answers the PowerDNS writes.
import { randomUUID } from "node:crypto"
import { readFileSync } from "node:fs"
import os from "node:os"
import { type BenchContext, checkAbort, cpuNow } from "../context.ts"
import { cpuDelta } from "../cpu.ts"
import { journalBreakdown } from "../journal.ts"
import type { ServerMode, ThroughputFigures } from "../results.ts"
import { now, round, runWorkers, summarize } from "../stats.ts"

export const THROUGHPUT_MAX_STARTS = 256
export const THROUGHPUT_MAX_MS = 20_000
/** One start in this many has its journal read for the step medians (reading all would slow the case). */
const JOURNAL_SAMPLE_EVERY = 8

/** The case's figures, and the orgs it started: the caller stops them before the next case. */
export const measureThroughput = async (
  ctx: BenchContext,
  mode: ServerMode,
  concurrency: number,
  dns: "powerdns" | "stubbed" = "powerdns"
): Promise<{ readonly figures: ThroughputFigures; readonly orgs: Array<string> }> => {
  const { api } = ctx.fleet.require("a throughput case")
  const { run, allocations } = ctx
  const routes = allocations.size
  const phase = `throughput ${mode} c=${concurrency}`
  run.log(`throughput: ${mode}, c=${concurrency}, ${routes} active routes${dns === "stubbed" ? ", PowerDNS writes stubbed" : ""}`)
  ctx.proxy?.setStub(dns === "stubbed")
  const reloadsBefore = nginxReloadCounts(ctx.stack.nginx.errorLog)
  const orgs: Array<string> = []
  const latencies: Array<number> = []
  let issued = 0
  let errors = 0
  const sampled: Array<{ allocationId: string; ms: number }> = []
  const cpuBefore = cpuNow(ctx)
  const start = now()
  const endBy = start + THROUGHPUT_MAX_MS
  await runWorkers(
    concurrency,
    () => !run.signal.aborted && issued < THROUGHPUT_MAX_STARTS && now() < endBy,
    async () => {
      issued += 1
      const org = randomUUID()
      const answer = await allocations.start(api, org).catch((error: unknown) => {
        ctx.errors.exception(phase, error)
        return undefined
      })
      if (answer?.status === 200) {
        orgs.push(org)
        latencies.push(answer.ms)
        const allocationId = answer.body?.allocation_id
        if (orgs.length % JOURNAL_SAMPLE_EVERY === 0 && allocationId !== undefined) sampled.push({ allocationId, ms: answer.ms })
      } else {
        errors += 1
        if (answer !== undefined) ctx.errors.answer(phase, answer)
      }
    }
  )
  checkAbort(run)
  const elapsedMs = now() - start
  ctx.proxy?.setStub(false)
  const cpuSeconds = cpuDelta(cpuBefore, cpuNow(ctx))
  const reloadsAfter = nginxReloadCounts(ctx.stack.nginx.errorLog)
  const reloads = reloadsAfter.reconfigurations - reloadsBefore.reconfigurations
  const figures: ThroughputFigures = {
    mode,
    concurrency,
    dns,
    routes,
    starts: orgs.length,
    errors,
    elapsedMs: round(elapsedMs),
    startsPerSecond: round(orgs.length / (elapsedMs / 1000)),
    latency: summarize(latencies),
    reloads,
    reloadSignals: reloadsAfter.signals - reloadsBefore.signals,
    startsPerReload: round(reloads === 0 ? Number.NaN : orgs.length / reloads),
    cpuSeconds,
    cpuBusy: round((cpuSeconds.total ?? Number.NaN) / ((elapsedMs / 1000) * os.cpus().length)),
    breakdown: await journalBreakdown(api, sampled)
  }
  run.log(
    `  ${figures.starts} starts in ${(elapsedMs / 1000).toFixed(1)} s: ${figures.startsPerSecond}/s, ` +
      `p50 ${figures.latency.p50} ms, p99 ${figures.latency.p99} ms, ${reloads} reloads, ${errors} errors`
  )
  return { figures, orgs }
}

/**
 * From nginx's error log (notice level): SIGHUPs received (one per `nginx -s reload`) and
 * reconfigurations the master ran ("...: reconfiguring" on its own; the master merges SIGHUPs
 * that arrive while it is busy, so there can be fewer of these).
 */
const nginxReloadCounts = (errorLog: string): { signals: number; reconfigurations: number } => {
  try {
    const lines = readFileSync(errorLog, "utf8").split("\n")
    return {
      signals: lines.filter((line) => line.includes("(SIGHUP) received")).length,
      reconfigurations: lines.filter((line) => line.endsWith(": reconfiguring")).length
    }
  } catch {
    return { signals: Number.NaN, reconfigurations: Number.NaN }
  }
}

/** a.startsPerSecond / b.startsPerSecond for the first case of each that matches, if both ran. */
export const throughputRatio = (
  cases: ReadonlyArray<ThroughputFigures>,
  a: Pick<ThroughputFigures, "mode" | "concurrency" | "dns">,
  b: Pick<ThroughputFigures, "mode" | "concurrency" | "dns">
): number | undefined => {
  const find = (key: typeof a) => cases.find((t) => t.mode === key.mode && t.concurrency === key.concurrency && t.dns === key.dns)
  const [first, second] = [find(a), find(b)]
  return first === undefined || second === undefined ? undefined : round(first.startsPerSecond / second.startsPerSecond)
}
