// Chaos run: many starts and stops over a small pool, from concurrent clients, against two
// replicas of the real service (child processes) on one stack, while faults come and go: a
// gateway's handshake answers 500 or hangs, its health check hangs, its release (the handshake's
// undo) answers 500, hangs or is slow, PowerDNS stops or freezes,
// a broken foreign file sits in nginx's directory, nginx's master freezes, a replica freezes for
// a moment, loses its runner lease (its lease session terminated in Postgres, sometimes frozen
// right after so that the other replica adopts its allocations) or is killed with SIGKILL and
// restarted. Now and then a client flaps one org across the replicas (start on one, stop on the
// other, start again at once, back to back or overlapping). All along, test/support/isolation.ts
// asks nginx every ~50 ms which gateway answers each org's hostname, against Postgres read
// before and after, and keeps a few WebSockets open through nginx for active orgs, a message on
// each every ~50 ms: a request that reaches another org's gateway, or a long-lived connection
// answered for another allocation, fails the run. Then the faults stop, the system gets two
// reconcile periods, every invariant of docs/architecture.md is checked against the real
// systems, the pool must hold no gateway whose release is still owed (GET /pool), and every
// sample gateway must hold what Postgres gives it (its live allocation, or nothing).
//
// With --edges N, N remote nginx edges (test/support/edges.ts: each a real nginx on loopback,
// registered through POST /edges, its route API behind a dropping TCP proxy) join the stack's
// nginx (the local edge): the isolation checker asks every edge, and edge faults join the mix (an
// edge frozen, restarted with its table emptied, or partitioned: its route API unreachable while
// it keeps serving). At the end every edge must be ready again and hold no gateway within 30 s
// of the last fault, and route every org as Postgres says.
//
//   npm run chaos -- --ops 2000 --seed 42 [--gateways 6] [--orgs 12] [--workers 4] [--time-limit-s 900]
//                    [--think-ms 100-700] [--fault-every-ms 700-2500] [--kill-every-ms 8000-16000]
//                    [--long-lived 4] [--edges 0]
//
// Randomness is seeded (one stream per actor: clients, faults, kills); the interleaving still
// depends on timing, but a failing seed replays the same choices.
import { NodeContext } from "@effect/platform-node"
import { Duration, Effect, Exit, Fiber, Schedule, Scope } from "effect"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import path from "node:path"
import { pathToFileURL } from "node:url"
import { type LocalStack, startLocalStack } from "../../src/dev/stack.ts"
import { awaitEdgeState, type RemoteEdge, startRemoteEdge } from "../support/edges.ts"
import {
  checkInvariants,
  type Db,
  describeReport,
  type InvariantReport,
  openDb
} from "../support/invariants.ts"
import { describeIsolation, type IsolationReport, startIsolationChecker } from "../support/isolation.ts"
import { gatewayAnswerOf, hostnameOf, rawGet } from "../support/rawHttp.ts"
import {
  type ApiAnswer,
  nginxMasterPid,
  nginxPids,
  powerDnsPid,
  registerGateways,
  request,
  type RequestError,
  type ServiceProcess,
  signalPid,
  startGateway,
  startServer,
  stopGateway,
  localPortsOf
} from "../support/server.ts"

export interface ChaosOptions {
  /** Start and stop requests to issue (the run also ends at `timeLimitMs`). */
  readonly operations: number
  readonly seed: number
  /** Sample gateways in the pool (default 6; a stack passed in brings its own). */
  readonly gateways?: number
  /** Distinct organizations the clients pick from (default 10). */
  readonly orgs?: number
  /** Service replicas on the one stack (default 2). */
  readonly replicas?: number
  /** Concurrent clients (default 4). */
  readonly workers?: number
  /** A client's pause between two requests, drawn in [min, max] ms (default [100, 700]). */
  readonly thinkMs?: readonly [number, number]
  /** Bound on the operations phase (default 120 s). */
  readonly timeLimitMs?: number
  /** Pause between two faults, drawn in [min, max] ms (default [700, 2500]). */
  readonly faultEveryMs?: readonly [number, number]
  /** Pause between two kills, drawn in [min, max] ms (default [8000, 16000]); null: no kills. */
  readonly killEveryMs?: readonly [number, number] | null
  /**
   * Chance that a client's turn flaps one org across the replicas instead of one request: start
   * on one replica, stop on the other, start again at once (3 to 5 requests, back to back or
   * overlapping). Default 0.05.
   */
  readonly flapProbability?: number
  /** Pause between two rounds of the tenant-isolation checker (default 50 ms). */
  readonly isolationIntervalMs?: number
  /** Long-lived WebSockets the isolation checker keeps open at a time (default 4; 0: none). */
  readonly longLivedConnections?: number
  /**
   * Remote nginx edges started next to the stack's own (default 0). With some, the isolation
   * checker asks every edge, and the edge faults join the mix.
   */
  readonly edges?: number
  /** The fault mix's weights by kind, over FAULT_WEIGHTS (and EDGE_FAULT_WEIGHTS with edges); 0 takes a kind out. */
  readonly faultWeights?: Partial<Readonly<Record<FaultKind, number>>>
  readonly reconcileIntervalMs?: number
  readonly stepTimeoutMs?: number
  readonly undoTimeoutMs?: number
  /** Run on this stack instead of starting one. */
  readonly stack?: LocalStack
  readonly log?: (line: string) => void
}

export interface ChaosSummary {
  readonly seed: number
  readonly settings: Record<string, number>
  /** Requests issued and how each ended ("start 200 new", "start 504 handshake", "stop 404"...). */
  readonly operations: number
  readonly outcomes: Readonly<Record<string, number>>
  /** Answers that break the API contract (the README's API table / free + allocated = total), with a sample body each. */
  readonly contractBreaks: ReadonlyArray<string>
  readonly faults: Readonly<Record<string, number>>
  /** Runner leases terminated in Postgres (also in `faults`, with or without a freeze after). */
  readonly leaseFaults: number
  /** Flaps of one org across the replicas, "back to back" or "overlapping". */
  readonly flaps: Readonly<Record<string, number>>
  readonly kills: number
  /** Restarts that failed (e.g. nginx refused the service's install reload) and were retried. */
  readonly refusedRestarts: number
  readonly operationsMs: number
  readonly slowestOpMs: number
  /** The continuous tenant-isolation check through nginx, from the first request to the final check. */
  readonly isolation: IsolationReport
  /** The check made two reconcile periods after the last fault. */
  readonly report: InvariantReport
  /** When that check found violations: how long until they were gone (null: not within 30 s). */
  readonly convergedAfterMs: number | null
  /**
   * Gateways GET /pool still showed `unreleased` (their release owed) once the faults stopped and
   * the health pass had had up to 30 s to get them back: one line each; empty when none.
   */
  readonly unreleasedAtEnd: ReadonlyArray<string>
  /** How long after the last fault GET /pool first showed no unreleased gateway (null: not within 30 s). */
  readonly releasedAllAfterMs: number | null
  /**
   * Gateways holding an allocation Postgres does not give them (asked of the sample gateways
   * themselves, once no release was owed): a gateway freed without its release, still holding
   * the last org's allocation and connections. One line each; empty when none.
   */
  readonly gatewaysHoldingAtEnd: ReadonlyArray<string>
  readonly durationMs: number
  /** The stack's directory (logs of every replica under servers/), when the run started its own. */
  readonly dataDir: string | undefined
  /** Remote edges (besides the local one); the figures below are about edges only when there are some. */
  readonly edges: number
  /** The edge faults by kind (also in `faults`). */
  readonly edgeFaults: Readonly<Record<string, number>>
  /** The most gateways GET /pool showed `held` (by an edge owing a removal), asked every second through the run. */
  readonly heldMax: number
  /** GET /pool's `held` once every edge was ready at the end (null: not read). */
  readonly heldAtEnd: number | null
  /** How long after the last fault every edge was `ready` on GET /edges with no held gateway (null: not within 30 s). */
  readonly edgesReadyAfterMs: number | null
  /** The edges not ready, or holding gateways, when the 30 s were up: one line each; empty when none. */
  readonly edgesAtEnd: ReadonlyArray<string>
  /** Requests made by the final check of every org on every edge. */
  readonly edgeRoutesChecked: number
  /**
   * Orgs an edge did not route as Postgres says at the end (an active org's hostname to another
   * gateway than its allocation's, a stopped one's anywhere but a 404): one line each.
   */
  readonly edgeRoutesAtEnd: ReadonlyArray<string>
}

