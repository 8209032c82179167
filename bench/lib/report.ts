// The Markdown report of a run (bench/results/latest.md, also printed at the end): the headline
// figures with their targets first (figures.ts, targets.ts), then one section per measure, in the
// order the run takes them. The chart is chart.ts.
import { computeFigures, otherProcessesShare, startupsOf } from "./figures.ts"
import type { Figure, ProfileFigures, RawFigures, Results } from "./results.ts"
import type { Summary } from "./stats.ts"

export { renderSvg } from "./chart.ts"

const ms = (value: number) => (Number.isFinite(value) ? value.toFixed(value >= 100 ? 0 : 1) : "-")
const pp = (s: Summary | undefined) => (s === undefined ? "- | -" : `${ms(s.p50)} | ${ms(s.p99)}`)
const count = (n: number) => n.toLocaleString("en")

export const renderMarkdown = (results: Results): string =>
  [
    header(results),
    figuresTable(computeFigures(results)),
    luaSection(results),
    profileSection(results),
    tlsSection(results),
    bystanderSection(results),
    rawCallsSection(results),
    startLatencySection(results),
    throughputSection(results),
    edgesSection(results),
    routeLevelsSection(results),
    fillsSection(results),
    rollbackSection(results),
    memorySection(results),
    startupSection(results),
    errorsSection(results),
    results.complete ? [] : [`The run did not complete: ${results.error ?? "unknown error"}`, ""]
  ].flat().join("\n")

const header = (results: Results): Array<string> => {
  const m = results.machine
  const share = otherProcessesShare(results)
  const load = share === undefined
    ? ""
    : ` Processes outside the benchmark used ${Math.round(share * 100)}% of the machine's CPU during the run` +
      (share > 0.05 ? " (**figures skewed where the \"other\" columns are not 0**)." : ".")
  return [
    `Benchmark run of ${results.startedAt.slice(0, 19).replace("T", " ")} UTC, ${results.durationSeconds ?? "?"} s in all` +
    `${results.complete ? "" : " (INCOMPLETE)"}; ${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB; ` +
    `node ${m.node}, nginx ${m.nginx}, PowerDNS ${m.pdns}, PostgreSQL ${m.postgres}. ` +
    `Server from the ${results.project.source} at commit ${String(results.project.commit).slice(0, 10)}` +
    `${results.project.srcDirty ? " (+ uncommitted changes in src/)" : ""}.` +
    ` PowerDNS proxy: ${results.settings.pdnsProxy}.` + load,
    ""
  ]
}

const targetText = (f: Figure) => (f.target === undefined ? "" : `${f.target.comparison} ${f.target.limit} ${f.unit}`)

/** The headline figures; the targets and their reasons are those of bench/lib/targets.ts. */
const figuresTable = (figures: ReadonlyArray<Figure>): Array<string> => {
  if (figures.length === 0) return []
  return [
    "**Figures and targets** (targets from `bench/lib/targets.ts`):",
    "",
    "| figure | value | target | met | why the target |",
    "|---|---:|---:|---|---|",
    ...figures.map((f) =>
      `| ${f.name}${f.note === undefined ? "" : ` (${f.note})`} | ${f.value} ${f.unit} | ${targetText(f)} | ` +
      `${f.met === undefined ? "" : f.met ? "met" : "**not met**"} | ${f.target?.why ?? ""} |`
    ),
    ""
  ]
}

const pct = (share: number) => (Number.isFinite(share) ? `${(share * 100).toFixed(1)}%` : "-")
const ms3 = (value: number) => (Number.isFinite(value) ? value.toFixed(value >= 10 ? 1 : value >= 1 ? 2 : 3) : "-")

