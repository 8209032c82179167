// `npm run bench`: the benchmark. Starts the local stack (embedded Postgres, private
// nginx, PowerDNS, sample gateways; installs the Debian packages if needed), runs the service as
// a child process against it, measures, and writes bench/results/latest.{json,md,svg}.
// Everything it starts stops with the Scope, on success, failure or Ctrl-C. See bench/README.md.
import * as Reactivity from "@effect/experimental/Reactivity"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { PgClient } from "@effect/sql-pg"
import { Effect } from "effect"
import { execFileSync, spawnSync } from "node:child_process"
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { type LocalStack, startLocalStack } from "../src/dev/stack.ts"
import { runBench } from "./lib/bench.ts"
import { computeFigures } from "./lib/figures.ts"
import { startPoolGateways } from "./lib/gateways.ts"
import { poolSize } from "./lib/pool.ts"
import { renderMarkdown, renderSvg } from "./lib/report.ts"
import type { Results } from "./lib/results.ts"
import { stopAllChildren } from "./lib/server.ts"
import { round } from "./lib/stats.ts"

const projectRoot = path.resolve(import.meta.dirname, "..")
const resultsDir = path.join(projectRoot, "bench", "results")

const quick = process.env.BENCH_QUICK === "1"
const options = {
  maxRoutes: Number(process.env.BENCH_MAX_ROUTES ?? (quick ? 1000 : 10_000)),
  scale: Number(process.env.BENCH_SCALE ?? (quick ? 0.2 : 1)),
  budgetMs: Number(process.env.BENCH_BUDGET_S ?? 540) * 1000,
  // A scaled-down run must not replace the real figures.
  outputName: process.env.BENCH_OUTPUT ?? (quick ? "quick" : "latest"),
  pdnsProxy: (["off", "serialize"].includes(process.env.BENCH_PDNS_PROXY ?? "") ? process.env.BENCH_PDNS_PROXY : "pass") as
    | "pass"
    | "serialize"
    | "off",
  // Run the server from a commit (git archive) instead of the working tree, e.g. BENCH_REF=HEAD.
  ref: process.env.BENCH_REF,
  serverNodeOptions: process.env.BENCH_SERVER_NODE_OPTIONS,
  // `tsx`: the server the old way (node --import tsx src/main.ts), for comparison.
  runtime: (process.env.BENCH_SERVER === "tsx" ? "tsx" : "compiled") as "compiled" | "tsx"
}

const t0 = performance.now()
const log = (line: string) => process.stderr.write(`[bench ${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${line}\n`)

const commandOutput = (command: string, args: ReadonlyArray<string>): string => {
  try {
    return execFileSync(command, [...args], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 10_000 })
  } catch (error) {
    // nginx -v prints to stderr and exits 0; pdns_server --version exits 99 after printing.
    const e = error as { stdout?: string; stderr?: string }
    return `${e.stdout ?? ""}${e.stderr ?? ""}`
  }
}
const commandStderr = (command: string, args: ReadonlyArray<string>): string => {
  try {
    const result = spawnSync(command, [...args], { encoding: "utf8", timeout: 10_000 })
    return `${result.stdout ?? ""}${result.stderr ?? ""}`
  } catch {
    return ""
  }
}

const machineInfo = (postgres: string) => {
  const cpuinfo = (() => {
    try {
      return readFileSync("/proc/cpuinfo", "utf8")
    } catch {
      return ""
    }
  })()
  const cpuModel = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? "unknown"
  return {
    cpuModel,
    cores: os.cpus().length,
    memoryGiB: round(os.totalmem() / 1024 ** 3, 1),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    nginx: /nginx\/(\S+)/.exec(commandStderr("nginx", ["-v"]))?.[1] ?? "unknown",
    pdns: /Server (\d+\.\d+\.\d+)/.exec(commandStderr("pdns_server", ["--version"]))?.[1] ?? "unknown",
    postgres,
    // 1, 5 and 15 minute load averages when the run started: above ~0.5 something else is busy.
    loadAverageAtStart: os.loadavg().map((load) => round(load, 2))
  }
}

const git = (...args: Array<string>) => commandOutput("git", ["-C", projectRoot, ...args]).trim()

/** The reload modes the server knows, read from its source (src/config.ts; src/nginx/Nginx.ts before). */
const reloadModesOf = (serverRoot: string): Array<string> => {
  for (const file of ["src/config.ts", "src/nginx/Nginx.ts"]) {
    try {
      if (/"coalesce",\s*"each"/.test(readFileSync(path.join(serverRoot, file), "utf8"))) return ["coalesce", "each"]
    } catch {
      // not in this version of the source
    }
  }
  return ["(NGINX_RELOAD_MODE not found in src/config.ts or src/nginx/Nginx.ts)"]
}

const projectInfo = (serverRoot: string, commit: string) => {
  const dirty = options.ref === undefined ? git("status", "--porcelain", "--", "src", "database") : ""
  return {
    source: options.ref === undefined ? "working tree" : `git archive ${options.ref}`,
    commit,
    branch: git("rev-parse", "--abbrev-ref", "HEAD"),
    srcDirty: dirty !== "",
    srcChanges: dirty === "" ? [] : dirty.split("\n"),
    reloadModes: reloadModesOf(serverRoot)
  }
}

