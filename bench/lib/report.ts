// Targets of issue 4, the Markdown table (printed and written to latest.md) and the SVG chart.
import type { RawFigures, Results } from "./bench.ts"
import { round, type Summary } from "./stats.ts"

export const computeTargets = (results: Results): Results["targets"] => {
  const targets: Results["targets"] = [...luaTargets(results)]
  const c64 = results.throughputRatio.c64
  if (c64 !== undefined) {
    targets.push({
      id: "throughput",
      description: "throughput at c=64 with 1,000 routes: coalesce >= 10x each",
      value: c64,
      limit: 10,
      unit: "x",
      pass: c64 >= 10
    })
  }
  if (results.startC1 !== undefined) {
    targets.push({
      id: "start-latency",
      description: "start latency p50 at c=1 <= 1.2x the raw outside calls of one start",
      value: results.startC1.ratio,
      limit: 1.2,
      unit: "x",
      pass: results.startC1.ratio <= 1.2
    })
  }
  const levels = results.latencyByRoutes.filter((l) => l.mode !== "lua")
  const small = levels.find((l) => l.routes >= 100 && l.routes < 1000)
  const large = levels.at(-1)
  if (small !== undefined && large !== undefined && large !== small) {
    const ratio = round(large.latency.p50 / small.latency.p50)
    targets.push({
      id: "latency-at-scale",
      description: `start latency p50 at ${large.routes.toLocaleString("en")} routes <= 3x at ${small.routes} routes`,
      value: ratio,
      limit: 3,
      unit: "x",
      pass: ratio <= 3,
      ...(large.routes < 10_000 ? { note: `only ${large.routes} routes were reached` } : {})
    })
  }
  const rollback = results.rollback.at(-1)
  if (rollback !== undefined) {
    targets.push({
      id: "rollback",
      description: `rollback latency p50 (journal) at ${rollback.routes.toLocaleString("en")} routes <= 1.5x one reload`,
      value: rollback.ratioToReload,
      limit: 1.5,
      unit: "x",
      pass: rollback.ratioToReload <= 1.5
    })
  }
  // Issue 12 (lean in production) tightened issue 4's < 200 MiB.
  const rss = results.memory?.serverPeakRssMiB
  if (typeof rss === "number") {
    targets.push({
      id: "memory",
      description: `server peak RSS (VmHWM) at ${Number(results.memory?.routes).toLocaleString("en")} active allocations <= 150 MiB`,
      value: rss,
      limit: 150,
      unit: "MiB",
      pass: rss <= 150
    })
  }
  const startups = startupsOf(results)
  const idle = startups.find((s) => s.via === "node")?.idleRssMiB
  if (idle !== undefined) {
    targets.push({ id: "idle-memory", description: "server RSS right after start-up <= 100 MiB", value: idle, limit: 100, unit: "MiB", pass: idle <= 100 })
  }
  const npmStart = startups.find((s) => s.via === "npm start")
  if (npmStart !== undefined) {
    targets.push({
      id: "startup",
      description: "`npm start` (built) to the first /healthz 200, Postgres running, <= 1.5 s",
      value: npmStart.ms,
      limit: 1500,
      unit: "ms",
      pass: npmStart.ms <= 1500
    })
  }
  return targets
}

