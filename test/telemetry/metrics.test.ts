// GET /metrics through the real HttpApi on a socket, over the in-memory outside systems: the
// counters after one failed (handshake) and one successful start, in Prometheus text format.
// One test in this file: the Effect metric registry is global to the process.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, TestClock } from "effect"
import { randomUUID } from "node:crypto"
import { calls, clearFaults, setFault } from "../support/TestLayers.ts"
import { authorized, fetchApi, ServedApi, TestServices } from "./harness.ts"

interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

/** The samples of a Prometheus text exposition (comments skipped). */
const parse = (text: string): ReadonlyArray<Sample> =>
  text.split("\n").flatMap((line) => {
    if (line === "" || line.startsWith("#")) return []
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (match === null) throw new Error(`not a Prometheus sample line: ${line}`)
    const labels: Record<string, string> = {}
    for (const [, key, value] of (match[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[key!] = value!
    }
    return [{ name: match[1]!, labels, value: Number(match[3]) }]
  })

/** The value of the one sample of `name` whose labels include `labels` (undefined if none). */
const valueOf = (samples: ReadonlyArray<Sample>, name: string, labels: Readonly<Record<string, string>> = {}) => {
  const found = samples.filter((sample) =>
    sample.name === name && Object.entries(labels).every(([key, value]) => sample.labels[key] === value)
  )
  if (found.length > 1) throw new Error(`${found.length} samples of ${name} match ${JSON.stringify(labels)}`)
  return found[0]?.value
}

describe("GET /metrics", () => {
  it.live("after one failed (handshake) and one successful start: counters by step and outcome, pool gauges", () =>
    Effect.gen(function*() {
      yield* setFault("handshake.handshake", "fail")
      const failed = yield* fetchApi("/gateway/start", authorized({ organization_id: randomUUID() }))
      expect(failed.status).toBe(502)
      yield* clearFaults
      const started = yield* fetchApi("/gateway/start", authorized({ organization_id: randomUUID() }))
      expect(started.status).toBe(200)

      // No token needed.
      const response = yield* fetchApi("/metrics")
      expect(response.status).toBe(200)
      expect(response.contentType).toMatch(/^text\/plain; version=0\.0\.4/)
      expect(response.text).toContain("# TYPE gateway_allocator_starts_total counter")
      expect(response.text).toContain("# TYPE gateway_allocator_step_duration_ms histogram")
      expect(response.text).toContain("# TYPE gateway_allocator_pool_gateways_free gauge")
      const samples = parse(response.text)

      expect(valueOf(samples, "gateway_allocator_starts_total", { outcome: "success" })).toBe(1)
      expect(valueOf(samples, "gateway_allocator_starts_total", { outcome: "step_failed" })).toBe(1)
      expect(valueOf(samples, "gateway_allocator_starts_total", { outcome: "step_timed_out" })).toBeUndefined()

      expect(valueOf(samples, "gateway_allocator_step_failures_total", { step: "handshake", kind: "failed" })).toBe(1)
      expect(samples.filter((s) => s.name === "gateway_allocator_step_failures_total")).toHaveLength(1)

      for (const step of ["nginx-reload", "nginx-config", "dns", "allocate"]) {
        expect(valueOf(samples, "gateway_allocator_undos_total", { step, outcome: "done", actor: "request" }), step)
          .toBe(1)
      }
      expect(valueOf(samples, "gateway_allocator_undos_total", { step: "handshake" })).toBeUndefined()
      expect(valueOf(samples, "gateway_allocator_rollbacks_incomplete_total")).toBeUndefined()

      // Durations: both starts completed the first four steps; handshake completed once, failed once.
      for (const step of ["allocate", "dns", "nginx-config", "nginx-reload"]) {
        expect(valueOf(samples, "gateway_allocator_step_duration_ms_count", { step, outcome: "completed" }), step)
          .toBe(2)
      }
      expect(valueOf(samples, "gateway_allocator_step_duration_ms_count", { step: "handshake", outcome: "completed" }))
        .toBe(1)
      expect(valueOf(samples, "gateway_allocator_step_duration_ms_count", { step: "handshake", outcome: "failed" }))
        .toBe(1)
      expect(
        valueOf(samples, "gateway_allocator_step_duration_ms_bucket", { step: "allocate", outcome: "completed", le: "+Inf" })
      ).toBe(2)

      // Pool gauges, read from the pool at scrape time: one gateway allocated of two.
      expect(valueOf(samples, "gateway_allocator_pool_gateways_total")).toBe(2)
      expect(valueOf(samples, "gateway_allocator_pool_gateways_free")).toBe(1)
      expect(valueOf(samples, "gateway_allocator_pool_gateways_allocated")).toBe(1)

      // The resource names the service.
      expect(valueOf(samples, "target_info", { service_name: "gateway-allocator" })).toBe(1)
    }).pipe(Effect.provide(ServedApi.pipe(Layer.provideMerge(TestServices())))))

  // On the TestClock: the second passes when the test moves the clock.
  it.effect("scrapes do not query the pool each time: the gauges are read at most once a second", () =>
    Effect.gen(function*() {
      for (let i = 0; i < 10; i++) expect((yield* fetchApi("/metrics")).status).toBe(200)
      expect((yield* calls).filter((call) => call === "pool.stats")).toHaveLength(1)
      yield* TestClock.adjust("1100 millis")
      expect((yield* fetchApi("/metrics")).status).toBe(200)
      expect((yield* calls).filter((call) => call === "pool.stats")).toHaveLength(2)
    }).pipe(Effect.provide(ServedApi.pipe(Layer.provideMerge(TestServices())))))
})
