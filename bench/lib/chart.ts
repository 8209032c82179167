// The chart of a run (bench/results/latest.svg), drawn without a library: horizontal bars per
// panel, p50 as the bar and p99 as a tick, then the figures that have targets, met or not.
import { computeFigures } from "./figures.ts"
import type { Results } from "./results.ts"
import { round } from "./stats.ts"

const ms = (value: number) => (Number.isFinite(value) ? value.toFixed(value >= 100 ? 0 : 1) : "-")

interface Bar {
  readonly label: string
  readonly value: number
  readonly color: string
  /** A second, thinner mark (e.g. p99) drawn as a tick. */
  readonly tick?: number
  readonly text?: string
}

const escapeXml = (text: string) =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")

const COLORS = { start: "#3465a4", raw: "#8ae234", each: "#cc0000", coalesce: "#3465a4", lua: "#4e9a06", reload: "#f57900", other: "#75507b" }

/** One panel: a title and horizontal bars on a linear scale; returns the SVG fragment and its height. */
const panel = (x: number, y: number, width: number, title: string, bars: ReadonlyArray<Bar>, unit: string) => {
  const labelWidth = 250
  const barHeight = 18
  const gap = 6
  const finite = bars.flatMap((b) => [b.value, b.tick ?? 0]).filter(Number.isFinite)
  const max = Math.max(1e-9, ...finite)
  // Room on the right for the longest value text.
  const scale = (width - labelWidth - 300) / max
  const parts: Array<string> = [
    `<text x="${x}" y="${y + 14}" font-size="14" font-weight="bold">${escapeXml(title)}</text>`
  ]
  bars.forEach((bar, i) => {
    const top = y + 26 + i * (barHeight + gap)
    const w = Number.isFinite(bar.value) ? Math.max(1, bar.value * scale) : 0
    parts.push(
      `<text x="${x + labelWidth - 6}" y="${top + 13}" font-size="12" text-anchor="end">${escapeXml(bar.label)}</text>`,
      `<rect x="${x + labelWidth}" y="${top}" width="${w.toFixed(1)}" height="${barHeight}" fill="${bar.color}"/>`
    )
    if (bar.tick !== undefined && Number.isFinite(bar.tick)) {
      const tx = x + labelWidth + bar.tick * scale
      parts.push(
        `<line x1="${tx.toFixed(1)}" y1="${top - 2}" x2="${tx.toFixed(1)}" y2="${top + barHeight + 2}" stroke="#000" stroke-width="2"/>`
      )
    }
    const end = Math.max(w, bar.tick !== undefined && Number.isFinite(bar.tick) ? bar.tick * scale : 0)
    const text = bar.text ?? `${Number.isFinite(bar.value) ? round(bar.value, 1) : "-"} ${unit}`
    parts.push(`<text x="${(x + labelWidth + end + 6).toFixed(1)}" y="${top + 13}" font-size="12">${escapeXml(text)}</text>`)
  })
  return { svg: parts.join("\n"), height: 26 + bars.length * (barHeight + gap) + 20 }
}

