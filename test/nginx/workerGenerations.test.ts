// Which workers are of an older generation (src/nginx/workers.ts): reload mode waits for them to
// stop accepting before a change counts. Older generations started at least 100 ms (10 ticks)
// before the answering worker; one generation's own workers start within the time its forks take.
import { describe, expect, it } from "@effect/vitest"
import { olderGenerationAccepting, type WorkerView } from "../../src/nginx/workers.ts"

const worker = (startTime: number, shuttingDown = false): WorkerView => ({
  startTime,
  command: `nginx: worker process${shuttingDown ? " is shutting down" : ""}`
})

describe("worker generations", () => {
  it("the answering worker's own generation is never an older one, even when its forks took 70 ms", () => {
    // Four workers forked over 7 ticks (seen: 3 ticks and more under load, with 1,000 route files).
    expect(olderGenerationAccepting(1007, [worker(1000), worker(1002), worker(1005), worker(1007)])).toBe(false)
  })

  it("a worker of the previous generation (100 ms earlier) accepts until it is shutting down", () => {
    const previous = [worker(990), worker(991)]
    expect(olderGenerationAccepting(1001, [...previous, worker(1001)])).toBe(true)
    expect(olderGenerationAccepting(1001, [worker(990, true), worker(991, true), worker(1001)])).toBe(false)
    // Rounded to 9 ticks apart, still the previous generation.
    expect(olderGenerationAccepting(1000, [worker(991), worker(1000)])).toBe(true)
  })

  it("processes that are not workers (the cache loader, a worker that exited while looked at) do not count", () => {
    expect(olderGenerationAccepting(1000, [{ startTime: 10, command: "nginx: cache manager process" }, { startTime: 0, command: "" }]))
      .toBe(false)
  })
})