/** A profile's top functions: name, source line, category, self ms (per cycle or per second), share of busy. */
const functionTable = (
  unit: string,
  functions: ReadonlyArray<{ readonly name: string; readonly file: string; readonly line: number; readonly category: string; readonly ms: number; readonly shareOfBusy: number }>
): Array<string> => [
  `| function | where | category | ${unit} | % of busy |`,
  "|---|---|---|---:|---:|",
  ...functions.map((f) =>
    `| \`${f.name.replace(/\|/g, "\\|")}\` | ${f.file === "" ? "-" : `${f.file}${f.line > 0 ? `:${f.line}` : ""}`} | ${f.category} | ` +
    `${ms3(f.ms)} | ${pct(f.shareOfBusy)} |`
  )
]

/** Where a start and a stop go (measures/profile.ts): servers P-cpu, P and P-traces. */
export const profileSection = (results: Results): Array<string> => {
  const p = results.profile
  if (p === undefined) return []
  const c = p.cpu
  const pg = p.postgres
  const t = pg.tuplesPerCycle
  const others = Object.entries(c.byComponentMsPerCycle).filter(([name]) => name !== "server" && name !== "total")
  const lines = [
    `**Where a start and a stop go** (lua, c=1, ${count(p.routes)} other routes; on each of three servers of their own, ` +
    `${p.warmup} warm-up cycles, then ${p.cycles} cycles of a new org's start and its stop, no journal read). ` +
    `Server P-cpu, as production runs it: cycle p50 ${ms(p.cycle.p50)} ms (start ${ms(p.start.p50)}, stop ${ms(p.stop.p50)}), p99 ${ms(p.cycle.p99)} ms.`,
    "",
    `- Server CPU per start and stop (server P-cpu, /proc, all its threads): **${ms3(c.totalMsPerCycle)} ms**, ` +
    `user ${ms3(c.userMsPerCycle)} + system ${ms3(c.systemMsPerCycle)}` +
    (c.idle === undefined ? ". " : `; idle, before the cycles, it used ${ms3(c.idle.userMsPerSecond + c.idle.systemMsPerSecond)} ms per second ` +
      `(user ${ms3(c.idle.userMsPerSecond)}, system ${ms3(c.idle.systemMsPerSecond)}: its background work), ` +
      `~${ms3(((c.idle.userMsPerSecond + c.idle.systemMsPerSecond) * p.windowMs) / 1000 / p.cycles)} ms of each cycle at that rate. `) +
    `Under the profiler (server P) ${ms3(p.samples.cpu.totalMsPerCycle)} ms (user ${ms3(p.samples.cpu.userMsPerCycle)} + system ` +
    `${ms3(p.samples.cpu.systemMsPerCycle)}; cycle p50 ${ms(p.samples.cycle.p50)} ms): the sampling's own cost. ` +
    "The rest of the stack during server P-cpu's cycles, ms per cycle: " +
    `${others.map(([name, v]) => `${name} ${ms3(v)}`).join(", ")}.`,
    `- Postgres (server P-cpu; pg_stat_database of \`${pg.database}\`): **${pg.transactionsPerCycle} transactions per cycle** ` +
    `(xact_commit + xact_rollback: a statement outside a transaction block counts one, a block counts one however many ` +
    `statements it holds; ${pg.rollbacksPerCycle} rolled back); tuples returned ${t.returned}, fetched ${t.fetched}, inserted ` +
    `${t.inserted}, updated ${t.updated}, deleted ${t.deleted} per cycle. Read from before the first cycle to the server's exit ` +
    `(${pg.windowSeconds} s: Postgres publishes a backend's counters late, at the latest when it exits), so the service's ` +
    "background work meanwhile is in." + sqlSpans(p),
    ...ioFloorLine(p),
    ""
  ]
  const s = p.samples
  if (!s.attributed) {
    lines.push(`CPU profile: **not attributed**. ${s.alignment}. ${s.mapping}.`, "")
  } else {
    lines.push(
      `CPU profile (server P, node \`--cpu-prof --cpu-prof-interval=${p.intervalUs}\`): ${count(s.inWindow)} samples taken during the cycles: ${ms3(s.wallMsPerCycle)} ms per cycle, of which ` +
        `${ms3(s.busyMsPerCycle)} ms busy (the main thread; /proc counts every thread) and ${pct(s.idleShare)} idle. ` +
        `Samples kept to the cycles: ${s.alignment}. ${s.mapping}.`,
      "",
      "| self time in | ms per cycle | % of the window | % of busy |",
      "|---|---:|---:|---:|",
      ...p.categories.filter((cat) => !small(cat)).map((cat) => `| ${cat.name} | ${ms3(cat.msPerCycle)} | ${pct(cat.shareOfWall)} | ${pct(cat.shareOfBusy)} |`),
      ...(() => {
        const rest = p.categories.filter(small)
        if (rest.length === 0) return []
        const sum = (f: (cat: (typeof rest)[number]) => number) => rest.reduce((a, cat) => a + f(cat), 0)
        return [
          `| ${rest.length} more under 0.1% of busy each (${rest.map((cat) => cat.name).join(", ")}) | ${ms3(sum((cat) => cat.msPerCycle))} | ` +
          `${pct(sum((cat) => cat.shareOfWall))} | ${pct(sum((cat) => cat.shareOfBusy))} |`
        ]
      })(),
      "",
      `Top ${p.topFunctions.length} functions by self time:`,
      "",
      ...functionTable("self ms per cycle", p.topFunctions.map((f) => ({ ...f, ms: f.selfMsPerCycle }))),
      ""
    )
    if (p.flameGraph !== undefined) {
      lines.push(
        `Flame graph: [${p.flameGraph}](${p.flameGraph}) (the cycles' busy samples, merged by function and source line, ` +
          `stacks cut at ${s.depthCap} frames, deepest ${s.maxDepth}; hover a frame for its file:line and ms).`,
        ""
      )
    }
  }
  const idle = p.background
  if (idle !== undefined) {
    const shown = idle.categories.filter((cat) => cat.shareOfBusy >= 0.01)
    lines.push(
      `The background (server P's ${idle.seconds} s idle window after its warm-up, sampled the same way): ${ms3(idle.busyMsPerSecond)} ms ` +
        `of busy samples per second; by category, ms per second: ${shown.map((cat) => `${cat.name} ${ms3(cat.msPerSecond)}`).join(", ")}` +
        `${idle.categories.length > shown.length ? `, ${idle.categories.length - shown.length} more under 1% each` : ""}. Top functions:`,
      "",
      ...functionTable("self ms per second", idle.topFunctions.map((f) => ({ ...f, ms: f.selfMsPerSecond }))),
      ""
    )
  }
  const tr = p.traces
  if (tr === undefined) return lines
  if ("error" in tr) {
    lines.push(`Trace pass failed: ${tr.error}`, "")
    return lines
  }
  const shown = tr.bySpan.slice(0, 30)
  const rest = tr.bySpan.slice(30)
  lines.push(
    `Trace pass (server P-traces: the same ${tr.cycles} cycles, the service exporting its traces over OTLP/HTTP to a receiver in the ` +
      `benchmark): cycle p50 ${ms(tr.cycle.p50)} ms; ${tr.requestTraces} request traces, ${tr.spansPerCycle} spans per cycle` +
      `${tr.orphans > 0 ? ` (${tr.orphans} spans whose parent never arrived)` : ""}; its CPU, tracing on, ${ms3(tr.cpuMsPerCycle.user + tr.cpuMsPerCycle.system)} ` +
      `ms per cycle (not used above). By span name, per cycle: "self" is the span's duration minus what its child spans covered ` +
      "(a `sql.execute` span is one statement's round trip to Postgres, `sql.transaction` adds BEGIN and COMMIT):",
    "",
    "| span | count | ms | self ms |",
    "|---|---:|---:|---:|",
    ...shown.map((r) => `| ${r.name.replace(/\|/g, "\\|")} | ${r.countPerCycle} | ${ms3(r.msPerCycle)} | ${ms3(r.selfMsPerCycle)} |`),
    ...(rest.length === 0
      ? []
      : [`| ${rest.length} more | ${round2(rest.reduce((a, r) => a + r.countPerCycle, 0))} | ${ms3(rest.reduce((a, r) => a + r.msPerCycle, 0))} | ` +
        `${ms3(rest.reduce((a, r) => a + r.selfMsPerCycle, 0))} |`]),
    ""
  )
  const bg = tr.background
  if (bg.spans > 0) {
    lines.push(
      `Background (other traces, started during the ${bg.seconds} s of cycles): ${bg.spans} spans, per second: ` +
        bg.bySpan.slice(0, 12).map((r) => `${r.name} ${r.perSecond} (${ms3(r.msPerSecond)} ms)`).join(", ") + ".",
      ""
    )
  }
  return lines
}