export const renderSvg = (results: Results): string => {
  const width = 900
  const x = 20
  let y = 20
  const parts: Array<string> = []
  const add = (title: string, bars: ReadonlyArray<Bar>, unit: string) => {
    if (bars.length === 0) return
    const p = panel(x, y, width - 40, title, bars, unit)
    parts.push(p.svg)
    y += p.height
  }
  const luaC1 = results.lua?.startC1
  const luaRaw = results.lua?.raw
  if (luaC1 !== undefined && luaRaw !== undefined) {
    add("lua: start at c=1 vs its raw outside calls (p50 bar, p99 tick; ms)", [
      { label: "allocator start (API)", value: luaC1.latency.p50, tick: luaC1.latency.p99, color: COLORS.lua,
        text: `${ms(luaC1.latency.p50)} / ${ms(luaC1.latency.p99)} ms` },
      { label: "raw sum (PATCH+PUT+probe+health+hs)", value: luaC1.rawSumMs, color: COLORS.raw },
      { label: "  PowerDNS PATCH", value: luaRaw.pdnsPatch.p50, tick: luaRaw.pdnsPatch.p99, color: COLORS.other },
      { label: "  route API PUT", value: luaRaw.routePut.p50, tick: luaRaw.routePut.p99, color: COLORS.other },
      { label: "  route probe", value: luaRaw.probe.p50, tick: luaRaw.probe.p99, color: COLORS.other },
      { label: "  health + handshake", value: luaRaw.health.p50 + luaRaw.handshake.p50, color: COLORS.other }
    ], "ms")
  }
  const c1 = results.startC1
  const raw = results.raw
  if (c1 !== undefined && raw !== undefined) {
    add("reload (coalesce): start at c=1 vs its raw outside calls (p50 bar, p99 tick; ms)", [
      { label: "allocator start (API)", value: c1.latency.p50, tick: c1.latency.p99, color: COLORS.start,
        text: `${ms(c1.latency.p50)} / ${ms(c1.latency.p99)} ms` },
      { label: "raw sum (PATCH+reload+probe+health+hs)", value: c1.rawSumMs, color: COLORS.raw },
      { label: "  nginx -s reload", value: raw.reload.p50, tick: raw.reload.p99, color: COLORS.reload },
      { label: "  reload → served for sure", value: raw.reloadToLive.p50, tick: raw.reloadToLive.p99, color: COLORS.reload },
      { label: "  PowerDNS PATCH", value: raw.pdnsPatch.p50, tick: raw.pdnsPatch.p99, color: COLORS.other },
      { label: "  route probe", value: raw.probe.p50, tick: raw.probe.p99, color: COLORS.other },
      { label: "  health + handshake", value: (raw.health?.p50 ?? 0) + (raw.handshake?.p50 ?? 0), color: COLORS.other },
      { label: "  nginx -t (not in a start)", value: raw.nginxTest.p50, tick: raw.nginxTest.p99, color: "#999" }
    ], "ms")
  }
  add(
    "Throughput at ~1,000 routes (starts/s)",
    results.throughput.map((t) => ({
      label: `${t.mode}, c=${t.concurrency}${t.dns === "stubbed" ? ", DNS stubbed" : ""}`,
      value: t.startsPerSecond,
      color: COLORS[t.mode],
      text: `${t.startsPerSecond}/s (p50 ${ms(t.latency.p50)} ms, ${t.startsPerReload} starts per reconfiguration)`
    })),
    "/s"
  )
  const levels = [...(c1 === undefined ? [] : [c1]), ...results.latencyByRoutes]
  add(
    "Start latency at c=1 against active routes (p50 bar, p99 tick; ms)",
    levels.flatMap((l) => {
      const rawAt = results.rawByRoutes.find((r) => r.routes === l.routes)
      return [
        { label: `start, ${l.mode}, ${l.routes.toLocaleString("en")} routes`, value: l.latency.p50, tick: l.latency.p99, color: COLORS[l.mode],
          text: `${ms(l.latency.p50)} / ${ms(l.latency.p99)} ms` },
        ...(rawAt === undefined ? [] : [{
          label: `  reload → served, ${l.routes.toLocaleString("en")}`,
          value: rawAt.reloadToLive.p50,
          tick: rawAt.reloadToLive.p99,
          color: COLORS.reload
        }])
      ]
    }),
    "ms"
  )
  add(
    "reload (coalesce): rollback (handshake failed → last undo, p50 bar, p99 tick) vs one reload (ms)",
    results.rollback.flatMap((r) => [
      { label: `rollback, ${r.routes.toLocaleString("en")} routes`, value: r.journal.p50, tick: r.journal.p99, color: COLORS.each,
        text: `${ms(r.journal.p50)} / ${ms(r.journal.p99)} ms (${r.ratioToReload}x)` },
      { label: `  one reload, ${r.routes.toLocaleString("en")} routes`, value: r.reloadP50, color: COLORS.reload }
    ]),
    "ms"
  )
  const targeted = computeFigures(results).filter((f) => f.target !== undefined)
  if (targeted.length > 0) {
    parts.push(`<text x="${x}" y="${y + 14}" font-size="14" font-weight="bold">Targets</text>`)
    y += 22
    for (const f of targeted) {
      const limit = f.target === undefined ? "" : ` (target ${f.target.comparison} ${f.target.limit} ${f.unit})`
      parts.push(
        `<text x="${x}" y="${y + 13}" font-size="12" fill="${f.met === true ? "#4e9a06" : "#cc0000"}">` +
          `${f.met === true ? "MET" : "NOT MET"}  ${escapeXml(f.name)}: ${f.value} ${escapeXml(f.unit)}${escapeXml(limit)}</text>`
      )
      y += 18
    }
    y += 10
  }
  const m = results.machine
  parts.push(
    `<text x="${x}" y="${y + 12}" font-size="11" fill="#555">${escapeXml(
      `${results.startedAt.slice(0, 10)} · ${m.cpuModel} · ${m.cores} cores · node ${m.node} · nginx ${m.nginx} · PowerDNS ${m.pdns}`
    )}</text>`
  )
  y += 24
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y}" viewBox="0 0 ${width} ${y}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    ...parts,
    "</svg>",
    ""
  ].join("\n")
}
