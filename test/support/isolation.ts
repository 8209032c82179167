// Tenant isolation, checked continuously while things move (the invariants of ./invariants.ts are
// only asked once everything settled): every ~50 ms, for every org started so far, one request
// through nginx with the org's hostname, on a fresh connection like a real client's, and the name
// of the sample gateway that answered; Postgres read right before and right after each round.
//
// A crossing: org X's request was answered by gateway G while a live allocation of another org Y
// held G in both snapshots, the same allocation. An allocation id is live once, in one stretch
// (starting -> active -> stopping / rolling_back -> finished, never back), and never changes
// gateway, so that allocation held G during the whole request: X's traffic reached a gateway
// handed to Y. An org stopped or started while the request ran cannot make one (its allocation is
// missing from a snapshot). Any crossing is a failure.
//
// A stale route: X's request answered by a gateway that was X's in neither snapshot and that no
// other org held throughout (a released gateway, or one changing hands during the request). Not a
// failure, but counted and sampled: a route outliving its allocation.
import { Data, Duration, Effect, Fiber, type Scope } from "effect"
import { readFile } from "node:fs/promises"
import * as http from "node:http"
import path from "node:path"
import type { LocalStack } from "../../src/dev/stack.ts"
import { EDGE_FILE, PROBE_PATH, PROBE_SECRET_HEADER } from "../../src/nginx/config.ts"
import { type Db, edgeRouteOf, hostnameOf, openDb } from "./invariants.ts"

const LIVE = ["starting", "active", "stopping", "rolling_back"]

export interface IsolationOptions {
  readonly stack: LocalStack
  /** The orgs to ask about, read at the start of every round (those any client has started so far). */
  readonly orgs: () => Iterable<string>
  /** Postgres; a small pool of the checker's own is opened on the stack's DATABASE_URL when absent. */
  readonly db?: Db
  /** Pause from the start of a round to the start of the next (default 50 ms; at least 10 ms between rounds). */
  readonly intervalMs?: number
  /** Bound on one request through nginx (default 1000 ms). */
  readonly requestTimeoutMs?: number
  /** Bound on one snapshot query (default 2000 ms); a round whose snapshot fails is skipped. */
  readonly snapshotTimeoutMs?: number
  /** Samples kept of each kind (default 20). */
  readonly maxSamples?: number
  /** The checker ends by itself once this says so (it also ends with `stop` and with the Scope). */
  readonly until?: () => boolean
  readonly log?: (line: string) => void
}

export interface HolderView {
  readonly org: string
  readonly allocationId: string
  readonly state: string
}

export interface CrossingSample {
  /** When the request was sent (ISO). */
  readonly at: string
  /** The org whose hostname was asked. */
  readonly org: string
  /** The gateway that answered. */
  readonly gateway: string
  /** The other org's allocation that held that gateway in both snapshots. */
  readonly heldBy: string
  readonly allocationId: string
  readonly stateBefore: string
  readonly stateAfter: string
  /** The org's own live allocations in the snapshots ("none" when it had none). */
  readonly ownBefore: string
  readonly ownAfter: string
  /** Looked at right after the round: the org's route as nginx holds it and what nginx's route probe answers. */
  readonly diagnosis: string
}

export interface StaleRouteSample {
  readonly at: string
  readonly org: string
  readonly gateway: string
  /** Who held that gateway in each snapshot ("free" when nobody did). */
  readonly holderBefore: string
  readonly holderAfter: string
  readonly ownBefore: string
  readonly ownAfter: string
  /** As for a crossing: the org's route as nginx holds it and nginx's route probe right after the round. */
  readonly diagnosis: string
}