/** The server's files at `ref` (git archive), with the project's node_modules linked in. */
const snapshot = (ref: string, dir: string): string => {
  mkdirSync(dir, { recursive: true })
  // What the server needs, as far as the ref has it (scripts/ and the lock file build dist/).
  const wanted = new Set(["src", "database", "scripts", "package.json", "package-lock.json", "tsconfig.json"])
  const paths = git("ls-tree", "--name-only", ref).split("\n").filter((name) => wanted.has(name))
  const archive = spawnSync("git", ["-C", projectRoot, "archive", "--format=tar", ref, "--", ...paths], {
    maxBuffer: 256 * 1024 * 1024,
    timeout: 60_000
  })
  if (archive.status !== 0) throw new Error(`git archive ${ref} failed: ${String(archive.stderr)}`)
  const untar = spawnSync("tar", ["-x", "-C", dir], { input: archive.stdout, timeout: 60_000 })
  if (untar.status !== 0) throw new Error(`tar failed: ${String(untar.stderr)}`)
  symlinkSync(path.join(projectRoot, "node_modules"), path.join(dir, "node_modules"))
  return dir
}

const postgresVersion = (stack: LocalStack) =>
  Effect.scoped(
    Effect.gen(function*() {
      const sql = yield* PgClient.make({ url: stack.databaseUrl, maxConnections: 1 })
      const rows = yield* sql<{ server_version: string }>`show server_version`
      return rows[0]?.server_version ?? "unknown"
    })
  ).pipe(Effect.provide(Reactivity.layer), Effect.orElseSucceed(() => "unknown"))

const writeOutputs = (results: Results) => {
  mkdirSync(resultsDir, { recursive: true })
  const base = path.join(resultsDir, results.complete ? options.outputName : `${options.outputName}.failed`)
  const markdown = renderMarkdown(results)
  writeFileSync(`${base}.json`, `${JSON.stringify(results, null, 2)}\n`)
  writeFileSync(`${base}.md`, `<!-- generated by \`npm run bench\` (bench/run.ts); do not edit -->\n\n${markdown}`)
  writeFileSync(`${base}.svg`, renderSvg(results))
  process.stdout.write(`\n${markdown}\n`)
  log(`wrote ${path.relative(projectRoot, base)}.{json,md,svg}`)
}

const program = Effect.gen(function*() {
  const results: Results = {
    complete: false,
    startedAt: new Date().toISOString(),
    machine: {},
    project: {},
    settings: {},
    setup: {},
    rawByRoutes: [],
    throughput: [],
    keptAlive: [],
    throughputRatio: {},
    latencyByRoutes: [],
    fills: [],
    rollback: [],
    figures: []
  }
  // Postgres runs as the `postgres` OS user when we are root: its directory must be reachable.
  const workDir = yield* Effect.acquireRelease(
    Effect.sync(() => {
      const dir = mkdtempSync(path.join(os.tmpdir(), "ga-bench-"))
      chmodSync(dir, 0o755)
      return dir
    }),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
  )
  // The ref is resolved once, so the archive and the recorded commit are the same even if HEAD moves.
  const commit = git("rev-parse", `${options.ref ?? "HEAD"}^{commit}`)
  const serverRoot = options.ref === undefined ? projectRoot : snapshot(commit, path.join(workDir, "source"))
  results.project = projectInfo(serverRoot, commit)
  log(`server source: ${results.project.source} (${String(results.project.commit).slice(0, 10)})`)
  log(`starting the local stack under ${workDir}`)
  const stackStart = performance.now()
  // The stack's one sample gateway takes the raw gateway calls; the pool's are the benchmark's own.
  const stack = yield* startLocalStack({ dataDir: path.join(workDir, "data"), gateways: 1 })
  const poolGateways = yield* startPoolGateways(poolSize(options.maxRoutes))
  results.setup.stackStartMs = round(performance.now() - stackStart)
  // Registered after the stack: runs before it stops, so no server outlives its nginx/Postgres.
  yield* Effect.addFinalizer(() => Effect.promise(() => stopAllChildren()))
  results.machine = machineInfo(yield* postgresVersion(stack))
  const [load1] = os.loadavg()
  if ((load1 ?? 0) > 1) log(`warning: load average ${load1?.toFixed(2)}: another job is using this machine; figures will be skewed`)
  log(`stack up in ${Math.round(results.setup.stackStartMs)} ms: nginx :${stack.nginx.listenPort}, ` +
    `PowerDNS ${stack.powerDns.apiUrl}, ${poolGateways.length} pool gateways on 127.1.0.1 up`)

  const outcome = yield* Effect.tryPromise({
    try: (signal) => runBench(stack, results, {
      poolGateways,
      projectRoot,
      serverRoot,
      workDir,
      ...options,
      logsPrefix: path.join(resultsDir, options.outputName),
      signal,
      log
    }),
    catch: (error) => (error instanceof Error ? error : new Error(String(error)))
  }).pipe(Effect.either)

  results.finishedAt = new Date().toISOString()
  results.machine.loadAverageAtEnd = os.loadavg().map((load) => round(load, 2))
  results.durationSeconds = round((performance.now() - t0) / 1000, 1)
  // From what was measured, also when the run failed part way.
  results.figures = computeFigures(results)
  if (outcome._tag === "Left") {
    results.error = outcome.left.message
    writeOutputs(results)
    return yield* Effect.fail(outcome.left)
  }
  results.complete = true
  writeOutputs(results)
  for (const figure of results.figures) {
    if (figure.target === undefined) continue
    process.stdout.write(
      `${figure.met === true ? "MET    " : "NOT MET"}  ${figure.name}: ${figure.value} ${figure.unit} ` +
        `(target ${figure.target.comparison} ${figure.target.limit})\n`
    )
  }
})

program.pipe(Effect.scoped, Effect.provide(NodeContext.layer), NodeRuntime.runMain)
