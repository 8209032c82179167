// CPU over the whole run, per component (server, nginx, PowerDNS, Postgres, the benchmark) and
// "other": what the rest of the machine used meanwhile (another job on the box skews every figure).
import { type BenchContext, cpuNow } from "../context.ts"
import { type CpuSnapshot, cpuDelta } from "../cpu.ts"
import { now, round } from "../stats.ts"

export const startWholeRunCpu = (ctx: BenchContext): { readonly cpu: CpuSnapshot; readonly at: number } => ({ cpu: cpuNow(ctx), at: now() })

/** `elapsedSeconds` counts from the start of the measures, as the budget does. */
export const measureWholeRunCpu = (ctx: BenchContext, start: { readonly cpu: CpuSnapshot }): Record<string, number> => ({
  ...cpuDelta(start.cpu, cpuNow(ctx)),
  elapsedSeconds: round((now() - ctx.run.startedAt) / 1000, 1)
})