/** Issue 11's targets: NGINX_ROUTING=lua, all from the same run. */
const luaTargets = (results: Results): Results["targets"] => {
  const targets: Results["targets"] = []
  const lua = results.lua
  if (lua?.startC1 !== undefined) {
    targets.push({
      id: "lua-start-latency",
      description: "lua: start p50 at c=1 <= 1.3x the raw sum of its outside calls (PATCH + route PUT + probe + health + handshake)",
      value: lua.startC1.ratio,
      limit: 1.3,
      unit: "x",
      pass: lua.startC1.ratio <= 1.3
    })
  }
  if (lua?.rollback !== undefined) {
    targets.push({
      id: "lua-rollback",
      description: "lua: a failed start (handshake refused, full rollback) p50 <= 1.3x a successful start",
      value: lua.rollback.ratioToStart,
      limit: 1.3,
      unit: "x",
      pass: lua.rollback.ratioToStart <= 1.3
    })
  }
  const c64 = results.throughputRatio["lua vs coalesce c64"]
  if (c64 !== undefined) {
    targets.push({
      id: "lua-throughput",
      description: "lua: throughput at c=64 with ~1,000 routes >= 2x reload/coalesce",
      value: c64,
      limit: 2,
      unit: "x",
      pass: c64 >= 2
    })
  }
  const levels = results.latencyByRoutes.filter((l) => l.mode === "lua")
  const small = levels.find((l) => l.routes >= 100 && l.routes < 1000)
  const large = levels.at(-1)
  if (small !== undefined && large !== undefined && large !== small) {
    const ratio = round(large.latency.p50 / small.latency.p50)
    targets.push({
      id: "lua-latency-at-scale",
      description: `lua: start p50 at ${large.routes.toLocaleString("en")} routes <= 1.2x at ${small.routes}`,
      value: ratio,
      limit: 1.2,
      unit: "x",
      pass: ratio <= 1.2,
      ...(large.routes < 10_000 ? { note: `only ${large.routes} routes were reached` } : {})
    })
  }
  if (lua?.propagation !== undefined) {
    for (const [what, summary] of [["write", lua.propagation.put], ["removal", lua.propagation.remove]] as const) {
      targets.push({
        id: `lua-propagation-${what}`,
        description: `lua: from a route ${what} returning to every worker serving it (4 workers, ${lua.propagation.connectionsPerTrial} fresh connections) p99 <= 5 ms`,
        value: summary.p99,
        limit: 5,
        unit: "ms",
        pass: summary.p99 <= 5,
        note: `${lua.propagation.staleAnswers} answers showed the old state after the ${what} returned`
      })
    }
  }
  const kept = results.keptAlive.find((k) => k.mode === "lua")
  if (kept !== undefined) {
    targets.push({
      id: "lua-bystander",
      description: `lua: a bystander org's kept-alive requests broken during ${kept.operations} starts and stops of other orgs = 0`,
      value: kept.broken,
      limit: 0,
      unit: "requests",
      pass: kept.broken === 0
    })
  }
  return targets
}

interface Startup {
  readonly mode: string
  readonly via?: string
  readonly ms: number
  readonly idleRssMiB: number
  readonly shutdownMs?: number
}
const startupsOf = (results: Results): ReadonlyArray<Startup> =>
  ((results.setup.serverStartups ?? []) as ReadonlyArray<Startup>).map((s) => ({ ...s, via: s.via ?? "node" }))

const ms = (value: number) => (Number.isFinite(value) ? value.toFixed(value >= 100 ? 0 : 1) : "-")
const pp = (s: Summary | undefined) => (s === undefined ? "- | -" : `${ms(s.p50)} | ${ms(s.p99)}`)

/** A note when other processes used a noticeable share of the CPU during the run. */
const foreignLoad = (results: Results): string => {
  const cpu = results.setup.cpuSecondsWholeRun as Record<string, number> | undefined
  if (cpu?.other === undefined || cpu.elapsedSeconds === undefined) return ""
  const share = cpu.other / (cpu.elapsedSeconds * Number(results.machine.cores ?? 1))
  return ` Processes outside the benchmark used ${Math.round(share * 100)}% of the machine's CPU during the run` +
    (share > 0.05 ? " (**figures skewed where the \"other\" columns are not 0**)." : ".")
}

