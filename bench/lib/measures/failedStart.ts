// A failed start and its rollback: every sample gateway answers 500 to the handshake, then starts
// run one at a time (after one warm-up); each must answer 502 at the handshake step and leave its
// allocation rolled_back. From the journal: handshake failed → last undo; the undos' own times;
// the nginx-reload undo alone; and the client's 502 time.
import { Effect } from "effect"
import { randomUUID } from "node:crypto"
import { type AllocationView, expectStatus } from "../api.ts"
import { type BenchContext, checkAbort, reps } from "../context.ts"
import type { LatencyFigures, RollbackFigures } from "../results.ts"
import { median, now, round, sleep, summarize } from "../stats.ts"

/** How long a rollback that was still running when the 502 came may take to finish. */
const SETTLE_TIMEOUT_MS = 90_000

/** `reloadP50`: one raw nginx reload at the same route count, the cost a rollback is set against (NaN in lua mode). */
export const measureFailedStart = async (ctx: BenchContext, reloadP50: number): Promise<RollbackFigures> => {
  const { api } = ctx.fleet.require("the failed-start measure")
  const { run } = ctx
  const routes = ctx.allocations.size
  const n = reps(run, 10)
  run.log(`rollback latency at ${routes} active routes (${n} starts failing at handshake)`)
  await setHandshakes(ctx, "fail")
  const journalMs: Array<number> = []
  const undoSums: Array<number> = []
  const responses: Array<number> = []
  const unroutes: Array<number> = []
  try {
    for (let i = 0; i < n + 1; i++) {
      checkAbort(run)
      const answer = await api.start(randomUUID())
      if (answer.status !== 502 || answer.body?.step !== "handshake" || answer.body?.allocation_id === undefined) {
        throw new Error(`expected a 502 at handshake, got ${answer.status}: ${JSON.stringify(answer.body).slice(0, 400)}`)
      }
      const view = await settledRollback(ctx, answer.body.allocation_id)
      if (i === 0) continue // warm-up
      const failed = view.steps.find((entry) => entry.step === "handshake" && entry.event === "failed")
      const undoEvents = view.steps.filter((entry) => entry.event.startsWith("undo") || entry.event === "undone")
      const last = undoEvents.at(-1)
      if (failed === undefined || last === undefined) throw new Error(`incomplete journal for ${view.allocation_id}`)
      journalMs.push(Date.parse(last.at) - Date.parse(failed.at))
      undoSums.push(view.rollback.reduce((sum, outcome) => sum + (outcome.duration_ms ?? 0), 0))
      responses.push(answer.ms)
      const unroute = view.rollback.find((outcome) => outcome.step === "nginx-reload")
      if (unroute?.duration_ms !== undefined) unroutes.push(unroute.duration_ms)
    }
  } finally {
    await setHandshakes(ctx, "ok")
  }
  const journal = summarize(journalMs)
  const figures: RollbackFigures = {
    routes,
    n: journalMs.length,
    journal,
    undoSum: summarize(undoSums),
    response: summarize(responses),
    unrouteUndo: median(unroutes),
    reloadP50,
    ratioToReload: round(journal.p50 / reloadP50)
  }
  run.log(`  rollback p50 ${journal.p50} ms (journal), 502 answered p50 ${figures.response.p50} ms`)
  return figures
}

/** lua mode has no reload to compare with: the failed start's 502 against a successful start, both p50. */
export const failedStartVsStart = (failed: RollbackFigures, start: LatencyFigures) => ({
  startP50: start.latency.p50,
  ratioToStart: round(failed.response.p50 / start.latency.p50)
})

/** Every sample gateway's handshake behaviour, through its handle (they run in this process). */
const setHandshakes = (ctx: BenchContext, handshake: "ok" | "fail"): Promise<void> =>
  Effect.runPromise(Effect.forEach(ctx.outside.gateways, (gateway) => gateway.setBehaviour({ handshake }), { discard: true }))

/**
 * The failed start's allocation once rolled back. The 502 normally comes after the last undo; when
 * an undo timed out it comes first (the allocation still rolling_back, finished later): noted as a
 * failed call, and waited for, so the figure is still the time to a consistent state.
 */
const settledRollback = async (ctx: BenchContext, allocationId: string): Promise<AllocationView> => {
  const { api } = ctx.fleet.require("the failed-start measure")
  const read = async () => expectStatus(await api.allocation(allocationId), 200, "GET /allocations").body
  let view = await read()
  if (view.state === "rolling_back") ctx.errors.note("failed start", "502 answered while the allocation was still rolling_back")
  const giveUpAt = now() + SETTLE_TIMEOUT_MS
  while (view.state === "rolling_back" && now() < giveUpAt) {
    await sleep(250)
    view = await read()
  }
  if (view.state !== "rolled_back") throw new Error(`allocation ${view.allocation_id} is ${view.state}, not rolled_back`)
  return view
}