const round2 = (value: number) => Math.round(value * 100) / 100

/** A category too small for a row of its own (idle is never folded). */
const small = (cat: { readonly name: string; readonly shareOfBusy: number }) => cat.name !== "(idle)" && cat.shareOfBusy < 0.001

/** The same I/O in plain Node (measures/ioFloor.ts): what the service's CPU compares with. */
const ioFloorLine = (p: ProfileFigures): Array<string> => {
  const f = p.ioFloor
  if (f === undefined) return []
  if ("error" in f) return [`- The same I/O in plain Node: not measured (${f.error}).`]
  const o = f.perOperationMs
  return [
    `- The same I/O in plain Node (a process of its own, no Effect, the same \`pg\`; ${count(f.reps)} of each): ` +
    `**${ms3(f.lowerMsPerCycle)}-${ms3(f.upperMsPerCycle)} ms of CPU per cycle** for the ${f.perCycle.clientRequests} requests, ` +
    `${f.perCycle.statements} statements and ${f.perCycle.servedRequests} served requests the trace pass counts per cycle ` +
    `(ms each: a request on a connection of its own ${ms3(o.freshRequest)}, on a kept-alive one ${ms3(o.keptRequest)}, ` +
    `a statement ${ms3(o.statement)}, a request served ${ms3(o.servedRequest)}; the lower bound with every request kept-alive). ` +
    `The service's CPU is ${(p.cpu.totalMsPerCycle / f.lowerMsPerCycle).toFixed(1)}x the lower bound.`
  ]
}