/** The fault mix (relative weights). */
export const FAULT_WEIGHTS = {
  "gateway handshake 500": 3,
  "gateway handshake hang": 2,
  "gateway health hang": 2,
  "gateway slow handshake": 1,
  "gateway release 500": 1.5,
  "gateway release hang": 1,
  "gateway slow release": 1.5,
  "PowerDNS stopped": 1.5,
  "PowerDNS frozen (SIGSTOP)": 0.7,
  "nginx broken foreign file": 1.5,
  "nginx master frozen (SIGSTOP)": 0.7,
  "nginx frozen, master and workers (SIGSTOP)": 0.7,
  "nginx restarted (lua: route table emptied)": 0.8,
  "replica frozen (SIGSTOP)": 0.7,
  "replica lease lost": 1.2
} as const

/**
 * The faults of one remote edge, in the mix only when the run has remote edges (so a seed without
 * them replays the same choices as before they existed).
 */
export const EDGE_FAULT_WEIGHTS = {
  "edge frozen": 1.5,
  "edge restarted": 1,
  "edge partitioned": 1.5
} as const

export type FaultKind = keyof typeof FAULT_WEIGHTS | keyof typeof EDGE_FAULT_WEIGHTS

/** mulberry32: small, fast, good enough to replay choices from a seed. */
export const rng = (seed: number) => {
  let state = seed >>> 0
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return {
    next,
    between: (min: number, max: number) => Math.round(min + next() * (max - min)),
    pick: <A>(items: ReadonlyArray<A>): A => items[Math.floor(next() * items.length)]!,
    weighted: <A extends string>(weights: Readonly<Record<A, number>>): A => {
      const entries = Object.entries(weights) as Array<[A, number]>
      let roll = next() * entries.reduce((sum, [, weight]) => sum + weight, 0)
      for (const [key, weight] of entries) {
        roll -= weight
        if (roll < 0) return key
      }
      return entries[entries.length - 1]![0]
    }
  }
}

const STEPS = new Set(["allocate", "dns", "nginx-config", "nginx-reload", "handshake"])

