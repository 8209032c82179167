// The orgs the benchmark holds active, across servers: the route-count levels, the fills and the
// pool check read its size, so every start and stop that succeeds goes through here.
import type { ApiAnswer, ApiClient, StartBody } from "./api.ts"
import type { ErrorTally } from "./errors.ts"
import type { PdnsProxy } from "./pdnsProxy.ts"
import { forEachConcurrent, sleep } from "./stats.ts"

export class Allocations {
  private readonly active = new Set<string>()

  constructor(private readonly errors: ErrorTally, private readonly proxy: PdnsProxy | undefined) {}

  get size(): number {
    return this.active.size
  }

  orgs(): Array<string> {
    return [...this.active]
  }

  async start(api: ApiClient, org: string): Promise<ApiAnswer<StartBody>> {
    const answer = await api.start(org)
    if (answer.status === 200) this.active.add(org)
    return answer
  }

  async stop(api: ApiClient, org: string): Promise<ApiAnswer<StartBody>> {
    const answer = await api.stop(org)
    if (answer.status === 200) this.active.delete(org)
    return answer
  }

  /** Allocations the benchmark created without the API (see measures/fill.ts). */
  addCreatedDirectly(orgs: ReadonlyArray<string>): void {
    for (const org of orgs) this.active.add(org)
  }

  /**
   * Stops, retried: a stop can fail (an undo timed out, nginx refused a reload); the retry finds
   * it settled. After a failed attempt the service may finish the stop on its own: the allocation
   * is then no longer active and a retry answers 404, which ends the stop here (the pool check at
   * the end of the run would see a gateway that never came back).
   */
  async stopWithRetry(api: ApiClient, org: string, phase: string): Promise<ApiAnswer<StartBody>> {
    for (let attempt = 1; attempt <= 4; attempt++) {
      const answer = await this.stop(api, org).catch((error: unknown) => {
        this.errors.exception(phase, error)
        return undefined
      })
      if (answer?.status === 200) return answer
      if (answer !== undefined) this.errors.answer(phase, answer)
      if (attempt > 1 && answer?.status === 404) {
        this.active.delete(org)
        this.errors.note(phase, "a retried stop answered 404: the service no longer lists the allocation as active")
        return answer
      }
      await sleep(200 * attempt)
    }
    throw new Error(`could not stop ${org} after 4 attempts (see the errors in the results)`)
  }

  /** Stops at c=64; orgs started with PowerDNS stubbed are stopped with it stubbed too (no record to delete). */
  async stopAll(api: ApiClient, orgs: ReadonlyArray<string>, stubbed = false): Promise<void> {
    this.proxy?.setStub(stubbed)
    try {
      await forEachConcurrent(orgs, 64, async (org) => {
        await this.stopWithRetry(api, org, "stop (c=64)")
      })
    } finally {
      this.proxy?.setStub(false)
    }
  }
}