/** The statements the trace pass saw: `sql.execute` spans in the cycles' requests, and in the background. */
const sqlSpans = (p: NonNullable<Results["profile"]>): string => {
  const tr = p.traces
  if (tr === undefined || "error" in tr) return ""
  const inRequests = tr.bySpan.find((r) => r.name === "sql.execute")
  const background = tr.background.bySpan.find((r) => r.name === "sql.execute")
  return ` The trace pass counts ${inRequests?.countPerCycle ?? 0} statements (\`sql.execute\` spans) per cycle in the requests themselves, ` +
    `${inRequests === undefined ? "-" : ms3(inRequests.msPerCycle)} ms of round trips, and ${background?.perSecond ?? 0} per second in the background.`
}

const tlsSection = (results: Results): Array<string> => {
  const tls = results.tls
  if (tls === undefined) return []
  const r = tls.requests
  return [
    `**HTTPS** (NGINX_TLS_*: lua, a server of its own with a wildcard certificate, ECDSA P-256; ${count(tls.routes)} routes; ms). ` +
    "A start with TLS on (its health wait goes through nginx over HTTPS) against the plain lua server's just before, and " +
    "GET /hello to one org's gateway through nginx:",
    "",
    "| what | n | p50 | p99 |",
    "|---|---:|---:|---:|",
    `| start at c=1, plain | ${tls.plainStart.latency.n} | ${pp(tls.plainStart.latency)} |`,
    `| start at c=1, HTTPS on (${tls.startRatio}x) | ${tls.tlsStart.latency.n} | ${pp(tls.tlsStart.latency)} |`,
    `| GET, plain, kept-alive connection | ${r.plainKeptAlive.n} | ${pp(r.plainKeptAlive)} |`,
    `| GET, HTTPS, kept-alive connection | ${r.tlsKeptAlive.n} | ${pp(r.tlsKeptAlive)} |`,
    `| GET, plain, new connection | ${r.plainNewConnection.n} | ${pp(r.plainNewConnection)} |`,
    `| GET, HTTPS, new connection, full handshake | ${r.tlsFullHandshake.n} | ${pp(r.tlsFullHandshake)} |`,
    `| GET, HTTPS, new connection resuming its session (${Math.round(r.resumedShare * 100)}% resumed) | ${r.tlsResumed.n} | ${pp(r.tlsResumed)} |`,
    ""
  ]
}

