// Where a start's time goes, from the allocation's journal (`GET /allocations/{id}`): the median
// duration_ms of each forward step, and the "rest" of the client-seen time (claim, journal, HTTP).
import { type AllocationView, type ApiClient, expectStatus } from "./api.ts"
import type { Breakdown } from "./results.ts"
import { median } from "./stats.ts"

const FORWARD_STEPS = ["dns", "nginx-config", "nginx-reload", "handshake"] as const
type ForwardStep = (typeof FORWARD_STEPS)[number]
const isForwardStep = (step: string): step is ForwardStep => (FORWARD_STEPS as ReadonlyArray<string>).includes(step)

export class StepTimes {
  private readonly steps: Record<ForwardStep, Array<number>> = { dns: [], "nginx-config": [], "nginx-reload": [], handshake: [] }
  private readonly rests: Array<number> = []

  /** One start: its journal and the time the client waited for it. */
  add(view: AllocationView, clientMs: number): void {
    let sum = 0
    for (const entry of view.steps) {
      if (entry.event === "completed" && entry.duration_ms !== null && isForwardStep(entry.step)) {
        this.steps[entry.step].push(entry.duration_ms)
        sum += entry.duration_ms
      }
    }
    this.rests.push(clientMs - sum)
  }

  breakdown(): Breakdown {
    return {
      dns: median(this.steps.dns),
      nginxConfig: median(this.steps["nginx-config"]),
      nginxReload: median(this.steps["nginx-reload"]),
      handshake: median(this.steps.handshake),
      rest: median(this.rests)
    }
  }
}

/** The breakdown over some allocations, their journals read now. */
export const journalBreakdown = async (
  api: ApiClient,
  samples: ReadonlyArray<{ readonly allocationId: string; readonly ms: number }>
): Promise<Breakdown> => {
  const times = new StepTimes()
  for (const sample of samples) {
    times.add(expectStatus(await api.allocation(sample.allocationId), 200, "GET /allocations").body, sample.ms)
  }
  return times.breakdown()
}
