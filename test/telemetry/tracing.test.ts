// The span tree of one start, exported through the real OpenTelemetry SDK (in-memory exporter),
// and the log lines of that start: trace ids and the start's annotations on each.
import { describe, expect, it } from "@effect/vitest"
import { SpanStatusCode } from "@opentelemetry/api"
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Effect, Layer } from "effect"
import { randomUUID } from "node:crypto"
import { Allocator } from "../../src/allocation/Allocator.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { layerTracer, ResourceLive } from "../../src/telemetry/Tracing.ts"
import { setFault } from "../support/TestLayers.ts"
import { captureLogs, startFailure, TestServices } from "./harness.ts"

const steps = ["allocate", "dns", "nginx-config", "nginx-reload", "handshake"]

const tracing = () => {
  const exporter = new InMemorySpanExporter()
  return { exporter, layer: layerTracer(new SimpleSpanProcessor(exporter)).pipe(Layer.provide(ResourceLive)) }
}

const startNanos = (span: ReadableSpan) => BigInt(span.startTime[0]) * 1_000_000_000n + BigInt(span.startTime[1])
const byStart = (spans: ReadonlyArray<ReadableSpan>) =>
  [...spans].sort((a, b) => (startNanos(a) < startNanos(b) ? -1 : startNanos(a) > startNanos(b) ? 1 : 0))

const childrenOf = (spans: ReadonlyArray<ReadableSpan>, parent: ReadableSpan) =>
  spans.filter((span) => span.parentSpanContext?.spanId === parent.spanContext().spanId)