const luaSection = (results: Results): Array<string> => {
  const lua = results.lua
  if (lua === undefined) return []
  const lines = [
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
  ]
  const c1 = lua.startC1
  if (c1 !== undefined) {
    const b = c1.breakdown
    lines.push(
      `Start at c=1 (${c1.latency.n} starts, 0 other routes): p50 ${ms(c1.latency.p50)} ms, p99 ${ms(c1.latency.p99)} ms; raw sum ` +
        `(PATCH + PUT + probe + health + handshake, p50s) ${ms(c1.rawSumMs)} ms: **${c1.ratio}x**. Journal medians: dns ${ms(b.dns)}, ` +
        `nginx-config ${ms(b.nginxConfig)}, nginx-reload (the proof) ${ms(b.nginxReload)}, handshake ${ms(b.handshake)}, rest ${ms(b.rest)} ms. ` +
        `Stop p50 ${ms(c1.stop.p50)} ms. Server CPU per start and stop: ${c1.cpuPerStartAndStopMs.server ?? "-"} ms.`,
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
      `Route table refill: nginx restarted with ${count(lua.restore.routes)} active allocations; the next server was up, with the table ` +
        `refilled in one request, ${ms(lua.restore.startupMs)} ms after it was spawned.`,
      ""
    )
  }
  return lines
}

const bystanderSection = (results: Results): Array<string> => {
  const kept = results.keptAlive ?? []
  if (kept.length === 0) return []
  return [
    "**A bystander org's kept-alive connections** (8 clients, a request every ~5 ms each) while other orgs start and stop:",
    "",
    "| mode | starts + stops | requests | broken | on reused connections |",
    "|---|---:|---:|---:|---:|",
    ...kept.map((k) => `| ${k.mode} | ${k.operations} | ${k.requests} | ${k.broken} | ${k.reused} |`),
    ""
  ]
}

const rawCallsSection = (results: Results): Array<string> => {
  const raw = results.raw
  if (raw === undefined) return []
  return [
    "**Raw outside calls, reload mode** (made directly, idle service, 0 active routes; ms):",
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
  ]
}

const startLatencySection = (results: Results): Array<string> => {
  const c1 = results.startC1
  if (c1 === undefined) return []
  const b = c1.breakdown
  return [
    `**Start latency, c=1, reload (coalesce)** (${c1.latency.n} starts, each followed by an untimed stop, 0 other routes): ` +
    `p50 ${ms(c1.latency.p50)} ms, p99 ${ms(c1.latency.p99)} ms. ` +
    `Raw sum of one start's outside calls (PATCH + reload + probe + health + handshake, p50s): ${ms(c1.rawSumMs)} ms; ` +
    `ratio **${c1.ratio}x** (p99 vs p99 sum: ${c1.ratioP99}x). With "reload → served" in place of the bare reload ` +
    `the sum is ${ms(c1.rawSumServedMs)} ms and the ratio ${c1.ratioToServed}x. Stop p50 ${ms(c1.stop.p50)} ms.`,
    "",
    `Where a start's time goes (journal duration_ms medians): dns ${ms(b.dns)}, nginx-config ${ms(b.nginxConfig)}, ` +
    `nginx-reload ${ms(b.nginxReload)} (reload + probes until the route is served), handshake ${ms(b.handshake)}, ` +
    `rest (claim, journal writes, HTTP) ${ms(b.rest)} ms.`,
    ""
  ]
}

