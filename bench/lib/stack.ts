// What `npm run bench` (run.ts) and `npm run bench:profile` (profile.ts) share: the work directory,
// the server's source (the working tree, or a `git archive` of BENCH_REF), the local stack of
// src/dev/stack.ts with the pool's sample gateways, and the machine and commit recorded in the
// results. Everything it starts stops with the caller's Effect scope. See bench/README.md.
import * as Reactivity from "@effect/experimental/Reactivity"
import { PgClient } from "@effect/sql-pg"
import { Effect } from "effect"
import { execFileSync, spawnSync } from "node:child_process"
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import type { SampleGatewayHandle } from "../../src/dev/SampleGateway.ts"
import { type LocalStack, startLocalStack } from "../../src/dev/stack.ts"
import { startPoolGateways } from "./gateways.ts"
import { poolSize } from "./pool.ts"
import type { BenchArtifacts } from "./bench.ts"
import type { Results } from "./results.ts"
import { stopAllChildren } from "./server.ts"
import { round } from "./stats.ts"

export const projectRoot = path.resolve(import.meta.dirname, "..", "..")
export const resultsDir = path.join(projectRoot, "bench", "results")

/** A log line on stderr with the seconds since `t0` (performance.now()). */
export const logFrom = (t0: number) => (line: string): void => {
  process.stderr.write(`[bench ${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${line}\n`)
}

/** The settings `npm run bench` and `npm run bench:profile` both take from the environment (bench/README.md). */
export const serverOptionsFromEnv = () => ({
  pdnsProxy: (["off", "serialize"].includes(process.env.BENCH_PDNS_PROXY ?? "") ? process.env.BENCH_PDNS_PROXY : "pass") as
    | "pass"
    | "serialize"
    | "off",
  // Run the server from a commit (git archive) instead of the working tree, e.g. BENCH_REF=HEAD.
  ref: process.env.BENCH_REF,
  serverNodeOptions: process.env.BENCH_SERVER_NODE_OPTIONS,
  // `tsx`: the server the old way (node --import tsx src/main.ts), for comparison.
  runtime: (process.env.BENCH_SERVER === "tsx" ? "tsx" : "compiled") as "compiled" | "tsx"
})

/** A results file with nothing measured yet. */
export const emptyResults = (): Results => ({
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
})

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

const projectInfo = (ref: string | undefined, serverRoot: string, commit: string) => {
  const dirty = ref === undefined ? git("status", "--porcelain", "--", "src", "database") : ""
  return {
    source: ref === undefined ? "working tree" : `git archive ${ref}`,
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

export interface BenchStack {
  readonly stack: LocalStack
  readonly poolGateways: ReadonlyArray<SampleGatewayHandle>
  /** A temp directory (the stack's data, the server logs, the profiles), removed with the scope. */
  readonly workDir: string
  /** Where the server runs from: the working tree, or a `git archive` of `ref`. */
  readonly serverRoot: string
}

/**
 * The work directory, the server's source, the local stack and poolSize(maxRoutes) pool gateways,
 * all released with the scope (any server still running is stopped before the stack). Fills in
 * `results.project`, `results.machine` and `results.setup.stackStartMs`.
 */
export const openBenchStack = (
  settings: {
    /** Run the server from a commit (BENCH_REF) instead of the working tree. */
    readonly ref: string | undefined
    readonly maxRoutes: number
    readonly log: (line: string) => void
  },
  results: Results
) =>
  Effect.gen(function*() {
    const { log } = settings
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
    const commit = git("rev-parse", `${settings.ref ?? "HEAD"}^{commit}`)
    const serverRoot = settings.ref === undefined ? projectRoot : snapshot(commit, path.join(workDir, "source"))
    results.project = projectInfo(settings.ref, serverRoot, commit)
    log(`server source: ${results.project.source} (${String(results.project.commit).slice(0, 10)})`)
    log(`starting the local stack under ${workDir}`)
    const stackStart = performance.now()
    // The stack's one sample gateway takes the raw gateway calls; the pool's are the benchmark's own.
    const stack = yield* startLocalStack({ dataDir: path.join(workDir, "data"), gateways: 1 })
    const poolGateways = yield* startPoolGateways(poolSize(settings.maxRoutes))
    const stackStartMs = round(performance.now() - stackStart)
    results.setup.stackStartMs = stackStartMs
    // Registered after the stack: runs before it stops, so no server outlives its nginx/Postgres.
    yield* Effect.addFinalizer(() => Effect.promise(() => stopAllChildren()))
    results.machine = machineInfo(yield* postgresVersion(stack))
    const [load1] = os.loadavg()
    if ((load1 ?? 0) > 1) log(`warning: load average ${load1?.toFixed(2)}: another job is using this machine; figures will be skewed`)
    log(`stack up in ${Math.round(stackStartMs)} ms: nginx :${stack.nginx.listenPort}, ` +
      `PowerDNS ${stack.powerDns.apiUrl}, ${poolGateways.length} pool gateways on 127.1.0.1 up`)
    const opened: BenchStack = { stack, poolGateways, workDir, serverRoot }
    return opened
  })

/**
 * Beside the results at `base` (bench/results/NAME): the flame graph as `NAME.flame.svg` (its name
 * recorded in `results.profile` for the report's link) and, with BENCH_KEEP_PROFILE=1, the raw
 * profile as `NAME.cpuprofile` (tens of MiB; ignored by git). Returns the files written.
 */
export const writeProfileArtifacts = (base: string, artifacts: BenchArtifacts, results: Results): Array<string> => {
  const written: Array<string> = []
  if (artifacts.flameSvg !== undefined) {
    writeFileSync(`${base}.flame.svg`, artifacts.flameSvg)
    if (results.profile !== undefined) results.profile.flameGraph = path.basename(`${base}.flame.svg`)
    written.push(`${base}.flame.svg`)
  }
  if (artifacts.cpuProfileFile !== undefined && process.env.BENCH_KEEP_PROFILE === "1") {
    copyFileSync(artifacts.cpuProfileFile, `${base}.cpuprofile`)
    written.push(`${base}.cpuprofile`)
  }
  return written
}