export const renderMarkdown = (results: Results): string => {
  const lines: Array<string> = []
  const m = results.machine
  lines.push(
    `Benchmark run of ${results.startedAt.slice(0, 19).replace("T", " ")} UTC, ${results.durationSeconds ?? "?"} s in all` +
      `${results.complete ? "" : " (INCOMPLETE)"}; ${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB; ` +
      `node ${m.node}, nginx ${m.nginx}, PowerDNS ${m.pdns}, PostgreSQL ${m.postgres}. ` +
      `Server from the ${results.project.source} at commit ${String(results.project.commit).slice(0, 10)}` +
      `${results.project.srcDirty ? " (+ uncommitted changes in src/)" : ""}.` +
      ` PowerDNS proxy: ${results.settings.pdnsProxy}.` + foreignLoad(results),
    ""
  )

  if (results.lua !== undefined) {
    const lua = results.lua
    const c1 = lua.startC1
    lines.push(
      "**NGINX_ROUTING=lua** (routes in nginx's shared memory, no reload; raw calls made directly, idle service; ms):",
      "",
      "| call | n | p50 | p99 |",
      "|---|---:|---:|---:|",
      `| PowerDNS PATCH (A rrset, REPLACE) | ${lua.raw.pdnsPatch.n} | ${pp(lua.raw.pdnsPatch)} |`,
      `| route API PUT | ${lua.raw.routePut.n} | ${pp(lua.raw.routePut)} |`,
      `| route API DELETE | ${lua.raw.routeDelete.n} | ${pp(lua.raw.routeDelete)} |`,
      `| route probe through nginx (fresh connection) | ${lua.raw.probe.n} | ${pp(lua.raw.probe)} |`,
      `| gateway GET health | ${lua.raw.health.n} | ${pp(lua.raw.health)} |`,
      `| gateway POST handshake | ${lua.raw.handshake.n} | ${pp(lua.raw.handshake)} |`,
      ""
    )
    if (c1 !== undefined) {
      const b = c1.breakdown
      lines.push(
        `Start at c=1 (${c1.latency.n} starts, 0 other routes): p50 ${ms(c1.latency.p50)} ms, p99 ${ms(c1.latency.p99)} ms; raw sum ` +
          `(PATCH + PUT + probe + health + handshake, p50s) ${ms(c1.rawSumMs)} ms: **${c1.ratio}x**. Journal medians: dns ${ms(b.dns)}, ` +
          `nginx-config ${ms(b.nginxConfig)}, nginx-reload (the proof) ${ms(b.nginxReload)}, handshake ${ms(b.handshake)}, rest ${ms(b.rest)} ms. ` +
          `Stop p50 ${ms(c1.stop.p50)} ms.`,
        ""
      )
    }
    if (lua.rollback !== undefined) {
      lines.push(
        `Failed start (handshake refused, every undo run): 502 answered p50 ${ms(lua.rollback.response.p50)} ms, ` +
          `p99 ${ms(lua.rollback.response.p99)} ms (**${lua.rollback.ratioToStart}x** a successful start); rollback in the journal p50 ` +
          `${ms(lua.rollback.journal.p50)} ms, of which the nginx-reload undo (DELETE + proof) ${ms(lua.rollback.unrouteUndo)} ms.`,
        ""
      )
    }
    if (lua.propagation !== undefined) {
      const pr = lua.propagation
      lines.push(
        `Propagation (${pr.trials} writes and removals, ${pr.connectionsPerTrial} fresh connections after each, ${pr.workersSeen} workers seen): ` +
          `every worker served a write within p50 ${ms(pr.put.p50)} / p99 ${ms(pr.put.p99)} ms of its answer, and no longer served a ` +
          `removal within p50 ${ms(pr.remove.p50)} / p99 ${ms(pr.remove.p99)} ms; **${pr.staleAnswers}** answers showed the old state after ` +
          `the change returned (the figure is the slowest worker's first answer: how nginx spreads fresh connections, not a delay of the table).`,
        ""
      )
    }
    if (lua.restore !== undefined) {
      lines.push(
        `nginx restarted with ${lua.restore.routes.toLocaleString("en")} active allocations: the next server was up, with the table ` +
          `refilled in one request, ${ms(lua.restore.startupMs)} ms after it was spawned.`,
        ""
      )
    }
  }

  if (results.keptAlive.length > 0) {
    lines.push(
      "**A bystander org's kept-alive connections** (8 clients, a request every ~5 ms each) while other orgs start and stop:",
      "",
      "| mode | starts + stops | requests | broken | on reused connections |",
      "|---|---:|---:|---:|---:|",
      ...results.keptAlive.map((k) => `| ${k.mode} | ${k.operations} | ${k.requests} | ${k.broken} | ${k.reused} |`),
      ""
    )
  }

  if (results.raw !== undefined) {
    const raw = results.raw
    lines.push(
      "**Raw outside calls** (made directly, idle service, 0 active routes; ms):",
      "",
      "| call | n | p50 | p99 |",
      "|---|---:|---:|---:|",
      `| \`nginx -s reload -c <main>\` | ${raw.reload.n} | ${pp(raw.reload)} |`,
      `| \`nginx -t -c <main>\` (not part of a start) | ${raw.nginxTest.n} | ${pp(raw.nginxTest)} |`,
      `| PowerDNS PATCH (A rrset, REPLACE) | ${raw.pdnsPatch.n} | ${pp(raw.pdnsPatch)} |`,
      `| route probe through nginx (fresh connection) | ${raw.probe.n} | ${pp(raw.probe)} |`,
      `| gateway GET health | ${raw.health?.n ?? "-"} | ${pp(raw.health)} |`,
      `| gateway POST handshake | ${raw.handshake?.n ?? "-"} | ${pp(raw.handshake)} |`,
      ...(raw.pdnsPatchBurst === undefined ? [] : [
        `| PowerDNS PATCH burst: ${raw.pdnsPatchBurst.requests} at c=${raw.pdnsPatchBurst.concurrency}, straight to PowerDNS | ` +
        `${raw.pdnsPatchBurst.requests} | **${raw.pdnsPatchBurst.failed} failed** | ${ms(raw.pdnsPatchBurst.ms)} in all |`
      ]),
      `| reload, then probe until nginx serves the change (1st answer) | ${raw.reloadToFirstAnswer.n} | ${pp(raw.reloadToFirstAnswer)} |`,
      `| reload, then until no older nginx worker accepts any more (served for sure) | ${raw.reloadToLive.n} | ${pp(raw.reloadToLive)} |`,
      ""
    )
  }

  if (results.startC1 !== undefined) {
    const c1 = results.startC1
    const b = c1.breakdown
    lines.push(
      `**Start latency, c=1** (${c1.latency.n} starts, each followed by an untimed stop, 0 other routes): ` +
        `p50 ${ms(c1.latency.p50)} ms, p99 ${ms(c1.latency.p99)} ms. ` +
        `Raw sum of one start's outside calls (PATCH + reload + probe + health + handshake, p50s): ${ms(c1.rawSumMs)} ms; ` +
        `ratio **${c1.ratio}x** (p99 vs p99 sum: ${c1.ratioP99}x). With "reload → served" in place of the bare reload ` +
        `the sum is ${ms(c1.rawSumServedMs)} ms and the ratio ${c1.ratioToServed}x. Stop p50 ${ms(c1.stop.p50)} ms.`,
      "",
      `Where a start's time goes (journal duration_ms medians): dns ${ms(b.dns)}, nginx-config ${ms(b.nginxConfig)}, ` +
        `nginx-reload ${ms(b.nginxReload)} (reload + probes until the route is served), handshake ${ms(b.handshake)}, ` +
        `rest (claim, journal writes, HTTP) ${ms(b.rest)} ms.`,
      ""
    )
  }

  if (results.throughput.length > 0) {
    lines.push(
      "**Throughput** (bounded to 256 starts or 20 s per case, new orgs, with ~1,000 active routes):",
      "",
      "| mode | concurrency | PowerDNS writes | routes | starts | errors | starts/s | p50 ms | p99 ms | `nginx -s reload` runs | nginx reconfigurations | starts per reconfiguration | CPU busy (2 cores) |",
      "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for (const t of results.throughput) {
      lines.push(
        `| ${t.mode} | ${t.concurrency} | ${t.dns === "stubbed" ? "stubbed (nginx-only)" : "real"} | ${t.routes} | ${t.starts} | ${t.errors} | ${t.startsPerSecond} | ${pp(t.latency)} | ` +
          `${t.reloadSignals ?? "-"} | ${t.reloads} | ${t.startsPerReload} | ${Math.round(t.cpuBusy * 100)}% |`
      )
    }
    lines.push(
      "",
      "Where a start's time goes under load (journal medians, ms) and where the CPU went (CPU seconds during the case):",
      "",
      "| mode | c | PowerDNS | dns | nginx-config | nginx-reload | handshake | rest | CPU s: server (+ its `nginx -s reload` children) | nginx | PowerDNS | Postgres | bench | other processes |",
      "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for (const t of results.throughput) {
      const b = t.breakdown
      const c = t.cpuSeconds
      lines.push(
        `| ${t.mode} | ${t.concurrency} | ${t.dns === "stubbed" ? "stubbed" : "real"} | ${ms(b.dns)} | ${ms(b.nginxConfig)} | ${ms(b.nginxReload)} | ${ms(b.handshake)} | ${ms(b.rest)} | ` +
          `${c.server ?? "-"} | ${c.nginx ?? "-"} | ${c.powerdns ?? "-"} | ${c.postgres ?? "-"} | ${c.bench ?? "-"} | ${c.other ?? "-"} |`
      )
    }
    const ratios = Object.entries(results.throughputRatio).map(([k, v]) => `${k.replace(/^c/, "c=")}: ${v}x`).join(", ")
    lines.push("", `coalesce / each: ${ratios}.`, "")
  }

  if (results.latencyByRoutes.length > 0) {
    lines.push(
      "**Latency against active routes** (c=1, coalesce; ms; raw costs measured at the same count):",
      "",
      "| active routes | starts | start p50 | start p99 | nginx-reload step p50 | reload p50 | reload→served p50 | `nginx -t` p50 | PATCH p50 | probe p50 | other processes' CPU per start+stop |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    const rawAt = (routes: number): RawFigures | undefined => results.rawByRoutes.find((r) => r.routes === routes)
    const c1 = results.startC1
    const rows = [...(c1 === undefined ? [] : [c1]), ...results.latencyByRoutes]
    for (const l of rows) {
      const raw = rawAt(l.routes)
      lines.push(
        `| ${l.routes.toLocaleString("en")} | ${l.latency.n} | ${pp(l.latency)} | ${ms(l.breakdown.nginxReload)} | ` +
          `${ms(raw?.reload.p50 ?? Number.NaN)} | ${ms(raw?.reloadToLive.p50 ?? Number.NaN)} | ` +
          `${ms(raw?.nginxTest.p50 ?? Number.NaN)} | ${ms(raw?.pdnsPatch.p50 ?? Number.NaN)} | ${ms(raw?.probe.p50 ?? Number.NaN)} | ` +
          `${l.cpuPerStartAndStopMs?.other ?? "-"} |`
      )
    }
    lines.push("")
  }

  if (results.fills.length > 0) {
    lines.push(
      "**Fills** (starts through the API at c=64, coalesce): " +
        results.fills
          .map((f) =>
            `${f.from.toLocaleString("en")} → ${f.reached.toLocaleString("en")} in ${(f.ms / 1000).toFixed(1)} s ` +
            `(${f.startsPerSecond} starts/s${f.errors > 0 ? `, ${f.errors} errors` : ""}${f.gaveUp ? ", stopped by the time budget" : ""})` +
            (f.synthetic === undefined
              ? ""
              : `, then ${f.synthetic.count.toLocaleString("en")} more created directly (Postgres rows, route files, ` +
                `PowerDNS records, one reload) in ${(f.synthetic.ms / 1000).toFixed(1)} s`)
          )
          .join("; ") + ".",
      ""
    )
  }

  if (results.rollback.length > 0) {
    lines.push(
      "**Rollback** (start failing at handshake: gateway answers 500; ms):",
      "",
      "| active routes | n | handshake failed → last undo (journal) p50 | p99 | Σ undo durations p50 | nginx-reload undo p50 | 502 answer p50 | one reload p50 | ratio |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for (const r of results.rollback) {
      lines.push(
        `| ${r.routes.toLocaleString("en")} | ${r.n} | ${ms(r.journal.p50)} | ${ms(r.journal.p99)} | ${ms(r.undoSum.p50)} | ` +
          `${ms(r.unrouteUndo)} | ${ms(r.response.p50)} | ${ms(r.reloadP50)} | ${r.ratioToReload}x |`
      )
    }
    lines.push("")
  }

  if (results.memory !== undefined) {
    const mem = results.memory
    lines.push(
      `**Memory** at ${Number(mem.routes).toLocaleString("en")} active allocations: server peak RSS (VmHWM) ` +
        `${mem.serverPeakRssMiB} MiB, current RSS ${mem.serverRssMiB} MiB, RSS right after start-up ${mem.serverIdleRssMiB} MiB; ` +
        `nginx master + workers RSS ${mem.nginxRssMiB} MiB ` +
        `(the first server, at ~1,000 routes, peaked at ${mem.serverAPeakRssMiB} MiB).`,
      ""
    )
  }

  const startups = startupsOf(results)
  if (startups.length > 0) {
    lines.push(
      `**Start-up and shutdown** (server command \`${String(results.settings.serverCommand ?? "node --import tsx src/main.ts")}\`; ` +
        "start-up: spawn to the first /healthz 200, Postgres, nginx and PowerDNS running; shutdown: SIGTERM to exit):",
      "",
      "| server | started with | NGINX_RELOAD_MODE | start-up ms | RSS right after start-up MiB | shutdown ms |",
      "|---:|---|---|---:|---:|---:|"
    )
    startups.forEach((s, i) => {
      lines.push(`| ${i + 1} | ${s.via === "npm start" ? "`npm start`" : "node"} | ${s.mode} | ${ms(s.ms)} | ${s.idleRssMiB} | ${ms(s.shutdownMs ?? Number.NaN)} |`)
    })
    lines.push("")
  }

  if (results.targets.length > 0) {
    lines.push("**Targets of issues 4 and 12:**", "", "| target | measured | limit | result |", "|---|---:|---:|---|")
    for (const t of results.targets) {
      lines.push(
        `| ${t.description}${t.note === undefined ? "" : ` (${t.note})`} | ${t.value} ${t.unit} | ${t.limit} ${t.unit} | ${t.pass ? "PASS" : "**FAIL**"} |`
      )
    }
    lines.push("")
  }
  const errors = Object.entries(results.errors ?? {})
  if (errors.length > 0) {
    lines.push("**Failed calls** (phase: answer — count):", "")
    for (const [what, count] of errors.slice(0, 15)) lines.push(`- ${what.replace(/\|/g, "/")} — ${count}`)
    lines.push("")
  }
  if (!results.complete) lines.push(`The run did not complete: ${results.error ?? "unknown error"}`, "")
  return lines.join("\n")
}

// ---- SVG ----------------------------------------------------------------------------------------

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

const COLORS = { start: "#3465a4", raw: "#8ae234", each: "#cc0000", coalesce: "#3465a4", reload: "#f57900", other: "#75507b" }

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
  const c1 = results.startC1
  const raw = results.raw
  if (c1 !== undefined && raw !== undefined) {
    add("Start at c=1 vs its raw outside calls (p50 bar, p99 tick; ms)", [
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
      color: t.mode === "each" ? COLORS.each : COLORS.coalesce,
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
        { label: `start, ${l.routes.toLocaleString("en")} routes`, value: l.latency.p50, tick: l.latency.p99, color: COLORS.start,
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
    "Rollback (handshake failed → last undo, p50 bar, p99 tick) vs one reload (ms)",
    results.rollback.flatMap((r) => [
      { label: `rollback, ${r.routes.toLocaleString("en")} routes`, value: r.journal.p50, tick: r.journal.p99, color: COLORS.each,
        text: `${ms(r.journal.p50)} / ${ms(r.journal.p99)} ms (${r.ratioToReload}x)` },
      { label: `  one reload, ${r.routes.toLocaleString("en")} routes`, value: r.reloadP50, color: COLORS.reload }
    ]),
    "ms"
  )
  if (results.targets.length > 0) {
    parts.push(`<text x="${x}" y="${y + 14}" font-size="14" font-weight="bold">Targets</text>`)
    y += 22
    for (const t of results.targets) {
      parts.push(
        `<text x="${x}" y="${y + 13}" font-size="12" fill="${t.pass ? "#4e9a06" : "#cc0000"}">` +
          `${t.pass ? "PASS" : "FAIL"}  ${escapeXml(t.description)}: ${t.value} ${t.unit} (limit ${t.limit} ${t.unit})</text>`
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