const throughputSection = (results: Results): Array<string> => {
  if (results.throughput.length === 0) return []
  const ratios = Object.entries(results.throughputRatio).map(([k, v]) => `${k.replace(/^c/, "c=")}: ${v}x`).join(", ")
  return [
    "**Throughput** (bounded to 256 starts or 20 s per case, new orgs, with ~1,000 active routes):",
    "",
    "| mode | concurrency | PowerDNS writes | routes | starts | errors | starts/s | p50 ms | p99 ms | `nginx -s reload` runs | nginx reconfigurations | starts per reconfiguration | CPU busy (2 cores) |",
    "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...results.throughput.map((t) =>
      `| ${t.mode} | ${t.concurrency} | ${t.dns === "stubbed" ? "stubbed (nginx-only)" : "real"} | ${t.routes} | ${t.starts} | ${t.errors} | ${t.startsPerSecond} | ${pp(t.latency)} | ` +
      `${t.reloadSignals ?? "-"} | ${t.reloads} | ${t.startsPerReload} | ${Math.round(t.cpuBusy * 100)}% |`
    ),
    "",
    "Where a start's time goes under load (journal medians, ms) and where the CPU went (CPU seconds during the case):",
    "",
    "| mode | c | PowerDNS | dns | nginx-config | nginx-reload | handshake | rest | CPU s: server (+ its `nginx -s reload` children) | nginx | PowerDNS | Postgres | bench | other processes |",
    "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...results.throughput.map((t) => {
      const b = t.breakdown
      const c = t.cpuSeconds
      return `| ${t.mode} | ${t.concurrency} | ${t.dns === "stubbed" ? "stubbed" : "real"} | ${ms(b.dns)} | ${ms(b.nginxConfig)} | ${ms(b.nginxReload)} | ${ms(b.handshake)} | ${ms(b.rest)} | ` +
        `${c.server ?? "-"} | ${c.nginx ?? "-"} | ${c.powerdns ?? "-"} | ${c.postgres ?? "-"} | ${c.bench ?? "-"} | ${c.other ?? "-"} |`
    }),
    "",
    `Ratios of starts/s: ${ratios}.`,
    ""
  ]
}

