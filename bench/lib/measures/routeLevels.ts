// Start latency against the number of active routes: fill to a level through the API, then 20
// c=1 starts there (each stopped, so the count stays put); in reload mode also the raw costs at
// that count (a reload re-parses every route file). The largest level (10,000 by default) fills
// for as long as the time budget allows and creates the rest directly.
import { type BenchContext, reps } from "../context.ts"
import type { FillFigures, LatencyFigures, RawFigures, ServerMode } from "../results.ts"
import { sleep } from "../stats.ts"
import { createDirectly, fillTo, MAX_FILL_ERRORS } from "./fill.ts"
import { noteMemory } from "./memory.ts"
import { measureRawCalls } from "./rawCalls.ts"
import { measureStartLatency } from "./startLatency.ts"

/** What the largest level leaves for its own measures, the memory figures and the reports. */
const RESERVE_FOR_LAST_MEASURES_MS = 75_000

const budgetEnd = (ctx: BenchContext) => ctx.run.startedAt + ctx.run.budgetMs

export const measureLevel = async (
  ctx: BenchContext,
  level: number,
  mode: ServerMode
): Promise<{ readonly fill: FillFigures; readonly latency: LatencyFigures; readonly raw?: RawFigures }> => {
  const fill = await fillTo(ctx, level, budgetEnd(ctx))
  noteMemory(ctx, `filled to ${level}`)
  const latency = await measureStartLatency(ctx, reps(ctx.run, 20), mode)
  // A lua server's nginx file does not include routes/: the reload figures would measure nothing.
  if (mode === "lua") return { fill, latency }
  return { fill, latency, raw: await measureRawCalls(ctx, false) }
}

/**
 * The largest level (lua): the API fill stops about 75 s before the budget ends; the rest is then
 * created directly (Postgres rows, route table, PowerDNS records) and the fill says how many.
 * No reload-mode raw figures here: a lua server's nginx file does not include routes/.
 */
export const measureLargestLevel = async (ctx: BenchContext): Promise<{ readonly fill: FillFigures; readonly latency: LatencyFigures }> => {
  const target = ctx.run.maxRoutes
  const apiFill = await fillTo(ctx, target, budgetEnd(ctx) - RESERVE_FOR_LAST_MEASURES_MS)
  noteMemory(ctx, `API fill to ${ctx.allocations.size}`)
  let fill = apiFill
  if (apiFill.gaveUp && apiFill.errors < MAX_FILL_ERRORS) {
    const synthetic = await createDirectly(ctx, target - ctx.allocations.size)
    fill = { ...apiFill, synthetic }
    ctx.run.log(`  ${synthetic.count} created directly in ${(synthetic.ms / 1000).toFixed(1)} s; ${ctx.allocations.size} active`)
    // A short pause between the bulk creation and the timed starts.
    await sleep(500)
  }
  const latency = await measureStartLatency(ctx, reps(ctx.run, 20), "lua")
  noteMemory(ctx, `c=1 latency at ${ctx.allocations.size}`)
  return { fill, latency }
}
