// Memory: the server's RSS after each phase (the timeline), and at the end of the largest level its
// peak RSS (VmHWM) and current RSS, from /proc, with nginx's (master + workers).
import { type BenchContext, nginxMasterPid } from "../context.ts"
import type { MemoryFigures } from "../results.ts"
import { memoryOf, processTree } from "../server.ts"
import { round } from "../stats.ts"

/** Adds the running server's RSS now to the timeline, labelled with the phase that just ended. */
export const noteMemory = (ctx: BenchContext, phase: string): void => {
  const running = ctx.fleet.current
  const memory = running === undefined ? undefined : memoryOf(running.server.pid)
  if (running === undefined || memory === undefined) return
  ctx.memoryTimeline.push({
    phase,
    server: running.number,
    routes: ctx.allocations.size,
    rssMiB: round(memory.rssMiB),
    hwmMiB: round(memory.hwmMiB)
  })
}

/**
 * The running server's memory at the current route count (the largest level: it was started fresh
 * before the fill, so its peak covers it), nginx's, and `coalescePeakMiB`, the peak of the
 * coalesce server read at its shutdown.
 */
export const measureMemory = (ctx: BenchContext, coalescePeakMiB: number): MemoryFigures => {
  const { server } = ctx.fleet.require("the memory measure")
  const nginxMaster = nginxMasterPid(ctx)
  const nginxRss = (nginxMaster === undefined ? [] : processTree(nginxMaster))
    .reduce((sum, pid) => sum + (memoryOf(pid)?.rssMiB ?? 0), 0)
  const memory = memoryOf(server.pid)
  return {
    routes: ctx.allocations.size,
    serverPeakRssMiB: round(memory?.hwmMiB ?? Number.NaN),
    serverRssMiB: round(memory?.rssMiB ?? Number.NaN),
    serverIdleRssMiB: ctx.fleet.startups.at(-1)?.idleRssMiB,
    nginxRssMiB: round(nginxRss),
    serverAPeakRssMiB: round(coalescePeakMiB)
  }
}