const edgesSection = (results: Results): Array<string> => {
  const edges = results.edges
  if (edges === undefined) return []
  const all = edges.remoteEdges + 1
  const one = edges.startOneEdge
  const three = edges.startAllEdges
  const p = edges.propagation
  const ready = (list: ReadonlyArray<{ readonly name: string; readonly readyMs: number }>) =>
    list.map((r) => `${r.name} ${ms(r.readyMs)} ms`).join(", ")
  const standing = (list: ReadonlyArray<{ readonly name: string; readonly state: string; readonly heldGateways: number; readonly lastError: string | null }>) =>
    list.map((s) => `${s.name} ${s.state}, ${s.heldGateways} gateways held${s.lastError === null ? "" : ` (last error: ${s.lastError.slice(0, 120)})`}`).join("; ")
  const row = (label: string, l: typeof one, remoteCpu: string) => {
    const b = l.breakdown
    return `| ${label} | ${l.latency.n} | ${pp(l.latency)} | ${ms(l.stop.p50)} | ${ms(b.nginxConfig)} | ${ms(b.nginxReload)} | ${ms(b.dns)} | ${ms(b.handshake)} | ${ms(b.rest)} | ` +
      `${l.cpuPerStartAndStopMs.server ?? "-"} | ${l.cpuPerStartAndStopMs.nginx ?? "-"} | ${remoteCpu} | ${l.cpuPerStartAndStopMs.other ?? "-"} |`
  }
  const lines = [
    `**Several edges** (lua; ${edges.remoteEdges} remote nginx edges of ${edges.workersPerRemoteEdge} workers each beside the local one, ` +
    `registered through POST /edges and running the file of GET /edges/{id}/config; ${count(edges.routes)} active routes; ms). ` +
    `Registered → \`ready\` with every route (nginx up to GET /edges ready): ${ready(edges.registered)}.`,
    "",
    "| edges | starts | start p50 | start p99 | stop p50 | nginx-config p50 | nginx-reload (the proof) p50 | dns p50 | handshake p50 | rest p50 | CPU ms per start+stop: server | local nginx | remote nginx | other processes |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    row("local alone", one, "-"),
    row(`${all} (local + ${edges.remoteEdges} remote)`, three, String(edges.remoteEdgesCpuPerStartAndStopMs)),
    "",
    `Start p50 with ${all} edges ÷ with the local edge alone: **${edges.startRatio}x**. ` +
    `Propagation (${p.trials} starts and stops at c=1, at least ${p.connectionsPerEdge} fresh connections to each of the ${p.edges} edges' org listeners after each 200; ` +
    `workers seen: ${Object.entries(p.workersSeen).map(([name, n]) => `${name} ${n}`).join(", ")}): every edge served a start within p50 ${ms(p.start.p50)} / ` +
    `p99 ${ms(p.start.p99)} ms of its 200, and none served a stopped org within p50 ${ms(p.stop.p50)} / p99 ${ms(p.stop.p99)} ms; ` +
    `**${p.staleAnswers}** of ${count(p.answers)} answers showed the old state${p.errors > 0 ? `; ${p.errors} starts failed` : ""}. ` +
    `On GET /edges before they were removed: ${standing(edges.standing)}.`,
    ""
  ]
  const c = edges.catchUp
  if (c !== undefined) {
    lines.push(
      `Catch-up at ${count(c.routes)} active routes (the remote edges registered again at this level; registered → ready: ${ready(c.registered)}): ` +
        `${c.edge}'s nginx restarted (stop and start ${ms(c.restartMs)} ms; its table empty), then its table ready on its route API after ` +
        `${ms(c.tableReadyMs)} ms and the edge \`ready\` on GET /edges for its new boot with ${count(c.routeCount)} routes after **${ms(c.ms)} ms**; ` +
        `its route API lists ${count(c.routesListed)} routes. Then: ${standing(c.standing)}.`,
      ""
    )
  }
  return lines
}

const routeLevelsSection = (results: Results): Array<string> => {
  if (results.latencyByRoutes.length === 0) return []
  const rawAt = (routes: number): RawFigures | undefined => results.rawByRoutes.find((r) => r.routes === routes)
  const rows = [...(results.startC1 === undefined ? [] : [results.startC1]), ...results.latencyByRoutes]
  return [
    "**Latency against active routes** (c=1; ms; reload mode's raw costs measured at the same count, none in lua mode):",
    "",
    "| mode | active routes | starts | start p50 | start p99 | nginx-reload step p50 | dns step p50 | reload p50 | reload→served p50 | `nginx -t` p50 | PATCH p50 | probe p50 | CPU ms per start+stop: server | PowerDNS | other processes |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...rows.map((l) => {
      // lua servers make no reload-mode raw calls: a reload figure beside a lua row would be another server's.
      const raw = l.mode === "lua" ? undefined : rawAt(l.routes)
      const cpu = l.cpuPerStartAndStopMs
      return `| ${l.mode} | ${count(l.routes)} | ${l.latency.n} | ${pp(l.latency)} | ${ms(l.breakdown.nginxReload)} | ${ms(l.breakdown.dns)} | ` +
        `${ms(raw?.reload.p50 ?? Number.NaN)} | ${ms(raw?.reloadToLive.p50 ?? Number.NaN)} | ` +
        `${ms(raw?.nginxTest.p50 ?? Number.NaN)} | ${ms(raw?.pdnsPatch.p50 ?? Number.NaN)} | ${ms(raw?.probe.p50 ?? Number.NaN)} | ` +
        `${cpu?.server ?? "-"} | ${cpu?.powerdns ?? "-"} | ${cpu?.other ?? "-"} |`
    }),
    ""
  ]
}