const deterministicUuid = (random: ReturnType<typeof rng>) => {
  const hex = Array.from({ length: 32 }, () => Math.floor(random.next() * 16).toString(16)).join("")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-${"89ab"[Math.floor(random.next() * 4)]}${
    hex.slice(17, 20)
  }-${hex.slice(20, 32)}`
}

/** What one answer means, as a tally key; and whether it breaks the contract. */
const classify = (
  op: "start" | "stop",
  answer: { _tag: "Left"; left: RequestError } | { _tag: "Right"; right: ApiAnswer }
): { key: string; contractBreak?: string } => {
  if (answer._tag === "Left") {
    return { key: `${op} no answer (${/abort|timeout/i.test(answer.left.message) ? "timeout" : "connection"})` }
  }
  const { json, status, text } = answer.right
  if (op === "start") {
    if (status === 200) {
      const ok = typeof json?.allocation_id === "string" && typeof json?.gateway_id === "string"
      return ok
        ? { key: `start 200 ${json.reused ? "reused" : "new"}` }
        : { key: "start 200 malformed", contractBreak: `start 200 without ids: ${text}` }
    }
    if (status === 503 && json?._tag === "NoGatewayAvailable") return { key: "start 503 no gateway" }
    if ((status === 502 || status === 504) && STEPS.has(json?.step)) {
      // A claim that lost a race with another replica for the same org (see the concurrency test).
      const message = String(json.message ?? "")
      const detail = json.step === "allocate" && /duplicate key/.test(message)
        ? " (duplicate key)"
        : json.step === "dns" && /HTTP 5\d\d/.test(message)
        ? " (PowerDNS 5xx)"
        : ""
      return { key: `start ${status} ${json.step}${detail}` }
    }
    return { key: `start ${status} other`, contractBreak: `start ${status}: ${text.slice(0, 300)}` }
  }
  if (status === 200 && json?.released === true) {
    // The gateway did not confirm its release (a release fault): it is held back until it does.
    return json.gateway_release === "pending" ? { key: "stop 200 (release pending)" } : { key: "stop 200" }
  }
  if (status === 404) return { key: "stop 404" }
  if (status === 502 && STEPS.has(json?.step)) {
    return { key: `stop 502 ${json.step}${json.step === "dns" && /HTTP 5\d\d/.test(String(json.message)) ? " (PowerDNS 5xx)" : ""}` }
  }
  return { key: `stop ${status} other`, contractBreak: `stop ${status}: ${text.slice(0, 300)}` }
}

const sleep = (ms: number) => Effect.sleep(Duration.millis(ms))

/** Every switchable gateway fault off. */
const GATEWAY_OK = { health: "ok", handshake: "ok", handshakeDelayMs: 0, release: "ok", releaseDelayMs: 0 } as const

/** The gateways GET /pool shows held back for a release they owe (`health: "unreleased"`), one line each. */
const unreleasedGateways = (endpoint: ServiceProcess) =>
  request(endpoint, "GET", "/pool", { timeoutMs: 10_000 }).pipe(
    Effect.map((answer): ReadonlyArray<string> => {
      if (answer.status !== 200) return [`GET /pool: ${answer.status} ${answer.text.slice(0, 200)}`]
      const pool = answer.json as {
        unreleased?: unknown
        gateways?: ReadonlyArray<{ name?: string; health?: string; unreleased_allocation_id?: string | null; last_failure?: string | null }>
      }
      const held = (pool.gateways ?? []).filter((gateway) => gateway.health === "unreleased" || gateway.unreleased_allocation_id != null)
      const lines = held.map((gateway) =>
        `${gateway.name} owes the release of ${gateway.unreleased_allocation_id} (last failure: ${gateway.last_failure ?? "none"})`
      )
      if (pool.unreleased !== held.length) lines.push(`GET /pool: unreleased ${String(pool.unreleased)}, ${held.length} gateways shown unreleased`)
      return lines
    }),
    Effect.catchAll((error) => Effect.succeed([`GET /pool: ${error.message}`]))
  )


/**
 * Each sample gateway's held allocation against Postgres (the gateway's row): one line per gateway
 * holding another allocation than its live one, or one while Postgres gives it to nobody.
 */
const gatewaysHolding = (stack: LocalStack, db: Db) =>
  Effect.gen(function*() {
    const rows = yield* db.query<{ name: string; allocation_id: string | null }>("select name, allocation_id from gateways").pipe(
      Effect.either
    )
    if (rows._tag === "Left") return [`cannot read Postgres: ${rows.left.message}`]
    const given = new Map(rows.right.map((row) => [row.name, row.allocation_id]))
    const lines: Array<string> = []
    for (const gateway of stack.gateways) {
      const held = (yield* gateway.held)?.allocation_id ?? null
      const expected = given.get(gateway.name) ?? null
      if (held !== expected) {
        lines.push(`${gateway.name} holds ${held ?? "nothing"}; Postgres gives it ${expected === null ? "to nobody" : `to ${expected}`}`)
      }
    }
    return lines
  })

/** GET /pool's `held` (gateways held by an edge owing a removal); null when it did not answer. */
const poolHeld = (endpoint: ServiceProcess) =>
  request(endpoint, "GET", "/pool", { timeoutMs: 2000 }).pipe(
    Effect.map((answer) => (answer.status === 200 && typeof answer.json?.held === "number" ? answer.json.held as number : null)),
    Effect.orElseSucceed(() => null)
  )

/** An edge as GET /edges shows it: the fields the run reads. */
interface EdgeRow {
  readonly name: string
  readonly state: string
  readonly held_gateways: number
  readonly last_error: string | null
}

/** The edges that are not `ready` or hold gateways (GET /edges), one line each; one line too when fewer than `expected` are listed. */
const edgesNotReady = (endpoint: ServiceProcess, expected: number) =>
  request(endpoint, "GET", "/edges", { timeoutMs: 5000 }).pipe(
    Effect.map((answer): ReadonlyArray<string> => {
      if (answer.status !== 200) return [`GET /edges: ${answer.status} ${answer.text.slice(0, 200)}`]
      const edges = (answer.json?.edges ?? []) as ReadonlyArray<EdgeRow>
      const lines = edges.filter((edge) => edge.state !== "ready" || edge.held_gateways !== 0).map((edge) =>
        `${edge.name}: ${edge.state}, ${edge.held_gateways} held gateway(s)${edge.last_error === null ? "" : ` (last error: ${edge.last_error})`}`
      )
      if (edges.length !== expected) lines.push(`GET /edges lists ${edges.length} edges, not ${expected}`)
      return lines
    }),
    Effect.catchAll((error) => Effect.succeed([`GET /edges: ${error.message}`]))
  )

/** The removals edges still owe (edge_removals_owed), one line each, with the owing allocation's state now. */
const owedRemovals = (db: Db) =>
  db.query<{ edge: string; behind: boolean; behind_mark: string; allocation_id: string; state: string; finished_at: Date | null; since: Date; gateway: string; reason: string | null }>(
    `select e.name as edge, e.behind, e.behind_mark, o.allocation_id, a.state, a.finished_at, o.since, g.name as gateway, o.reason
       from edge_removals_owed o join edges e on e.id = o.edge_id
       join allocations a on a.id = o.allocation_id join gateways g on g.id = o.gateway_id
      order by o.since`
  ).pipe(
    Effect.map((rows) =>
      rows.map((row) =>
        `owed by ${row.edge} (behind ${row.behind}, mark ${row.behind_mark}): allocation ${row.allocation_id} on ${row.gateway}, owed since ` +
        `${row.since.toISOString()}, now ${row.state}${row.finished_at === null ? "" : ` (finished ${row.finished_at.toISOString()})`}: ${row.reason ?? ""}`
      )
    ),
    Effect.catchAll((error) => Effect.succeed([`cannot read edge_removals_owed: ${error.message}`]))
  )

/**
 * Every org on every edge (a fresh request with its hostname) against Postgres read before and
 * after: an active org must reach its allocation's gateway, an org with no live allocation must
 * get nginx's 404. An org whose allocation moved between the two reads is not judged.
 */
const edgeRouteMismatches = (
  stack: LocalStack,
  db: Db,
  edges: ReadonlyArray<{ readonly name: string; readonly port: number }>,
  orgs: ReadonlyArray<string>
) =>
  Effect.gen(function*() {
    const read = db.query<{ organization_id: string; id: string; state: string; gateway: string }>(
      `select a.organization_id, a.id, a.state, g.name as gateway
         from allocations a join gateways g on g.id = a.gateway_id
        where a.state in ('starting', 'active', 'stopping', 'rolling_back')`
    ).pipe(Effect.map((rows) => new Map(rows.map((row) => [row.organization_id, row]))), Effect.either)
    const before = yield* read
    const everyOrg = [...new Set([...orgs, ...(before._tag === "Right" ? before.right.keys() : [])])].sort()
    const asked = yield* Effect.forEach(
      edges.flatMap((edge) => everyOrg.map((org) => ({ edge, org }))),
      ({ edge, org }) =>
        rawGet({ port: edge.port, path: "/chaos/edge-check", headers: { host: hostnameOf(stack, org) }, timeoutMs: 3000 }).pipe(
          Effect.map((response) => {
            const answer = gatewayAnswerOf(response.body)
            return response.status === 200 && answer !== undefined ? answer.gateway : `HTTP ${response.status} ${response.body.slice(0, 80).trim()}`
          }),
          Effect.catchAll((error) => Effect.succeed(`no answer (${error.message})`)),
          Effect.map((answer) => ({ edge, org, answer }))
        ),
      { concurrency: 8 }
    )
    const after = yield* read
    const unreadable = (error: { readonly message: string }) => ({ requests: asked.length, mismatches: [`cannot read Postgres: ${error.message}`] })
    if (before._tag === "Left") return unreadable(before.left)
    if (after._tag === "Left") return unreadable(after.left)
    const mismatches: Array<string> = []
    for (const { answer, edge, org } of asked) {
      const was = before.right.get(org)
      const is = after.right.get(org)
      if (was?.id !== is?.id || was?.state !== is?.state) continue
      const expected = is === undefined ? "HTTP 404" : is.state === "active" ? is.gateway : undefined
      if (expected === undefined) {
        mismatches.push(`org ${org}: allocation ${is?.id} left ${is?.state}`)
      } else if (expected === "HTTP 404" ? !answer.startsWith("HTTP 404") : answer !== expected) {
        mismatches.push(`edge ${edge.name}: org ${org} answered ${answer}; Postgres: ${is === undefined ? "nothing live" : `active ${is.id} on ${is.gateway}`}`)
      }
    }
    return { requests: asked.length, mismatches: [...new Set(mismatches)] }
  })

/**
 * The Postgres sessions holding a replica's runner lease: the advisory lock keyed
 * `gateway_allocator_runner_key(runner)` (database/0002_runners_and_recovery.sql) of the runner
 * rows registered with the replica's pid.
 */
const LEASE_SESSIONS = `select l.pid as backend, a.client_port, r.id as runner
   from runners r
   join pg_locks l on l.locktype = 'advisory' and l.granted and l.objsubid = 1
                  and ((l.classid::bigint << 32) | l.objid::bigint) = gateway_allocator_runner_key(r.id)
   join pg_stat_activity a on a.pid = l.pid
  where r.pid = $1`

/** The replica's lease sessions, checked against the replica's own sockets (when /proc tells). */
const leaseSessionsOf = (db: Db, server: ServiceProcess) =>
  Effect.map(
    db.query<{ backend: number; client_port: number | null; runner: string }>(LEASE_SESSIONS, [server.pid]),
    (sessions) => {
      const ports = localPortsOf(server.pid)
      return ports.size === 0 ? sessions : sessions.filter((s) => s.client_port !== null && ports.has(s.client_port))
    }
  )

/**
 * Runs the chaos and returns its summary; the caller decides what fails (a test asserts no
 * violation and no contract break). Servers, and the stack when none is given, stop with the Scope.
 */
export const runChaos = (options: ChaosOptions): Effect.Effect<ChaosSummary, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const startedAt = Date.now()
    const log = options.log ?? ((line: string) => console.log(line))
    const settings = {
      operations: options.operations,
      gateways: options.stack?.gateways.length ?? options.gateways ?? 6,
      orgs: options.orgs ?? 10,
      replicas: options.replicas ?? 2,
      workers: options.workers ?? 4,
      timeLimitMs: options.timeLimitMs ?? 120_000,
      reconcileIntervalMs: options.reconcileIntervalMs ?? 1000,
      stepTimeoutMs: options.stepTimeoutMs ?? 2500,
      undoTimeoutMs: options.undoTimeoutMs ?? 2000,
      edges: options.edges ?? 0
    }
    const faultEveryMs = options.faultEveryMs ?? [700, 2500]
    const thinkMs = options.thinkMs ?? [100, 700]
    const killEveryMs = options.killEveryMs === undefined ? [8000, 16000] as const : options.killEveryMs
    log(`chaos: seed ${options.seed} ${JSON.stringify(settings)}`)

    const dataDir = options.stack === undefined ? mkdtempSync(path.join(tmpdir(), "gateway-allocator-chaos-")) : undefined
    const stack = options.stack ??
      (yield* startLocalStack({ dataDir: dataDir!, gateways: settings.gateways }).pipe(Effect.provide(NodeContext.layer)))
    const env = {
      RECONCILE_INTERVAL_MS: String(settings.reconcileIntervalMs),
      STEP_TIMEOUT_MS: String(settings.stepTimeoutMs),
      UNDO_TIMEOUT_MS: String(settings.undoTimeoutMs),
      SHUTDOWN_GRACE_MS: "2000",
      // Gateways that die and come back (the gateway faults below) are set aside and retried
      // around, as in production, with a short quarantine so they come back within the run.
      START_ATTEMPTS: "3",
      GATEWAY_QUARANTINE_MS: "1000",
      GATEWAY_HEALTH_INTERVAL_MS: "500"
    }
    // The first replica comes up alone: on a fresh database, replicas migrating at the same moment
    // is test/crash/replicas.test.ts's subject, not this run's.
    const names = Array.from({ length: settings.replicas }, (_, i) => `chaos-${String.fromCharCode(97 + i)}`)
    const first = yield* startServer(stack, { name: names[0]!, env })
    const servers: Array<ServiceProcess> = [
      first,
      ...(yield* Effect.forEach(names.slice(1), (name) => startServer(stack, { name, env }), { concurrency: "unbounded" }))
    ]
    yield* registerGateways(servers[0]!, stack)
    const db: Db = yield* openDb(stack.env["DATABASE_URL"]!)
    // The remote edges, each ready (filled by a replica) before the clients begin. Their route APIs
    // sit behind a dropping proxy, for the partition fault.
    const remoteEdges: Array<RemoteEdge> = []
    for (let i = 1; i <= settings.edges; i++) {
      const edge = yield* startRemoteEdge(servers[0]!, `chaos-edge-${i}`, { partitionable: true })
      yield* awaitEdgeState(servers[0]!, edge.edgeId, "ready", 30_000)
      remoteEdges.push(edge)
    }
    /** Every edge's org listener, the local one first: where the isolation checker and the final check ask. */
    const edgePorts = [
      { name: "local", port: stack.nginx.listenPort },
      ...remoteEdges.map((edge) => ({ name: edge.name, port: edge.port }))
    ]
    if (remoteEdges.length > 0) log(`chaos: edges ${edgePorts.map((edge) => `${edge.name} :${edge.port}`).join(", ")}`)

    const clients = rng(options.seed)
    const faultRng = rng(options.seed ^ 0x5bd1e995)
    const killRng = rng(options.seed ^ 0x27d4eb2f)
    const orgs = Array.from({ length: settings.orgs }, () => deterministicUuid(clients))
    const outcomes: Record<string, number> = {}
    const faults: Record<string, number> = {}
    const edgeFaults: Record<string, number> = {}
    const faultWeights: Partial<Record<FaultKind, number>> = {
      ...FAULT_WEIGHTS,
      ...(remoteEdges.length > 0 ? EDGE_FAULT_WEIGHTS : {}),
      ...options.faultWeights
    }
    const contractBreaks: Array<string> = []
    const count = (table: Record<string, number>, key: string) => {
      table[key] = (table[key] ?? 0) + 1
    }
    let issued = 0
    let slowestOpMs = 0
    let kills = 0
    let leaseFaults = 0
    let refusedRestarts = 0
    const flaps: Record<string, number> = {}
    /** Every org a client has asked to start so far: what the isolation checker asks nginx about. */
    const startedOrgs = new Set<string>()
    const flapProbability = options.flapProbability ?? 0.05
    const down = new Set<ServiceProcess>()
    const deadline = startedAt + settings.timeLimitMs

    // --- faults, each undone by itself after a while (and all of them at the end) ---
    const brokenFile = path.join(stack.nginx.confDir, "chaos-broken.conf")
    const faulted = new Set<string>()
    /** Starts a remote edge's nginx again (no-op when running); its ports may take a moment to come free: retried. */
    const startEdgeNginx = (edge: RemoteEdge) =>
      edge.nginx.start.pipe(
        Effect.retry(Schedule.spaced(Duration.millis(200)).pipe(Schedule.intersect(Schedule.recurs(25)))),
        Effect.orDie
      )
    const restoreAll = Effect.gen(function*() {
      yield* Effect.forEach(stack.gateways, (gateway) => gateway.setBehaviour(GATEWAY_OK), { discard: true })
      rmSync(brokenFile, { force: true })
      yield* stack.nginx.start.pipe(Effect.orDie)
      yield* Effect.forEach(nginxPids(stack), (pid) => signalPid(pid, "SIGCONT"))
      if (yield* stack.powerDns.isRunning) yield* signalPid(powerDnsPid(stack), "SIGCONT")
      yield* stack.powerDns.start
      for (const server of servers) yield* server.signal("SIGCONT")
      for (const edge of remoteEdges) {
        if (edge.proxy !== undefined) yield* edge.proxy.setDropping(false)
        yield* edge.freeze(false)
        yield* startEdgeNginx(edge)
      }
      faulted.clear()
    })
    const injectFault = Effect.gen(function*() {
      // Undefined weights are kinds the caller left out (only when it passes some).
      const kind = faultRng.weighted(faultWeights as Record<FaultKind, number>)
      const lasting = faultRng.between(400, 2500)
      if (kind.startsWith("edge ")) {
        const edge = faultRng.pick(remoteEdges)
        const lastingMs = faultRng.between(1000, 4000)
        // One fault at a time on one edge (a frozen nginx would not act on a restart's SIGTERM).
        const key = `edge ${edge.name}`
        if (faulted.has(key)) return
        faulted.add(key)
        count(faults, kind)
        count(edgeFaults, kind)
        yield* Effect.gen(function*() {
          if (kind === "edge frozen") {
            // Its master and workers stopped: route calls, probes and org traffic all hang.
            yield* edge.freeze(true)
            yield* sleep(lastingMs).pipe(Effect.ensuring(edge.freeze(false)))
          } else if (kind === "edge restarted") {
            // Shared memory does not survive: 503 for every org until a replica refills it.
            yield* edge.nginx.stop
            yield* sleep(Math.min(lasting, 500)).pipe(Effect.ensuring(startEdgeNginx(edge)))
          } else if (edge.proxy !== undefined) {
            // The replicas lose its route API (writes, removals, heartbeats), org traffic still flows.
            const proxy = edge.proxy
            yield* proxy.setDropping(true)
            yield* sleep(lastingMs).pipe(Effect.ensuring(proxy.setDropping(false)))
          }
          log(`chaos: ${kind}: ${edge.name} for ${kind === "edge restarted" ? "a restart" : `${lastingMs} ms`} after ${issued} ops`)
        }).pipe(Effect.ensuring(Effect.sync(() => faulted.delete(key))))
      } else if (kind.startsWith("gateway")) {
        const gateway = faultRng.pick(stack.gateways)
        if (faulted.has(gateway.name)) return
        faulted.add(gateway.name)
        count(faults, kind)
        // A release fault matters only when the gateway's org stops meanwhile: it lasts longer.
        // A slow release takes from a few hundred ms to the undo timeout: the service's call to
        // it (half the shorter of the step and undo timeouts) sometimes gives up first, and the
        // gateway, released or not, is held back until the health pass has its 2xx.
        const release = kind.includes("release")
        yield* gateway.setBehaviour(
          kind === "gateway handshake 500"
            ? { handshake: "fail" }
            : kind === "gateway handshake hang"
            ? { handshake: "hang" }
            : kind === "gateway health hang"
            ? { health: "hang" }
            : kind === "gateway release 500"
            ? { release: "fail" }
            : kind === "gateway release hang"
            ? { release: "hang" }
            : kind === "gateway slow release"
            ? { releaseDelayMs: faultRng.between(300, settings.undoTimeoutMs) }
            : { handshakeDelayMs: faultRng.between(500, 2000) }
        )
        yield* sleep(release ? faultRng.between(1500, 5000) : lasting)
        yield* gateway.setBehaviour(GATEWAY_OK)
        faulted.delete(gateway.name)
      } else if (kind === "replica lease lost") {
        // Its lease session dies (a network blip, an idle-session killer, a failover): Postgres
        // drops the advisory lock at once, so the replica's runner is dead to the others until
        // it takes the lock again. Sometimes it is also frozen a moment, long enough for the
        // other replica's reconciler to adopt its allocations in flight; then it wakes up.
        const freezeMs = faultRng.next() < 0.6 ? faultRng.between(1200, 3000) : 0
        const alive = servers.filter((server) => !down.has(server) && !faulted.has(server.name))
        if (alive.length === 0) return
        const server = faultRng.pick(alive)
        faulted.add(server.name)
        yield* Effect.gen(function*() {
          const sessions = yield* leaseSessionsOf(db, server).pipe(Effect.orElseSucceed(() => []))
          if (sessions.length === 0) {
            count(faults, "replica lease: no session found")
            return
          }
          for (const session of sessions) {
            yield* db.query("select pg_terminate_backend($1)", [session.backend]).pipe(Effect.ignore)
          }
          leaseFaults += 1
          count(faults, freezeMs > 0 ? "replica lease lost + frozen" : "replica lease lost")
          log(`chaos: terminated the lease session of ${server.name} (runner ${sessions.map((s) => s.runner).join(", ")})${
            freezeMs > 0 ? `, frozen ${freezeMs} ms` : ""
          }`)
          if (freezeMs > 0) {
            yield* server.signal("SIGSTOP")
            yield* sleep(freezeMs).pipe(Effect.ensuring(server.signal("SIGCONT")))
          }
        }).pipe(Effect.ensuring(Effect.sync(() => faulted.delete(server.name))))
      } else if (kind === "replica frozen (SIGSTOP)") {
        // A stalled process (GC pause, a VM stopped for a moment): alive, holding its locks, silent.
        const alive = servers.filter((server) => !down.has(server) && !faulted.has(server.name))
        if (alive.length === 0) return
        const server = faultRng.pick(alive)
        faulted.add(server.name)
        count(faults, kind)
        yield* server.signal("SIGSTOP")
        yield* sleep(Math.min(lasting, 2000)).pipe(Effect.ensuring(server.signal("SIGCONT")))
        faulted.delete(server.name)
      } else if (kind === "PowerDNS frozen (SIGSTOP)") {
        // Connections are accepted, nothing is answered: PATCHes and listings hang.
        if (faulted.has("pdns")) return
        faulted.add("pdns")
        count(faults, kind)
        const pid = powerDnsPid(stack)
        yield* signalPid(pid, "SIGSTOP")
        yield* sleep(Math.min(lasting, 1500)).pipe(Effect.ensuring(signalPid(pid, "SIGCONT")))
        faulted.delete("pdns")
      } else if (kind === "nginx master frozen (SIGSTOP)") {
        // `nginx -s reload` still succeeds; the old workers keep serving the old configuration.
        if (faulted.has("nginx")) return
        faulted.add("nginx")
        count(faults, kind)
        const pid = nginxMasterPid(stack)
        yield* signalPid(pid, "SIGSTOP")
        yield* sleep(Math.min(lasting, 1500)).pipe(Effect.ensuring(signalPid(pid, "SIGCONT")))
        faulted.delete("nginx")
      } else if (kind === "nginx frozen, master and workers (SIGSTOP)") {
        // Every call to nginx hangs: route writes and removals (lua), probes, the health wait.
        if (faulted.has("nginx")) return
        faulted.add("nginx")
        count(faults, kind)
        const pids = nginxPids(stack)
        yield* Effect.forEach(pids, (pid) => signalPid(pid, "SIGSTOP"))
        yield* sleep(Math.min(lasting, 1500)).pipe(Effect.ensuring(Effect.forEach(pids, (pid) => signalPid(pid, "SIGCONT"))))
        faulted.delete("nginx")
      } else if (kind === "nginx restarted (lua: route table emptied)") {
        // Shared memory does not survive a restart: 503 for every org until the routes are pushed back.
        if (faulted.has("nginx")) return
        faulted.add("nginx")
        count(faults, kind)
        yield* stack.nginx.stop
        yield* sleep(Math.min(lasting, 500)).pipe(Effect.ensuring(stack.nginx.start.pipe(Effect.orDie)))
        faulted.delete("nginx")
      } else if (kind === "PowerDNS stopped") {
        if (faulted.has("pdns")) return
        faulted.add("pdns")
        count(faults, kind)
        yield* stack.powerDns.stop
        yield* sleep(Math.min(lasting, 2000))
        yield* stack.powerDns.start
        faulted.delete("pdns")
      } else {
        if (faulted.has("nginx")) return
        faulted.add("nginx")
        count(faults, kind)
        writeFileSync(brokenFile, "this is { not nginx syntax\n")
        yield* sleep(Math.min(lasting, 1500))
        rmSync(brokenFile, { force: true })
        faulted.delete("nginx")
      }
    })

    /** Restarts a killed replica; while nginx's configuration is broken its start-up fails: retried. */
    const revive = (server: ServiceProcess) =>
      Effect.gen(function*() {
        for (let attempt = 1;; attempt++) {
          const restarted = yield* server.restart.pipe(Effect.either)
          if (restarted._tag === "Right") break
          refusedRestarts += 1
          log(`chaos: restart of ${server.name} failed (attempt ${attempt}): ${restarted.left.message.split("\n")[0]}`)
          if (attempt >= 20) return yield* Effect.fail(restarted.left)
          yield* sleep(1000)
        }
        down.delete(server)
      })

    const killOne = Effect.gen(function*() {
      const alive = servers.filter((server) => !down.has(server))
      // One replica always serves: the other is the one being killed.
      if (alive.length < 2) return
      const victim = killRng.pick(alive)
      down.add(victim)
      kills += 1
      log(`chaos: kill -9 ${victim.name} (pid ${victim.pid}) after ${issued} ops`)
      yield* victim.kill("SIGKILL")
      yield* sleep(killRng.between(0, 1000))
      yield* revive(victim)
    })

    const operationsOver = () => issued >= options.operations || Date.now() >= deadline

    /** One request, its answer classified and tallied. */
    const issue = (op: "start" | "stop", org: string, server: ServiceProcess) =>
      Effect.gen(function*() {
        issued += 1
        const n = issued
        if (op === "start") startedOrgs.add(org)
        const opStarted = Date.now()
        const answer = yield* (op === "start" ? startGateway(server, org, { timeoutMs: 60_000 }) : stopGateway(server, org, { timeoutMs: 60_000 }))
          .pipe(Effect.either)
        slowestOpMs = Math.max(slowestOpMs, Date.now() - opStarted)
        const outcome = classify(op, answer)
        count(outcomes, outcome.key)
        if (outcome.contractBreak !== undefined) contractBreaks.push(`${server.name} ${org}: ${outcome.contractBreak}`)
        if (n % 50 === 0) log(`chaos: ${n} ops issued (${Math.round((Date.now() - startedAt) / 1000)} s)`)
      })

    /**
     * One org flapped across the replicas: start on one, stop on the other, start again on the
     * first... (3 to 5 requests), either each right after the previous answer, or all in flight
     * together, sent 0-80 ms apart.
     */
    const flap = (org: string, alive: ReadonlyArray<ServiceProcess>) =>
      Effect.gen(function*() {
        const first = clients.pick(alive)
        const others = alive.filter((server) => server !== first)
        const second = others.length === 0 ? first : clients.pick(others)
        const length = clients.between(3, 5)
        const overlapping = clients.next() < 0.5
        const plan = Array.from({ length }, (_, i) => ({
          op: i % 2 === 0 ? "start" as const : "stop" as const,
          server: i % 2 === 0 ? first : second,
          gapMs: clients.between(0, 80)
        }))
        count(flaps, overlapping ? "overlapping" : "back to back")
        if (!overlapping) {
          for (const step of plan) yield* issue(step.op, org, step.server)
          return
        }
        let at = 0
        yield* Effect.forEach(plan.map((step) => ({ ...step, at: (at += step.gapMs) })), (step) =>
          sleep(step.at).pipe(Effect.zipRight(issue(step.op, org, step.server))), { concurrency: "unbounded", discard: true })
      })

    const worker = (id: number) =>
      Effect.gen(function*() {
        while (!operationsOver()) {
          const alive = servers.filter((server) => !down.has(server))
          if (alive.length === 0) {
            yield* sleep(100)
            continue
          }
          const org = clients.pick(orgs)
          if (clients.next() < flapProbability) {
            yield* flap(org, alive)
          } else {
            const op = clients.next() < 0.55 ? "start" as const : "stop" as const
            yield* issue(op, org, clients.pick(alive))
          }
          yield* sleep(clients.between(thinkMs[0], thinkMs[1]))
        }
      }).pipe(Effect.annotateLogs({ worker: id }))

    const faultLoop = Effect.gen(function*() {
      const running = new Set<Fiber.RuntimeFiber<void, unknown>>()
      yield* Effect.gen(function*() {
        while (true) {
          yield* sleep(faultRng.between(faultEveryMs[0], faultEveryMs[1]))
          const fiber = yield* Effect.fork(injectFault)
          running.add(fiber)
          fiber.addObserver(() => running.delete(fiber))
        }
      }).pipe(Effect.onInterrupt(() => Effect.forEach([...running], Fiber.interrupt, { discard: true })))
    })

    const killLoop = killEveryMs === null || settings.replicas < 2
      ? Effect.never
      : Effect.gen(function*() {
        while (true) {
          yield* sleep(killRng.between(killEveryMs[0], killEveryMs[1]))
          yield* killOne
        }
      })

    /** Until every running replica holds its runner lease again (a lease fault's aftermath); false after 20 s. */
    const awaitLeases = Effect.gen(function*() {
      const until = Date.now() + 20_000
      for (const server of servers) {
        while (server.running()) {
          const sessions = yield* leaseSessionsOf(db, server).pipe(Effect.orElseSucceed(() => []))
          if (sessions.length > 0) break
          if (Date.now() >= until) {
            log(`chaos: ${server.name} does not hold its runner lease 20 s after the faults stopped`)
            return false
          }
          yield* sleep(100)
        }
      }
      return true
    })

    /** A replica to ask: one that is up and not frozen by a fault, else the first. */
    const anyReplica = () => servers.find((server) => !down.has(server) && !faulted.has(server.name) && server.running()) ?? servers[0]!

    /** GET /pool's `held`, every second, the most seen kept (a frozen or killed replica's turn is skipped). */
    let heldMax = 0
    const heldLoop = Effect.gen(function*() {
      while (true) {
        const held = yield* poolHeld(anyReplica())
        if (held !== null) heldMax = Math.max(heldMax, held)
        yield* sleep(1000)
      }
    })

    // --- the run ---
    // The isolation checker asks about every org started so far, on every edge, from the first
    // start to the final check (it stops by itself with the Scope should the run fail before that).
    const isolation = yield* startIsolationChecker({
      stack,
      orgs: () => startedOrgs,
      intervalMs: options.isolationIntervalMs ?? 50,
      longLivedConnections: options.longLivedConnections ?? 4,
      edgePorts: edgePorts.map((edge) => edge.port),
      log
    })
    const heldFiber = yield* Effect.fork(heldLoop)
    const faultFiber = yield* Effect.fork(faultLoop)
    const killFiber = yield* Effect.fork(killLoop)
    yield* Effect.forEach(Array.from({ length: settings.workers }, (_, i) => i), worker, {
      concurrency: "unbounded",
      discard: true
    })
    const operationsMs = Date.now() - startedAt
    log(`chaos: ${issued} ops in ${operationsMs} ms; stopping the faults`)

    // --- quiescence: no fault left, every replica up, then two reconcile periods ---
    // A kill in progress finishes with its restart (never leave a replica down).
    const killExit = yield* Fiber.interrupt(killFiber)
    if (Exit.isFailure(killExit) && !Exit.isInterrupted(killExit)) log(`chaos: kill loop failed: ${String(killExit.cause)}`)
    yield* Fiber.interrupt(faultFiber)
    yield* restoreAll
    // Every edge thawed, its partition healed, its nginx up: the last fault is over.
    const faultsOffAt = Date.now()
    // From now on, every edge ready again and holding no gateway (its owed removals done) within
    // 30 s, watched while the replicas come back and the checks below run: when is the figure.
    const edgesReadyFiber = yield* Effect.fork(Effect.gen(function*() {
      if (remoteEdges.length === 0) return { edgesReadyAfterMs: null, edgesAtEnd: [] as ReadonlyArray<string> }
      while (true) {
        const notReady = yield* edgesNotReady(anyReplica(), edgePorts.length)
        if (notReady.length === 0) return { edgesReadyAfterMs: Date.now() - faultsOffAt, edgesAtEnd: notReady }
        if (Date.now() - faultsOffAt >= 30_000) {
          // What each edge still owes, from Postgres: which allocation, since when, in what state now.
          const atEnd = [...notReady, ...(yield* owedRemovals(db))]
          log(`chaos: edges not ready, or holding gateways, 30 s after the last fault:\n  ${atEnd.join("\n  ")}`)
          return { edgesReadyAfterMs: null, edgesAtEnd: atEnd }
        }
        yield* sleep(250)
      }
    }))
    for (const server of servers) {
      if (!server.running() || down.has(server)) yield* revive(server)
    }
    yield* awaitLeases
    const quietAt = Date.now()
    yield* sleep(2 * settings.reconcileIntervalMs)
    const target = { stack, endpoint: servers[0]!, db, orgs }
    const report = yield* checkInvariants(target)
    let convergedAfterMs: number | null = null
    if (report.violations.length > 0) {
      log(`chaos: violations ${2 * settings.reconcileIntervalMs} ms after the last fault:\n${describeReport(report)}`)
      while (Date.now() - quietAt < 30_000) {
        yield* sleep(500)
        const later = yield* checkInvariants(target)
        if (later.violations.length === 0) {
          convergedAfterMs = Date.now() - quietAt
          break
        }
      }
    }
    // No gateway left owing a release: with every gateway answering again, the health pass (every
    // GATEWAY_HEALTH_INTERVAL_MS) must have had every held-back one release and come back. Then
    // every gateway holds exactly what Postgres gives it (its live allocation, or nothing).
    let unreleasedAtEnd: ReadonlyArray<string> = []
    let releasedAllAfterMs: number | null = null
    let gatewaysHoldingAtEnd: ReadonlyArray<string> = []
    while (true) {
      unreleasedAtEnd = yield* unreleasedGateways(servers[0]!)
      if (unreleasedAtEnd.length === 0) {
        releasedAllAfterMs ??= Date.now() - quietAt
        gatewaysHoldingAtEnd = yield* gatewaysHolding(stack, db)
        if (gatewaysHoldingAtEnd.length === 0) break
      }
      if (Date.now() - quietAt >= 30_000) {
        if (unreleasedAtEnd.length > 0) {
          log(`chaos: gateways still owe a release 30 s after the last fault:\n  ${unreleasedAtEnd.join("\n  ")}`)
        }
        if (gatewaysHoldingAtEnd.length > 0) {
          log(`chaos: gateways hold what Postgres does not give them:\n  ${gatewaysHoldingAtEnd.join("\n  ")}`)
        }
        break
      }
      yield* sleep(250)
    }
    // The isolation checker kept asking every edge until they were all ready (catch-ups included).
    const { edgesAtEnd, edgesReadyAfterMs } = yield* Fiber.join(edgesReadyFiber)
    yield* Fiber.interrupt(heldFiber)
    const heldAtEnd = remoteEdges.length > 0 ? yield* poolHeld(servers[0]!) : null
    const isolationReport = yield* isolation.stop
    if (isolationFailed(isolationReport)) log(`chaos: tenant isolation broken:\n${describeIsolation(isolationReport)}`)
    // Every edge routes every org as Postgres says: an active org's hostname to its allocation's
    // gateway, any other's nowhere (404). A catch-up finishing is given 5 s.
    let edgeRoutesAtEnd: ReadonlyArray<string> = []
    let edgeRoutesChecked = 0
    if (remoteEdges.length > 0) {
      const until = Date.now() + 5000
      while (true) {
        const checked = yield* edgeRouteMismatches(stack, db, edgePorts, orgs)
        edgeRoutesChecked += checked.requests
        edgeRoutesAtEnd = checked.mismatches
        if (edgeRoutesAtEnd.length === 0 || Date.now() >= until) break
        yield* sleep(500)
      }
      if (edgeRoutesAtEnd.length > 0) log(`chaos: edges route orgs otherwise than Postgres says:\n  ${edgeRoutesAtEnd.join("\n  ")}`)
    }
    return {
      seed: options.seed,
      settings,
      operations: issued,
      outcomes,
      contractBreaks,
      faults,
      leaseFaults,
      flaps,
      kills,
      refusedRestarts,
      operationsMs,
      slowestOpMs,
      isolation: isolationReport,
      report,
      convergedAfterMs,
      unreleasedAtEnd,
      releasedAllAfterMs,
      gatewaysHoldingAtEnd,
      durationMs: Date.now() - startedAt,
      dataDir,
      edges: remoteEdges.length,
      edgeFaults,
      heldMax,
      heldAtEnd,
      edgesReadyAfterMs,
      edgesAtEnd,
      edgeRoutesChecked,
      edgeRoutesAtEnd
    } satisfies ChaosSummary
  })

/**
 * Whether tenant isolation broke: an org's request reached another org's gateway, or a long-lived
 * connection was answered for another allocation, for none (it outlived the release), or while
 * another org held its gateway (handed over before the release).
 */
export const isolationFailed = (report: IsolationReport): boolean =>
  report.crossings > 0 || report.longLived.crossings > 0 || report.longLived.outlived > 0 || report.longLived.handedOver > 0

/**
 * Whether the run failed: an invariant violated, a contract broken, tenant isolation broken (on
 * any edge), a gateway still owing its release, or holding an allocation Postgres does not give
 * it, after the faults stopped; with remote edges, an edge not ready or still holding a gateway
 * 30 s after the last fault, or routing an org otherwise than Postgres says.
 */
export const chaosFailed = (summary: ChaosSummary): boolean =>
  summary.report.violations.length > 0 || summary.contractBreaks.length > 0 || isolationFailed(summary.isolation) ||
  summary.unreleasedAtEnd.length > 0 || summary.gatewaysHoldingAtEnd.length > 0 ||
  (summary.edges > 0 && (summary.edgesReadyAfterMs === null || summary.heldAtEnd !== 0 || summary.edgeRoutesAtEnd.length > 0))

/** The summary as text: ops by outcome, faults, kills, tenant isolation, the invariants' verdict. */
export const formatSummary = (summary: ChaosSummary): string => {
  const table = (record: Readonly<Record<string, number>>) =>
    Object.entries(record)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([key, n]) => `    ${key.padEnd(34, " ")} ${String(n).padStart(6, " ")}`)
  return [
    `chaos summary (seed ${summary.seed}; replay with --seed ${summary.seed})`,
    `  settings: ${JSON.stringify(summary.settings)}`,
    `  operations: ${summary.operations} in ${(summary.operationsMs / 1000).toFixed(1)} s (slowest ${summary.slowestOpMs} ms), by outcome:`,
    ...table(summary.outcomes),
    `  flaps of one org across the replicas: ${Object.values(summary.flaps).reduce((a, b) => a + b, 0)}`,
    ...table(summary.flaps),
    `  faults injected: ${Object.values(summary.faults).reduce((a, b) => a + b, 0)} (runner leases terminated: ${summary.leaseFaults})`,
    ...table(summary.faults),
    `  kill -9 + restart: ${summary.kills} (restarts refused and retried: ${summary.refusedRestarts})`,
    ...(summary.edges === 0
      ? [`  edges: the local one only; gateways held by an edge (GET /pool held) at most: ${summary.heldMax}`]
      : [
        `  edges: ${summary.edges + 1} (the local one and ${summary.edges} remote), edge faults: ${
          Object.values(summary.edgeFaults).reduce((a, b) => a + b, 0)
        }`,
        ...table(summary.edgeFaults),
        `    gateways held by an edge (GET /pool held, every second): at most ${summary.heldMax}, at the end ${summary.heldAtEnd ?? "(not read)"}`,
        summary.edgesReadyAfterMs === null
          ? `    edges NOT all ready (or still holding gateways) 30 s after the last fault: ${summary.edgesAtEnd.length}`
          : `    every edge ready, holding no gateway: ${summary.edgesReadyAfterMs} ms after the last fault`,
        ...summary.edgesAtEnd.map((line) => `      ${line}`),
        `    every org on every edge as Postgres says (${summary.edgeRoutesChecked} requests): ${
          summary.edgeRoutesAtEnd.length === 0 ? "yes" : `${summary.edgeRoutesAtEnd.length} mismatch(es)`
        }`,
        ...summary.edgeRoutesAtEnd.slice(0, 20).map((line) => `      ${line}`)
      ]),
    `  tenant isolation through ${summary.edges === 0 ? "nginx" : "every edge"}, continuously:`,
    ...describeIsolation(summary.isolation).split("\n").map((line) => `    ${line}`),
    `  contract breaks (5xx without a step, malformed bodies): ${summary.contractBreaks.length}`,
    ...summary.contractBreaks.slice(0, 10).map((line) => `    ${line}`),
    `  invariants, two reconcile periods after the last fault:`,
    ...describeReport(summary.report).split("\n").map((line) => `    ${line}`),
    ...(summary.report.violations.length === 0
      ? []
      : [
        summary.convergedAfterMs === null
          ? "    still violated 30 s after the last fault"
          : `    they held ${summary.convergedAfterMs} ms after the last fault`
      ]),
    summary.unreleasedAtEnd.length === 0
      ? `  gateways owing a release (GET /pool unreleased): none, ${summary.releasedAllAfterMs} ms after the last fault`
      : `  gateways still owing a release 30 s after the last fault (GET /pool unreleased): ${summary.unreleasedAtEnd.length}`,
    ...summary.unreleasedAtEnd.map((line) => `    ${line}`),
    `  gateways holding what Postgres does not give them: ${summary.gatewaysHoldingAtEnd.length === 0 ? "none" : summary.gatewaysHoldingAtEnd.length}`,
    ...summary.gatewaysHoldingAtEnd.map((line) => `    ${line}`),
    `  total ${(summary.durationMs / 1000).toFixed(1)} s`
  ].join("\n")
}

// --- CLI: npm run chaos -- --ops 2000 --seed 42 ---------------------------------------------

const parseArgs = (argv: ReadonlyArray<string>) => {
  const flags = new Map<string, string>()
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!
    if (!flag.startsWith("--")) throw new Error(`unexpected argument ${flag}`)
    const value = argv[i + 1]
    if (value === undefined || value.startsWith("--")) throw new Error(`${flag} needs a value`)
    flags.set(flag.slice(2), value)
    i++
  }
  const number = (name: string, fallback: number) => {
    const raw = flags.get(name)
    flags.delete(name)
    if (raw === undefined) return fallback
    const value = Number(raw)
    if (!Number.isInteger(value) || value < 0) throw new Error(`--${name} must be a non-negative integer, got ${raw}`)
    return value
  }
  const range = (name: string): readonly [number, number] | undefined => {
    const raw = flags.get(name)
    flags.delete(name)
    if (raw === undefined) return undefined
    const match = /^(\d+)-(\d+)$/.exec(raw)
    if (match === null || Number(match[1]) > Number(match[2])) throw new Error(`--${name} must be MIN-MAX (ms), got ${raw}`)
    return [Number(match[1]), Number(match[2])]
  }
  const optionalRange = (name: string) => {
    const value = range(name)
    return value === undefined ? {} : { [name === "think-ms" ? "thinkMs" : name === "fault-every-ms" ? "faultEveryMs" : "killEveryMs"]: value }
  }
  const options = {
    ...optionalRange("think-ms"),
    ...optionalRange("fault-every-ms"),
    ...optionalRange("kill-every-ms"),
    operations: number("ops", 2000),
    seed: number("seed", Math.floor(Math.random() * 2 ** 31)),
    gateways: number("gateways", 6),
    orgs: number("orgs", 12),
    replicas: number("replicas", 2),
    workers: number("workers", 4),
    longLivedConnections: number("long-lived", 4),
    edges: number("edges", 0),
    timeLimitMs: number("time-limit-s", 900) * 1000
  }
  if (flags.size > 0) throw new Error(`unknown flags: ${[...flags.keys()].map((f) => `--${f}`).join(", ")}`)
  return options
}

const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href

if (isMain) {
  let options: ReturnType<typeof parseArgs>
  try {
    options = parseArgs(process.argv.slice(2))
  } catch (error) {
    console.error(`chaos: ${(error as Error).message}`)
    console.error(
      "usage: npm run chaos -- [--ops N] [--seed N] [--gateways N] [--orgs N] [--replicas N] [--workers N] [--time-limit-s N]" +
        " [--think-ms MIN-MAX] [--fault-every-ms MIN-MAX] [--kill-every-ms MIN-MAX] [--long-lived N] [--edges N]"
    )
    process.exit(2)
  }
  Effect.runPromise(Effect.scoped(runChaos(options))).then(
    (summary) => {
      console.log(formatSummary(summary))
      const failed = chaosFailed(summary)
      // A clean run's files are of no use; a failed run's logs are (servers/*.log, nginx/, powerdns/).
      if (summary.dataDir !== undefined) {
        if (failed) console.log(`chaos: the stack's files and the replicas' logs are kept in ${summary.dataDir}`)
        else rmSync(summary.dataDir, { recursive: true, force: true })
      }
      process.exit(failed ? 1 : 0)
    },
    (error) => {
      console.error(`chaos: the run failed (seed ${options.seed}):`, error)
      process.exit(1)
    }
  )
}