export interface IsolationReport {
  /** Completed rounds (both snapshots read, every request answered or given up). */
  readonly rounds: number
  /** Rounds dropped because a snapshot could not be read. */
  readonly skippedRounds: number
  /** Requests of completed rounds. */
  readonly requests: number
  /** How the requests ended. */
  readonly answers: {
    /** 200 from a gateway that was the org's in the before- or the after-snapshot. */
    readonly ownGateway: number
    /** nginx's own 404: no route for the hostname. */
    readonly notRouted: number
    /** Any other HTTP status (502/504: the upstream did not answer), or a 200 not from a sample gateway. */
    readonly otherStatus: number
    /** No answer within the bound, connection refused or reset. */
    readonly noAnswer: number
    readonly crossings: number
    readonly staleRoutes: number
  }
  /**
   * Not a failure, for the record: the org held the same allocation, active, in both snapshots,
   * and nginx answered 404 (or something other than its gateway).
   */
  readonly unavailableWhileActive: number
  readonly crossings: number
  readonly crossingSamples: ReadonlyArray<CrossingSample>
  readonly staleRoutes: number
  readonly staleRouteSamples: ReadonlyArray<StaleRouteSample>
  /** A few of the non-200 answers and request errors, for the record. */
  readonly otherSamples: ReadonlyArray<string>
  /** Slowest round (snapshot, requests, snapshot), ms. */
  readonly slowestRoundMs: number
  readonly durationMs: number
}

export interface IsolationChecker {
  /** The figures so far (rounds that completed). */
  readonly figures: () => IsolationReport
  /** Stops the checker (a round in flight is dropped) and returns the final figures. */
  readonly stop: Effect.Effect<IsolationReport>
}

export class IsolationError extends Data.TaggedError("IsolationError")<{ readonly message: string }> {}

interface LiveRow {
  readonly id: string
  readonly organization_id: string
  readonly state: string
  readonly gateway: string
}

interface Snapshot {
  readonly byGateway: ReadonlyMap<string, ReadonlyArray<LiveRow>>
  readonly byOrg: ReadonlyMap<string, ReadonlyArray<LiveRow>>
}

type Answer =
  | { readonly _tag: "Gateway"; readonly gateway: string }
  | { readonly _tag: "Status"; readonly status: number; readonly body: string }
  | { readonly _tag: "NoAnswer"; readonly message: string }