const fillsSection = (results: Results): Array<string> => {
  if (results.fills.length === 0) return []
  return [
    "**Fills** (starts through the API at c=64): " +
    results.fills
      .map((f) =>
        `${f.mode === undefined ? "" : `${f.mode}, `}${count(f.from)} → ${count(f.reached)} in ${(f.ms / 1000).toFixed(1)} s ` +
        `(${f.startsPerSecond} starts/s${f.errors > 0 ? `, ${f.errors} errors` : ""}${f.gaveUp ? ", stopped by the time budget" : ""})` +
        (f.synthetic === undefined
          ? ""
          : `, then ${count(f.synthetic.count)} more created directly (Postgres rows, ` +
            `${f.mode === undefined ? "routes" : f.mode === "lua" ? "route table" : "route files and one reload"}, PowerDNS records) in ${(f.synthetic.ms / 1000).toFixed(1)} s`)
      )
      .join("; ") + ".",
    ""
  ]
}

const rollbackSection = (results: Results): Array<string> => {
  if (results.rollback.length === 0) return []
  return [
    "**Rollback, reload (coalesce)** (start failing at handshake: gateway answers 500; ms):",
    "",
    "| active routes | n | handshake failed → last undo (journal) p50 | p99 | Σ undo durations p50 | nginx-reload undo p50 | 502 answer p50 | one reload p50 | ratio |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...results.rollback.map((r) =>
      `| ${count(r.routes)} | ${r.n} | ${ms(r.journal.p50)} | ${ms(r.journal.p99)} | ${ms(r.undoSum.p50)} | ` +
      `${ms(r.unrouteUndo)} | ${ms(r.response.p50)} | ${ms(r.reloadP50)} | ${r.ratioToReload}x |`
    ),
    ""
  ]
}

const memorySection = (results: Results): Array<string> => {
  const mem = results.memory
  const books = results.consistency
  return [
    ...(mem === undefined ? [] : [
      `**Memory** at ${count(mem.routes)} active allocations: server peak RSS (VmHWM) ` +
      `${mem.serverPeakRssMiB} MiB, current RSS ${mem.serverRssMiB} MiB, RSS right after start-up ${mem.serverIdleRssMiB} MiB; ` +
      `nginx master + workers RSS ${mem.nginxRssMiB} MiB ` +
      `(the coalesce server, at ~1,000 routes, peaked at ${mem.serverAPeakRssMiB} MiB).`,
      ""
    ]),
    ...(books === undefined ? [] : [
      `**Pool books** at the end: ${count(books.poolAllocated)} allocated + ${count(books.poolFree)} free of ${count(books.poolTotal)} ` +
      `(${books.freePlusAllocatedIsTotal ? "adds up" : "**does not add up**"}); the benchmark holds ${count(books.activeByBench)} active ` +
      `(${books.allocatedMatchesBench ? "the same" : "**not the same**"}).`,
      ""
    ])
  ]
}

const startupSection = (results: Results): Array<string> => {
  const startups = startupsOf(results)
  if (startups.length === 0) return []
  return [
    `**Start-up and shutdown** (server command \`${String(results.settings.serverCommand ?? "node --import tsx src/main.ts")}\`; ` +
    "start-up: spawn to the first /healthz 200, Postgres, nginx and PowerDNS running; shutdown: SIGTERM to exit):",
    "",
    "| server | started with | mode | start-up ms | RSS right after start-up MiB | shutdown ms |",
    "|---:|---|---|---:|---:|---:|",
    ...startups.map((s, i) =>
      `| ${i + 1} | ${s.via === "npm start" ? "`npm start`" : "node"} | ${s.mode} | ${ms(s.ms)} | ${s.idleRssMiB} | ${ms(s.shutdownMs ?? Number.NaN)} |`
    ),
    ""
  ]
}

const errorsSection = (results: Results): Array<string> => {
  const errors = Object.entries(results.errors ?? {})
  if (errors.length === 0) return []
  return [
    "**Failed calls** (phase: answer — count):",
    "",
    ...errors.slice(0, 15).map(([what, n]) => `- ${what.replace(/\|/g, "/")} — ${n}`),
    ""
  ]
}