describe("tracing", () => {
  it.live("a start failing at handshake: Allocation.start > five steps, then four undos in reverse order", () => {
    const { exporter, layer } = tracing()
    return Effect.gen(function*() {
      yield* setFault("handshake.handshake", "fail")
      const org = randomUUID() as OrganizationId
      const error = yield* startFailure(org)
      expect(error._tag).toBe("StepFailed")
      if (error._tag !== "StepFailed") return

      const spans = exporter.getFinishedSpans()
      const starts = spans.filter((span) => span.name === "Allocation.start")
      expect(starts).toHaveLength(1)
      const start = starts[0]!
      expect(start.status.code).toBe(SpanStatusCode.ERROR)
      expect(start.attributes).toMatchObject({
        organization_id: org,
        allocation_id: error.allocationId,
        gateway_id: expect.stringMatching(/^[0-9a-f-]{36}$/),
        outcome: "step_failed",
        "error.step": "handshake",
        "rollback.status": "complete"
      })
      const gatewayId = start.attributes["gateway_id"]

      const children = byStart(childrenOf(spans, start))
      expect(children.map((span) => span.name)).toEqual([
        ...steps,
        "undo nginx-reload",
        "undo nginx-config",
        "undo dns",
        "undo allocate"
      ])
      // Every child belongs to the same trace and carries the start's ids.
      for (const span of children) {
        expect(span.spanContext().traceId).toBe(start.spanContext().traceId)
        expect(span.attributes).toMatchObject({
          organization_id: org,
          allocation_id: error.allocationId,
          gateway_id: gatewayId
        })
      }

      const stepSpans = children.slice(0, 5)
      for (const span of stepSpans) expect(span.attributes["step"]).toBe(span.name)
      expect(stepSpans.map((span) => span.attributes["outcome"])).toEqual([
        "completed",
        "completed",
        "completed",
        "completed",
        "failed"
      ])
      expect(stepSpans.map((span) => span.status.code)).toEqual([
        SpanStatusCode.OK,
        SpanStatusCode.OK,
        SpanStatusCode.OK,
        SpanStatusCode.OK,
        SpanStatusCode.ERROR
      ])
      expect(stepSpans[4]!.status.message).toMatch(/HTTP 500/)

      const undoSpans = children.slice(5)
      expect(undoSpans.map((span) => [span.attributes["step"], span.attributes["undo.status"], span.attributes["outcome"]]))
        .toEqual([
          ["nginx-reload", "done", "done"],
          ["nginx-config", "done", "done"],
          ["dns", "done", "done"],
          ["allocate", "done", "done"]
        ])
      for (const span of undoSpans) expect(span.status.code).toBe(SpanStatusCode.OK)
      // The rollback ran after the failing step ended, and the start ended after the last undo.
      expect(startNanos(undoSpans[0]!)).toBeGreaterThanOrEqual(startNanos(stepSpans[4]!))
    }).pipe(Effect.provide(TestServices().pipe(Layer.provideMerge(layer))))
  })

  it.live("an undo that fails: error-free undo spans except that one, rollback incomplete on the start", () => {
    const { exporter, layer } = tracing()
    return Effect.gen(function*() {
      yield* setFault("handshake.handshake", "fail")
      yield* setFault("dns.remove", "fail")
      yield* startFailure(randomUUID() as OrganizationId)
      const spans = exporter.getFinishedSpans()
      const start = spans.find((span) => span.name === "Allocation.start")!
      expect(start.attributes["rollback.status"]).toBe("incomplete")
      const undoDns = spans.find((span) => span.name === "undo dns")!
      expect(undoDns.attributes["undo.status"]).toBe("failed")
      expect(undoDns.parentSpanContext?.spanId).toBe(start.spanContext().spanId)
    }).pipe(Effect.provide(TestServices().pipe(Layer.provideMerge(layer))))
  })

  it.live("a successful start: outcome success, the gateway id on the start span", () => {
    const { exporter, layer } = tracing()
    return Effect.gen(function*() {
      const started = yield* Effect.flatMap(Allocator, (allocator) => allocator.start(randomUUID() as OrganizationId))
      const start = exporter.getFinishedSpans().find((span) => span.name === "Allocation.start")!
      expect(start.status.code).toBe(SpanStatusCode.OK)
      expect(start.attributes).toMatchObject({ outcome: "success", gateway_id: started.gatewayId })
      expect(exporter.getFinishedSpans().filter((span) => span.name.startsWith("undo "))).toEqual([])
    }).pipe(Effect.provide(TestServices().pipe(Layer.provideMerge(layer))))
  })

  it.live("log lines of a start carry trace_id/span_id, organization_id, allocation_id, and step inside steps and undos", () => {
    const { exporter, layer } = tracing()
    const logs = captureLogs()
    return Effect.gen(function*() {
      yield* setFault("handshake.handshake", "fail")
      const org = randomUUID() as OrganizationId
      const error = yield* startFailure(org)
      if (error._tag !== "StepFailed") return expect.fail("expected StepFailed")

      const spans = exporter.getFinishedSpans()
      const start = spans.find((span) => span.name === "Allocation.start")!
      const spanById = new Map(spans.map((span) => [span.spanContext().spanId, span]))
      const ofStart = logs.lines.filter((line) => line.trace_id === start.spanContext().traceId)
      expect(ofStart.length).toBeGreaterThan(5)
      for (const line of ofStart) {
        expect(line).toMatchObject({ organization_id: org, allocation_id: error.allocationId })
        expect(line.span_id).toMatch(/^[0-9a-f]{16}$/)
        // A line logged inside a step's or an undo's span names that step.
        const span = spanById.get(line.span_id as string)
        const spanStep = span?.attributes["step"]
        if (span !== undefined && span !== start && spanStep !== undefined) expect(line.step).toBe(spanStep)
      }
      for (const step of ["nginx-reload", "nginx-config", "dns", "allocate"]) {
        // nginx-config's undo is done by nginx-reload's (the route removed, its withdrawal proven): it says so.
        const line = ofStart.find((l) => typeof l.message === "string" && l.message.startsWith(`undo of ${step} done`))
        expect(line, `undo of ${step}`).toMatchObject({ step, level: "INFO" })
        expect(spanById.get(line!.span_id as string)?.name).toBe(`undo ${step}`)
      }
      expect(ofStart.find((l) => typeof l.message === "string" && l.message.startsWith("undo of nginx-config"))?.message)
        .toBe("undo of nginx-config done: the nginx-reload undo removed the route and proved it withdrawn")
      expect(ofStart.find((l) => typeof l.message === "string" && l.message.startsWith("step handshake failed")))
        .toMatchObject({ step: "handshake", level: "WARN" })
      const summaries = ofStart.filter((l) => typeof l.message === "string" && l.message.startsWith("rollback "))
      expect(summaries.map((l) => l.message)).toEqual([
        "rollback complete: nginx-reload=done nginx-config=done dns=done allocate=done"
      ])
      expect(summaries[0]!.span_id).toBe(start.spanContext().spanId)
    }).pipe(Effect.provide(TestServices().pipe(Layer.provideMerge(layer), Layer.provide(logs.layer))))
  })
})
