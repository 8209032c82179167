// The trace pass's spans, by name: the cycles' requests (traces whose root is the service's HTTP
// server span, started during the cycles) per cycle, and the service's own background work (the
// other traces' spans started meanwhile) per second. A span's self time is its duration minus the
// time its child spans covered (their union, clipped to it): what it did itself, or waited for
// outside a child span (a Postgres round trip is a `sql.execute` span; an outside call has its own).
import type { SpanRow } from "../results.ts"
import { round } from "../stats.ts"
import type { ReceivedSpan } from "./otlp.ts"

/** @effect/platform's HTTP server span: `http.server POST`, ... */
const isRequestRoot = (span: ReceivedSpan) => /^http\.server\b/.test(span.name)

const union = (intervals: Array<readonly [number, number]>): number => {
  intervals.sort((a, b) => a[0] - b[0])
  let covered = 0
  let end = Number.NEGATIVE_INFINITY
  for (const [from, to] of intervals) {
    if (to <= end) continue
    covered += to - Math.max(from, end)
    end = to
  }
  return covered
}

const rows = (spans: ReadonlyArray<ReceivedSpan>, selfOf: (span: ReceivedSpan) => number, divisor: number): Array<SpanRow> => {
  const byName = new Map<string, { count: number; ms: number; self: number }>()
  for (const span of spans) {
    const row = byName.get(span.name) ?? { count: 0, ms: 0, self: 0 }
    row.count += 1
    row.ms += span.endMs - span.startMs
    row.self += selfOf(span)
    byName.set(span.name, row)
  }
  return [...byName.entries()]
    .map(([name, r]) => ({ name, countPerCycle: round(r.count / divisor, 2), msPerCycle: round(r.ms / divisor, 3), selfMsPerCycle: round(r.self / divisor, 3) }))
    .sort((a, b) => b.selfMsPerCycle - a.selfMsPerCycle || b.msPerCycle - a.msPerCycle)
}

export const spanBreakdown = (all: ReadonlyArray<ReceivedSpan>, fromMs: number, toMs: number, cycles: number) => {
  const byId = new Map(all.map((span) => [span.spanId, span]))
  const children = new Map<string, Array<ReceivedSpan>>()
  let orphans = 0
  for (const span of all) {
    if (span.parentSpanId === "") continue
    if (!byId.has(span.parentSpanId)) orphans += 1
    const list = children.get(span.parentSpanId) ?? []
    list.push(span)
    children.set(span.parentSpanId, list)
  }
  const selfOf = (span: ReceivedSpan) => {
    const covered = union(
      (children.get(span.spanId) ?? []).map((child) => [Math.max(child.startMs, span.startMs), Math.min(child.endMs, span.endMs)] as const)
        .filter(([from, to]) => to > from)
        .map(([from, to]) => [from, to] as [number, number])
    )
    return Math.max(0, span.endMs - span.startMs - covered)
  }
  const rootOf = (span: ReceivedSpan): ReceivedSpan => {
    let at = span
    for (let hops = 0; hops < 10_000; hops++) {
      const parent = at.parentSpanId === "" ? undefined : byId.get(at.parentSpanId)
      if (parent === undefined) return at
      at = parent
    }
    return at
  }
  const inWindow = (span: ReceivedSpan) => span.startMs >= fromMs && span.startMs <= toMs
  const requestTraces = new Set(all.filter((span) => span.parentSpanId === "" && isRequestRoot(span) && inWindow(span)).map((span) => span.traceId))
  const request: Array<ReceivedSpan> = []
  const background: Array<ReceivedSpan> = []
  for (const span of all) {
    if (requestTraces.has(span.traceId)) request.push(span)
    else if (inWindow(span) && !isRequestRoot(rootOf(span))) background.push(span)
  }
  const seconds = Math.max(0.001, (toMs - fromMs) / 1000)
  return {
    requestTraces: requestTraces.size,
    spansPerCycle: round(request.length / cycles, 1),
    bySpan: rows(request, selfOf, cycles),
    background: {
      spans: background.length,
      seconds: round(seconds, 2),
      bySpan: rows(background, selfOf, seconds).map((row) => ({ name: row.name, perSecond: row.countPerCycle, msPerSecond: row.msPerCycle }))
    },
    orphans
  }
}