/** One GET on a fresh connection (no agent, `connection: close`) to nginx on loopback, bounded. */
const getThroughNginx = (
  port: number,
  host: string,
  pathname: string,
  timeoutMs: number,
  extraHeaders: Readonly<Record<string, string>> = {}
) =>
  Effect.async<{ status: number; body: string }, IsolationError>((resume) => {
    let done = false
    const finish = (effect: Effect.Effect<{ status: number; body: string }, IsolationError>) => {
      if (done) return
      done = true
      clearTimeout(timer)
      resume(effect)
    }
    const req = http.request(
      { host: "127.0.0.1", port, path: pathname, method: "GET", headers: { ...extraHeaders, host, connection: "close" }, agent: false },
      (response) => {
        const chunks: Array<Buffer> = []
        response.on("data", (chunk: Buffer) => chunks.push(chunk))
        response.on("error", (error) => finish(Effect.fail(new IsolationError({ message: error.message }))))
        response.on("end", () =>
          finish(Effect.succeed({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") })))
      }
    )
    // A bound on the whole exchange, not only on idle time.
    const timer = setTimeout(() => req.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
    req.on("error", (error) => finish(Effect.fail(new IsolationError({ message: error.message }))))
    req.end()
    return Effect.sync(() => {
      done = true
      clearTimeout(timer)
      req.destroy()
    })
  })

const ask = (stack: LocalStack, org: string, timeoutMs: number): Effect.Effect<Answer> =>
  getThroughNginx(stack.nginx.listenPort, hostnameOf(stack, org), `/__isolation/${org}`, timeoutMs).pipe(
    Effect.map((response): Answer => {
      if (response.status === 200) {
        try {
          const parsed = JSON.parse(response.body) as { gateway?: unknown }
          if (typeof parsed.gateway === "string") return { _tag: "Gateway", gateway: parsed.gateway }
        } catch {
          // not a sample gateway's answer
        }
      }
      return { _tag: "Status", status: response.status, body: response.body.slice(0, 160) }
    }),
    Effect.catchAll((error) => Effect.succeed<Answer>({ _tag: "NoAnswer", message: error.message }))
  )

const describeOwn = (rows: ReadonlyArray<LiveRow> | undefined) =>
  rows === undefined || rows.length === 0 ? "none" : rows.map((row) => `${row.state} ${row.id} on ${row.gateway}`).join(", ")

const describeHolder = (rows: ReadonlyArray<LiveRow> | undefined) =>
  rows === undefined || rows.length === 0
    ? "free"
    : rows.map((row) => `org ${row.organization_id} (${row.state} ${row.id})`).join(", ")

/**
 * Starts the checker as a fiber of the Scope: it runs until `stop`, until `options.until()` says
 * so, or until the Scope closes, whichever comes first.
 */
export const startIsolationChecker = (options: IsolationOptions): Effect.Effect<IsolationChecker, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { stack } = options
    const db = options.db ?? (yield* openDb(stack.env["DATABASE_URL"]!))
    const intervalMs = options.intervalMs ?? 50
    const requestTimeoutMs = options.requestTimeoutMs ?? 1000
    const snapshotTimeoutMs = options.snapshotTimeoutMs ?? 2000
    const maxSamples = options.maxSamples ?? 20
    const log = options.log ?? (() => {})
    const startedAt = Date.now()

    let rounds = 0
    let skippedRounds = 0
    let requests = 0
    let unavailableWhileActive = 0
    let slowestRoundMs = 0
    let stoppedAt: number | undefined
    const answers = { ownGateway: 0, notRouted: 0, otherStatus: 0, noAnswer: 0, crossings: 0, staleRoutes: 0 }
    const crossingSamples: Array<CrossingSample> = []
    const staleRouteSamples: Array<StaleRouteSample> = []
    const otherSamples: Array<string> = []

    const figures = (): IsolationReport => ({
      rounds,
      skippedRounds,
      requests,
      answers: { ...answers },
      unavailableWhileActive,
      crossings: answers.crossings,
      crossingSamples: [...crossingSamples],
      staleRoutes: answers.staleRoutes,
      staleRouteSamples: [...staleRouteSamples],
      otherSamples: [...otherSamples],
      slowestRoundMs,
      durationMs: (stoppedAt ?? Date.now()) - startedAt
    })

    // One statement: allocations and gateway names are never read torn apart.
    const snapshot = db.query<LiveRow>(
      `select a.id, a.organization_id, a.state, g.name as gateway
         from allocations a join gateways g on g.id = a.gateway_id
        where a.state = any($1)`,
      [LIVE]
    ).pipe(
      Effect.timeoutFail({
        duration: Duration.millis(snapshotTimeoutMs),
        onTimeout: () => new IsolationError({ message: `snapshot query took over ${snapshotTimeoutMs} ms` })
      }),
      Effect.map((rows): Snapshot => {
        const byGateway = new Map<string, Array<LiveRow>>()
        const byOrg = new Map<string, Array<LiveRow>>()
        for (const row of rows) {
          byGateway.set(row.gateway, [...(byGateway.get(row.gateway) ?? []), row])
          byOrg.set(row.organization_id, [...(byOrg.get(row.organization_id) ?? []), row])
        }
        return { byGateway, byOrg }
      }),
      Effect.either
    )

    /** What nginx holds as the org's route and what its route probe says right now (for a crossing's sample). */
    const diagnose = (org: string) =>
      Effect.gen(function*() {
        // The route nginx holds for the org, in either mode (table entry or route file).
        const route = yield* edgeRouteOf(stack, org).pipe(
          Effect.map((text) => text ?? "(none)"),
          Effect.catchAllCause(() => Effect.succeed("(could not read it)"))
        )
        // nginx answers its route probe (the allocation its map holds, the worker's pid) only with
        // the edge's secret, which the service keeps in its NGINX_CONF_DIR.
        const secret = yield* Effect.promise(() =>
          readFile(path.join(stack.nginx.confDir, EDGE_FILE), "utf8")
            .then((text) => String((JSON.parse(text) as { probeSecret?: unknown }).probeSecret ?? ""))
            .catch(() => "")
        )
        const probe = yield* getThroughNginx(
          stack.nginx.listenPort,
          hostnameOf(stack, org),
          PROBE_PATH,
          requestTimeoutMs,
          secret === "" ? {} : { [PROBE_SECRET_HEADER]: secret }
        ).pipe(
          Effect.map((response) => `${response.status} "${response.body.replace(/\s+/g, " ").trim().slice(0, 120)}"`),
          Effect.catchAll((error) => Effect.succeed(`no answer (${error.message})`))
        )
        return `route held: ${route.trim()}; nginx route probe right after (allocation, worker pid): ${probe}`
      })

    const round = Effect.gen(function*() {
      const orgs = [...new Set(options.orgs())]
      if (orgs.length === 0) return
      const roundStarted = Date.now()
      const before = yield* snapshot
      if (before._tag === "Left") {
        skippedRounds += 1
        if (skippedRounds <= 3) log(`isolation: round skipped: ${before.left.message}`)
        return
      }
      const sentAt = new Date().toISOString()
      const asked = yield* Effect.forEach(orgs, (org) => Effect.map(ask(stack, org, requestTimeoutMs), (answer) => [org, answer] as const), {
        concurrency: "unbounded"
      })
      const after = yield* snapshot
      if (after._tag === "Left") {
        skippedRounds += 1
        if (skippedRounds <= 3) log(`isolation: round skipped: ${after.left.message}`)
        return
      }
      const b = before.right
      const a = after.right
      rounds += 1
      requests += asked.length
      slowestRoundMs = Math.max(slowestRoundMs, Date.now() - roundStarted)
      const crossed: Array<Omit<CrossingSample, "diagnosis">> = []
      const stale: Array<Omit<StaleRouteSample, "diagnosis">> = []

      for (const [org, answer] of asked) {
        const ownBefore = b.byOrg.get(org) ?? []
        const ownAfter = a.byOrg.get(org) ?? []
        const steadyActive = ownBefore.length === 1 && ownAfter.length === 1 && ownBefore[0]!.id === ownAfter[0]!.id &&
          ownBefore[0]!.state === "active" && ownAfter[0]!.state === "active"
        if (answer._tag !== "Gateway") {
          if (answer._tag === "NoAnswer") answers.noAnswer += 1
          else if (answer.status === 404) answers.notRouted += 1
          else answers.otherStatus += 1
          if (steadyActive) unavailableWhileActive += 1
          if (answer._tag !== "Status" || answer.status !== 404) {
            if (otherSamples.length < maxSamples) {
              otherSamples.push(
                `${sentAt} org ${org}: ${
                  answer._tag === "NoAnswer" ? `no answer (${answer.message})` : `${answer.status} ${answer.body.replace(/\s+/g, " ")}`
                }; own before: ${describeOwn(ownBefore)}; after: ${describeOwn(ownAfter)}`
              )
            }
          }
          continue
        }
        const gateway = answer.gateway
        const holdersBefore = b.byGateway.get(gateway) ?? []
        const holdersAfter = a.byGateway.get(gateway) ?? []
        const intruder = holdersBefore.find((held) =>
          held.organization_id !== org && holdersAfter.some((later) => later.id === held.id)
        )
        if (intruder !== undefined) {
          answers.crossings += 1
          if (steadyActive) unavailableWhileActive += 1
          const later = holdersAfter.find((row) => row.id === intruder.id)!
          crossed.push({
            at: sentAt,
            org,
            gateway,
            heldBy: intruder.organization_id,
            allocationId: intruder.id,
            stateBefore: intruder.state,
            stateAfter: later.state,
            ownBefore: describeOwn(ownBefore),
            ownAfter: describeOwn(ownAfter)
          })
          continue
        }
        const own = ownBefore.some((row) => row.gateway === gateway) || ownAfter.some((row) => row.gateway === gateway)
        if (own) {
          answers.ownGateway += 1
          continue
        }
        answers.staleRoutes += 1
        if (steadyActive) unavailableWhileActive += 1
        if (staleRouteSamples.length + stale.length < maxSamples) {
          stale.push({
            at: sentAt,
            org,
            gateway,
            holderBefore: describeHolder(holdersBefore),
            holderAfter: describeHolder(holdersAfter),
            ownBefore: describeOwn(ownBefore),
            ownAfter: describeOwn(ownAfter)
          })
        }
      }

      for (const sample of stale) staleRouteSamples.push({ ...sample, diagnosis: yield* diagnose(sample.org) })
      for (const crossing of crossed) {
        const diagnosis = crossingSamples.length < maxSamples ? yield* diagnose(crossing.org) : ""
        if (crossingSamples.length < maxSamples) crossingSamples.push({ ...crossing, diagnosis })
        log(
          `isolation: CROSSING at ${crossing.at}: org ${crossing.org} reached ${crossing.gateway}, held by org ${crossing.heldBy} ` +
            `(allocation ${crossing.allocationId}, ${crossing.stateBefore} -> ${crossing.stateAfter}); own: ${crossing.ownBefore} -> ${crossing.ownAfter}` +
            (diagnosis === "" ? "" : `; ${diagnosis}`)
        )
      }
    })

    const loop = Effect.gen(function*() {
      while (options.until === undefined || !options.until()) {
        const began = Date.now()
        yield* round
        yield* Effect.sleep(Duration.millis(Math.max(10, intervalMs - (Date.now() - began))))
      }
    }).pipe(Effect.ensuring(Effect.sync(() => {
      stoppedAt ??= Date.now()
    })))

    const fiber = yield* Effect.forkScoped(loop)
    return {
      figures,
      stop: Effect.map(Fiber.interrupt(fiber), () => figures())
    } satisfies IsolationChecker
  })

/** The figures as a few lines for a summary. */
export const describeIsolation = (report: IsolationReport): string =>
  [
    `${report.rounds} rounds, ${report.requests} requests through nginx in ${(report.durationMs / 1000).toFixed(1)} s` +
    ` (slowest round ${report.slowestRoundMs} ms${report.skippedRounds === 0 ? "" : `, ${report.skippedRounds} skipped: snapshot unreadable`})`,
    `  answered by the org's own gateway   ${report.answers.ownGateway}`,
    `  nginx 404 (no route)                ${report.answers.notRouted}`,
    `  other status                        ${report.answers.otherStatus}`,
    `  no answer within the bound          ${report.answers.noAnswer}`,
    `  not answered by its gateway while steadily active (not a failure): ${report.unavailableWhileActive}`,
    `  stale routes (a gateway no other org held throughout; not a failure): ${report.staleRoutes}`,
    ...report.staleRouteSamples.slice(0, 5).map((s) =>
      `    ${s.at} org ${s.org} reached ${s.gateway}; holder ${s.holderBefore} -> ${s.holderAfter}; own ${s.ownBefore} -> ${s.ownAfter}; ${s.diagnosis}`
    ),
    ...report.otherSamples.slice(0, 3).map((line) => `    other: ${line}`),
    `  CROSSINGS (another org's gateway, held by it throughout): ${report.crossings}`,
    ...report.crossingSamples.slice(0, 10).map((s) =>
      `    ${s.at} org ${s.org} reached ${s.gateway}, held by org ${s.heldBy} allocation ${s.allocationId}` +
      ` (${s.stateBefore} -> ${s.stateAfter}); own ${s.ownBefore} -> ${s.ownAfter}; ${s.diagnosis}`
    )
  ].join("\n")
