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
//
// Fenced by the gateway: X's request answered 421 by gateway G (the route's allocation, sent by
// nginx in X-Gateway-Allocation, is not the one G holds) while G held a live allocation of another
// org (G says which in `held`; Postgres says whose). nginx routed X to Y's gateway and only the
// gateway's fence stopped it: not a crossing (nothing was served), counted and sampled.
//
// Long-lived connections: for a few of the orgs at a time (re-picked as orgs come and go), a
// WebSocket through nginx, opened while the org is active, and one text frame on it every round.
// Its first frame names the allocation the gateway held when it opened (the connection's, A).
// - An answer naming another allocation is a CROSSING of a long-lived connection: what X opened
//   reached a gateway now serving someone else. A failure.
// - An answer naming A while another org's live allocation held the gateway in Postgres from
//   before the message was sent until after its answer came: the gateway was handed over with X's
//   connection still served (the service must wait for the release). A failure.
// - An answer naming no allocation: the connection outlived its gateway's release. A failure.
// - The connection closing is normal (the release closes it; nginx restarting too): counted, with
//   A's state in Postgres right after (a close while A is active is noise, not a failure), and
//   the org gets a connection again later.
import { Data, Duration, Effect, Fiber, type Scope } from "effect"
import type { LocalStack } from "../../src/dev/stack.ts"
import { PROBE_PATH, PROBE_SECRET_HEADER } from "../../src/nginx/config.ts"
import { type Db, edgeRouteOf, edgeSecretOf, openDb } from "./invariants.ts"
import { gatewayAnswerOf, hostnameOf, rawGet } from "./rawHttp.ts"
import { openWebSocket, type WebSocketConnection, type WebSocketEvent } from "./longLived.ts"

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
  /**
   * Long-lived WebSockets through nginx kept open at a time, each for another active org (default
   * 4; 0: none). One text frame is sent on each every round.
   */
  readonly longLivedConnections?: number
  /** Bound on opening one (connect, 101, first frame; default twice `requestTimeoutMs`). */
  readonly openTimeoutMs?: number
  /**
   * The org listener of every edge to ask (default: the stack's nginx alone). Every round asks
   * each org on each edge; long-lived connections are opened on the edges in turn.
   */
  readonly edgePorts?: ReadonlyArray<number>
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
  /** The org listener (edge) asked. */
  readonly edgePort: number
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
  /** The org listener (edge) asked. */
  readonly edgePort: number
  readonly gateway: string
  /** Who held that gateway in each snapshot ("free" when nobody did). */
  readonly holderBefore: string
  readonly holderAfter: string
  readonly ownBefore: string
  readonly ownAfter: string
  /** As for a crossing: the org's route as nginx holds it and nginx's route probe right after the round. */
  readonly diagnosis: string
}

/** A 421 from a gateway that held another org's live allocation: a stale route only the gateway's fence stopped. */
export interface FencedSample {
  /** When the request (or the WebSocket upgrade) was sent (ISO). */
  readonly at: string
  /** A fresh-connection request, or the upgrade opening a long-lived connection. */
  readonly via: "request" | "upgrade"
  /** The org whose hostname was asked. */
  readonly org: string
  /** The gateway that refused it. */
  readonly gateway: string
  /** The allocation nginx's route named (X-Gateway-Allocation, as the gateway read it). */
  readonly routeAllocation: string | null
  /** The allocation the gateway held, whose org, and its state in Postgres (before -> after). */
  readonly held: string
  readonly heldBy: string
  readonly heldState: string
  readonly ownBefore: string
  readonly ownAfter: string
  /** The org's route as nginx holds it and nginx's route probe right after. */
  readonly diagnosis: string
}

/** An answer on a long-lived connection naming another allocation than the one it was opened for. */
export interface LongLivedCrossingSample {
  /** When the answer arrived (ISO). */
  readonly at: string
  readonly org: string
  /** The connection's allocation (its first frame's), and its state in Postgres right after. */
  readonly connectionAllocation: string
  readonly connectionAllocationState: string
  /** When the connection was opened (ISO), through which edge (its org listener) and which gateway. */
  readonly openedAt: string
  readonly edgePort: number
  readonly openedOn: string
  /** The gateway that answered, and what it says it serves now. */
  readonly gateway: string
  readonly servedAllocation: string | null
  readonly servedOrg: string | null
  /** The served allocation in Postgres right after ("org Y active", "not found"...). */
  readonly servedState: string
  /** Who held the gateway in the snapshot before the message was sent and in the one after its answer. */
  readonly holderBefore: string
  readonly holderAfter: string
  /** "message": an echo; "first frame": the upgrade itself was answered for another org. */
  readonly kind: "message" | "first frame"
}

export interface LongLivedReport {
  /** Connections kept open at a time (the option). */
  readonly target: number
  /** Upgrades tried, and how they ended. */
  readonly opens: {
    readonly attempts: number
    /** 101 and a first frame naming the org's allocation: a long-lived connection. */
    readonly opened: number
    /** Refused upgrades by status ("404", "421 fenced by gateway", "421 other", "502"...). */
    readonly refused: Readonly<Record<string, number>>
    /** No 101 and first frame within the bound (nginx frozen, the connection reset...). */
    readonly noAnswer: number
    /** A 101 whose first frame named no allocation, or could not be read (then closed). */
    readonly unowned: number
  }
  /** Connections that closed, and A's state in Postgres right after. */
  readonly closes: {
    readonly total: number
    /** A still active: nginx restarted, or the like. Not a failure. */
    readonly whileActive: number
    /** A stopping or rolling back: its release (or nginx) closed it. */
    readonly whileEnding: number
    /** A no longer live (released, rolled back). */
    readonly afterEnd: number
    /** By the close frame's status ("1001", "1008"...; "none": the connection just closed). */
    readonly byCloseCode: Readonly<Record<string, number>>
  }
  /** Open when the checker stopped. */
  readonly openAtEnd: number
  readonly messagesSent: number
  readonly messagesAnswered: number
  /** Answers naming the connection's own allocation. */
  readonly answeredOwn: number
  /** Answers naming another allocation (crossings), including a first frame naming another org. */
  readonly crossings: number
  readonly crossingSamples: ReadonlyArray<LongLivedCrossingSample>
  /** Answers naming no allocation: the connection outlived its gateway's release. */
  readonly outlived: number
  /** Answers naming A while another org's live allocation held the gateway throughout (before the send, after the answer). */
  readonly handedOver: number
  /** Samples of the outlived and handed-over answers. */
  readonly failureSamples: ReadonlyArray<string>
  /** Closes while the allocation was active, refused upgrades, unreadable answers: for the record. */
  readonly otherSamples: ReadonlyArray<string>
  /** The longest a connection stayed open, ms. */
  readonly longestOpenMs: number
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
    /** 421 from a gateway holding another org's live allocation (in either snapshot): refused by its fence. */
    readonly fencedByGateway: number
    /** Any other 421: the gateway held nothing (not yet, or released), the org's own other allocation, or one not live. */
    readonly fencedOther: number
    /** Any other HTTP status (502/504: the upstream did not answer), or a 200 not from a sample gateway. */
    readonly otherStatus: number
    /** No answer within the bound, connection refused or reset. */
    readonly noAnswer: number
    readonly crossings: number
    readonly staleRoutes: number
  }
  /** The other 421s by what the gateway held. */
  readonly fencedOtherKinds: Readonly<Record<string, number>>
  /**
   * Not a failure, for the record: the org held the same allocation, active, in both snapshots,
   * and nginx answered 404 (or something other than its gateway).
   */
  readonly unavailableWhileActive: number
  readonly crossings: number
  readonly crossingSamples: ReadonlyArray<CrossingSample>
  readonly staleRoutes: number
  readonly staleRouteSamples: ReadonlyArray<StaleRouteSample>
  /** Fresh-connection requests refused by a gateway holding another org's live allocation (= answers.fencedByGateway). */
  readonly fencedByGateway: number
  /** Samples of those and of upgrades refused the same way. */
  readonly fencedSamples: ReadonlyArray<FencedSample>
  /** A few of the non-200 answers and request errors, for the record. */
  readonly otherSamples: ReadonlyArray<string>
  /** Slowest round (snapshot, requests, snapshot), ms. */
  readonly slowestRoundMs: number
  readonly durationMs: number
  /** The long-lived connections. */
  readonly longLived: LongLivedReport
}

export interface IsolationChecker {
  /** The figures so far (rounds that completed). */
  readonly figures: () => IsolationReport
  /** Stops the checker (a round in flight is dropped; every long-lived connection closed) and returns the final figures. */
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
  readonly byId: ReadonlyMap<string, LiveRow>
  /** When the query was sent (ms since the epoch): everything seen before then happened before it. */
  readonly startedAt: number
}

type Answer =
  | { readonly _tag: "Gateway"; readonly gateway: string }
  /** A sample gateway's 421: the allocation nginx's route named, and the one it held. */
  | { readonly _tag: "Fenced"; readonly gateway: string; readonly allocation: string | null; readonly held: string | null }
  | { readonly _tag: "Status"; readonly status: number; readonly body: string }
  | { readonly _tag: "NoAnswer"; readonly message: string }

const ask = (stack: LocalStack, port: number, org: string, timeoutMs: number): Effect.Effect<Answer> =>
  rawGet({ port, path: `/isolation/${org}`, headers: { host: hostnameOf(stack, org) }, timeoutMs }).pipe(
    Effect.map((response): Answer => {
      // The sample gateway's answer: 200 served, 421 refused for its allocation header.
      const answer = gatewayAnswerOf(response.body)
      if (response.status === 200 && answer !== undefined) return { _tag: "Gateway", gateway: answer.gateway }
      if (response.status === 421 && answer !== undefined) return { _tag: "Fenced", ...answer }
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

/** A long-lived connection the checker keeps. */
interface LongLivedConnection {
  readonly id: number
  readonly org: string
  /** The allocation its first frame named (the one it was opened for). */
  readonly allocation: string
  /** The gateway its first frame came from. */
  readonly gateway: string
  /** The org listener (edge) it was opened on. */
  readonly edgePort: number
  readonly openedAt: number
  readonly socket: WebSocketConnection
  nextSeq: number
  /** Messages sent and not answered yet: when, and the latest snapshot completed before. */
  readonly inFlight: Map<number, { readonly sentAt: number; readonly snapshot: Snapshot }>
}

/** No more than this many unanswered messages on one connection (nginx frozen): the next rounds send nothing on it. */
const MAX_IN_FLIGHT = 20
/** After an upgrade that did not give a connection, the org is not tried again for this long. */
const RETRY_OPEN_AFTER_MS = 500

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
    const longLivedTarget = options.longLivedConnections ?? 4
    const openTimeoutMs = options.openTimeoutMs ?? 2 * requestTimeoutMs
    const maxSamples = options.maxSamples ?? 20
    const edgePorts = options.edgePorts ?? [stack.nginx.listenPort]
    const log = options.log ?? (() => {})
    const startedAt = Date.now()

    let rounds = 0
    let skippedRounds = 0
    let requests = 0
    let unavailableWhileActive = 0
    let slowestRoundMs = 0
    let stoppedAt: number | undefined
    const answers = {
      ownGateway: 0,
      notRouted: 0,
      fencedByGateway: 0,
      fencedOther: 0,
      otherStatus: 0,
      noAnswer: 0,
      crossings: 0,
      staleRoutes: 0
    }
    const fencedOtherKinds: Record<string, number> = {}
    const crossingSamples: Array<CrossingSample> = []
    const staleRouteSamples: Array<StaleRouteSample> = []
    const fencedSamples: Array<FencedSample> = []
    const otherSamples: Array<string> = []
    const count = (table: Record<string, number>, key: string) => {
      table[key] = (table[key] ?? 0) + 1
    }

    // --- long-lived connections ---
    const connections = new Map<number, LongLivedConnection>()
    /** Orgs whose upgrade is in flight. */
    const opening = new Set<string>()
    /** Per org: when its last connection opened, when it closed, when an upgrade may be tried again. */
    const lastOpenedAt = new Map<string, number>()
    const lastClosedAt = new Map<string, number>()
    const retryOpenAt = new Map<string, number>()
    /** Events taken off the sockets and not judged yet (their round's snapshot failed). */
    const carried: Array<readonly [LongLivedConnection, WebSocketEvent]> = []
    let nextConnectionId = 1
    let stopped = false
    const ll = {
      attempts: 0,
      opened: 0,
      noAnswer: 0,
      unowned: 0,
      closed: 0,
      whileActive: 0,
      whileEnding: 0,
      afterEnd: 0,
      sent: 0,
      answered: 0,
      answeredOwn: 0,
      crossings: 0,
      outlived: 0,
      handedOver: 0,
      longestOpenMs: 0
    }
    const refused: Record<string, number> = {}
    const byCloseCode: Record<string, number> = {}
    const longLivedCrossingSamples: Array<LongLivedCrossingSample> = []
    const longLivedOtherSamples: Array<string> = []
    const longLivedFailureSamples: Array<string> = []
    const noteOther = (line: string) => {
      if (longLivedOtherSamples.length < maxSamples) longLivedOtherSamples.push(line)
    }
    const noteFailure = (line: string) => {
      if (longLivedFailureSamples.length < maxSamples) longLivedFailureSamples.push(line)
      log(`isolation: ${line}`)
    }

    const figures = (): IsolationReport => ({
      rounds,
      skippedRounds,
      requests,
      answers: { ...answers },
      fencedOtherKinds: { ...fencedOtherKinds },
      unavailableWhileActive,
      crossings: answers.crossings,
      crossingSamples: [...crossingSamples],
      staleRoutes: answers.staleRoutes,
      staleRouteSamples: [...staleRouteSamples],
      fencedByGateway: answers.fencedByGateway,
      fencedSamples: [...fencedSamples],
      otherSamples: [...otherSamples],
      slowestRoundMs,
      durationMs: (stoppedAt ?? Date.now()) - startedAt,
      longLived: {
        target: longLivedTarget,
        opens: { attempts: ll.attempts, opened: ll.opened, refused: { ...refused }, noAnswer: ll.noAnswer, unowned: ll.unowned },
        closes: {
          total: ll.closed,
          whileActive: ll.whileActive,
          whileEnding: ll.whileEnding,
          afterEnd: ll.afterEnd,
          byCloseCode: { ...byCloseCode }
        },
        openAtEnd: connections.size,
        messagesSent: ll.sent,
        messagesAnswered: ll.answered,
        answeredOwn: ll.answeredOwn,
        crossings: ll.crossings,
        crossingSamples: [...longLivedCrossingSamples],
        outlived: ll.outlived,
        handedOver: ll.handedOver,
        failureSamples: [...longLivedFailureSamples],
        otherSamples: [...longLivedOtherSamples],
        longestOpenMs: Math.max(ll.longestOpenMs, ...[...connections.values()].map((c) => (stoppedAt ?? Date.now()) - c.openedAt))
      }
    })

    // One statement: allocations and gateway names are never read torn apart.
    const snapshot = Effect.suspend(() => {
      const queriedAt = Date.now()
      return db.query<LiveRow>(
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
          const byId = new Map<string, LiveRow>()
          for (const row of rows) {
            byGateway.set(row.gateway, [...(byGateway.get(row.gateway) ?? []), row])
            byOrg.set(row.organization_id, [...(byOrg.get(row.organization_id) ?? []), row])
            byId.set(row.id, row)
          }
          return { byGateway, byOrg, byId, startedAt: queriedAt }
        }),
        Effect.either
      )
    })

    /** Allocations by id whatever their state (for a sample's context): "org Y active", "not found"... */
    const describeAllocations = (ids: ReadonlyArray<string>) =>
      db.query<{ id: string; organization_id: string; state: string; gateway: string | null }>(
        `select a.id, a.organization_id, a.state, g.name as gateway
           from allocations a left join gateways g on g.id = a.gateway_id
          where a.id = any($1)`,
        [ids]
      ).pipe(
        Effect.timeout(Duration.millis(snapshotTimeoutMs)),
        Effect.map((rows) => {
          const found = new Map(rows.map((row) => [row.id, row]))
          return (id: string | null) => {
            if (id === null) return "(none)"
            const row = found.get(id)
            return row === undefined ? "not found" : `org ${row.organization_id} ${row.state} on ${row.gateway ?? "(no gateway)"}`
          }
        }),
        Effect.orElseSucceed(() => (_id: string | null) => "(could not read Postgres)")
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
        const secret = yield* Effect.try(() => String(edgeSecretOf(stack) ?? "")).pipe(Effect.orElseSucceed(() => ""))
        const probe = yield* rawGet({
          port: stack.nginx.listenPort,
          path: PROBE_PATH,
          headers: { host: hostnameOf(stack, org), ...(secret === "" ? {} : { [PROBE_SECRET_HEADER]: secret }) },
          timeoutMs: requestTimeoutMs
        }).pipe(
          Effect.map((response) => `${response.status} "${response.body.replace(/\s+/g, " ").trim().slice(0, 120)}"`),
          Effect.catchAll((error) => Effect.succeed(`no answer (${error.message})`))
        )
        return `route held: ${route.trim()}; nginx route probe right after (allocation, worker pid): ${probe}`
      })

    // --- long-lived connections: judging what arrived, sending, opening ---

    /** The answers and closes taken off the sockets before `snap` was queried, judged against it. */
    const judge = (snap: Snapshot) =>
      Effect.gen(function*() {
        const events = carried.splice(0)
        const crossed: Array<Omit<LongLivedCrossingSample, "connectionAllocationState" | "servedState">> = []
        for (const [connection, event] of events) {
          if (event._tag === "Closed") {
            connections.delete(connection.id)
            connection.inFlight.clear()
            ll.closed += 1
            ll.longestOpenMs = Math.max(ll.longestOpenMs, event.at - connection.openedAt)
            lastClosedAt.set(connection.org, event.at)
            count(byCloseCode, event.closeCode === null ? "none" : String(event.closeCode))
            // States only move forward: A active in a snapshot taken after the close was active when it closed.
            const state = snap.byId.get(connection.allocation)?.state
            if (state === "active") {
              ll.whileActive += 1
              noteOther(
                `${new Date(event.at).toISOString()} org ${connection.org}: connection of ${connection.allocation} on ${connection.gateway} ` +
                  `closed while active (close frame ${event.closeCode ?? "none"}${event.error === null ? "" : `, ${event.error}`}; ` +
                  `open ${event.at - connection.openedAt} ms)`
              )
            } else if (state === undefined) ll.afterEnd += 1
            else ll.whileEnding += 1
            continue
          }
          ll.answered += 1
          let reply: { gateway?: unknown; allocation?: unknown; organization_id?: unknown; echo?: unknown }
          try {
            reply = JSON.parse(event.text) as typeof reply
          } catch {
            noteOther(`org ${connection.org}: unreadable answer ${event.text.slice(0, 160)}`)
            continue
          }
          const seq = Number(reply.echo)
          const sent = connection.inFlight.get(seq)
          connection.inFlight.delete(seq)
          const served = typeof reply.allocation === "string" ? reply.allocation : null
          const servedOrg = typeof reply.organization_id === "string" ? reply.organization_id : null
          const gateway = typeof reply.gateway === "string" ? reply.gateway : "(unnamed)"
          if (served === connection.allocation) {
            ll.answeredOwn += 1
            // Served for A: no other org's allocation may have held this gateway from before the
            // message was sent until after its answer came (the same allocation in both snapshots).
            if (sent === undefined) continue
            const later = snap.byGateway.get(gateway) ?? []
            const intruder = (sent.snapshot.byGateway.get(gateway) ?? []).find((row) =>
              row.organization_id !== connection.org && later.some((after) => after.id === row.id)
            )
            if (intruder !== undefined) {
              ll.handedOver += 1
              const line = `${new Date(event.at).toISOString()} org ${connection.org}: HANDED OVER: ${gateway} answered for ${connection.allocation} ` +
                `while org ${intruder.organization_id}'s allocation ${intruder.id} held it (${intruder.state} -> ${
                  later.find((row) => row.id === intruder.id)?.state
                })`
              noteFailure(line)
            }
            continue
          }
          if (served === null) {
            ll.outlived += 1
            const line = `${new Date(event.at).toISOString()} org ${connection.org}: OUTLIVED: ${gateway} answered on the connection of ` +
              `${connection.allocation} holding nothing`
            noteFailure(line)
            continue
          }
          ll.crossings += 1
          crossed.push({
            at: new Date(event.at).toISOString(),
            org: connection.org,
            connectionAllocation: connection.allocation,
            openedAt: new Date(connection.openedAt).toISOString(),
            edgePort: connection.edgePort,
            openedOn: connection.gateway,
            gateway,
            servedAllocation: served,
            servedOrg,
            holderBefore: sent === undefined ? "(unknown)" : describeHolder(sent.snapshot.byGateway.get(gateway)),
            holderAfter: describeHolder(snap.byGateway.get(gateway)),
            kind: "message"
          })
        }
        if (crossed.length > 0) {
          // Kept at once (a stop may come before Postgres answers), completed with the states after.
          const kept = crossed.slice(0, Math.max(0, maxSamples - longLivedCrossingSamples.length)).map((crossing) => {
            const at = longLivedCrossingSamples.length
            longLivedCrossingSamples.push({ ...crossing, connectionAllocationState: "(not read)", servedState: "(not read)" })
            return at
          })
          const states = yield* describeAllocations(crossed.flatMap((c) => [c.connectionAllocation, ...(c.servedAllocation === null ? [] : [c.servedAllocation])]))
          crossed.forEach((crossing, i) => {
            const sample = {
              ...crossing,
              connectionAllocationState: states(crossing.connectionAllocation),
              servedState: states(crossing.servedAllocation)
            }
            if (kept[i] !== undefined) longLivedCrossingSamples[kept[i]] = sample
            log(`isolation: LONG-LIVED CROSSING: ${describeLongLivedCrossing(sample)}`)
          })
        }
      })

    /** One text frame on every open connection (its sequence number), remembered with the snapshot completed before it. */
    const sendMessages = (snap: Snapshot) => {
      for (const connection of connections.values()) {
        if (connection.socket.isClosed() || connection.inFlight.size >= MAX_IN_FLIGHT) continue
        const seq = connection.nextSeq++
        if (!connection.socket.send(String(seq))) continue
        connection.inFlight.set(seq, { sentAt: Date.now(), snapshot: snap })
        ll.sent += 1
      }
    }

    /** Classifies a refused upgrade (a 421 against Postgres: whose allocation the gateway held). */
    const upgradeRefused = (org: string, sentAt: number, status: number, body: string) =>
      Effect.gen(function*() {
        const fenced = status === 421 ? gatewayAnswerOf(body) : undefined
        if (fenced === undefined || fenced.held === null) {
          count(refused, status === 421 ? "421 other" : String(status))
          if (status !== 404) noteOther(`${new Date(sentAt).toISOString()} org ${org}: upgrade refused ${status} ${body.replace(/\s+/g, " ").slice(0, 160)}`)
          return
        }
        const rows = yield* db.query<{ organization_id: string; state: string }>(
          "select organization_id, state from allocations where id = $1",
          [fenced.held]
        ).pipe(Effect.timeout(Duration.millis(snapshotTimeoutMs)), Effect.orElseSucceed(() => []))
        const held = rows[0]
        // The gateway held it when it refused, and an allocation is live in one stretch: live now, live then.
        if (held === undefined || held.organization_id === org || !LIVE.includes(held.state)) {
          count(refused, "421 other")
          return
        }
        count(refused, "421 fenced by gateway")
        if (fencedSamples.length >= maxSamples) return
        const own = yield* db.query<{ id: string; state: string }>(
          "select id, state from allocations where organization_id = $1 and state = any($2)",
          [org, LIVE]
        ).pipe(Effect.timeout(Duration.millis(snapshotTimeoutMs)), Effect.orElseSucceed(() => []))
        fencedSamples.push({
          at: new Date(sentAt).toISOString(),
          via: "upgrade",
          org,
          gateway: fenced.gateway,
          routeAllocation: fenced.allocation,
          held: fenced.held,
          heldBy: held.organization_id,
          heldState: `(refused) -> ${held.state}`,
          ownBefore: "(not read)",
          ownAfter: own.length === 0 ? "none" : own.map((row) => `${row.state} ${row.id}`).join(", "),
          diagnosis: yield* diagnose(org)
        })
      })

    /** An upgrade for the org; once its first frame names the org's allocation, a connection the rounds use. */
    const open = (org: string) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          ll.attempts += 1
          const sentAt = Date.now()
          const edgePort = edgePorts[ll.attempts % edgePorts.length] ?? stack.nginx.listenPort
          const result = yield* restore(openWebSocket({
            port: edgePort,
            host: hostnameOf(stack, org),
            path: `/isolation/long-lived/${org}`,
            timeoutMs: openTimeoutMs
          }))
          if (result._tag === "NoAnswer") {
            ll.noAnswer += 1
            retryOpenAt.set(org, Date.now() + RETRY_OPEN_AFTER_MS)
            return
          }
          if (result._tag === "Refused") {
            retryOpenAt.set(org, Date.now() + RETRY_OPEN_AFTER_MS)
            return yield* restore(upgradeRefused(org, sentAt, result.status, result.body))
          }
          const { connection: socket, first } = result
          let greeting: { gateway?: unknown; allocation?: unknown; organization_id?: unknown } = {}
          try {
            greeting = JSON.parse(first) as typeof greeting
          } catch {
            // judged below as unowned
          }
          const allocation = typeof greeting.allocation === "string" ? greeting.allocation : null
          const greetedOrg = typeof greeting.organization_id === "string" ? greeting.organization_id : null
          const gateway = typeof greeting.gateway === "string" ? greeting.gateway : "(unnamed)"
          if (stopped || allocation === null || greetedOrg !== org) {
            socket.destroy()
            retryOpenAt.set(org, Date.now() + RETRY_OPEN_AFTER_MS)
            if (stopped) return
            if (greetedOrg === null || allocation === null) {
              ll.unowned += 1
              noteOther(`${new Date(sentAt).toISOString()} org ${org}: upgraded, first frame names no allocation: ${first.slice(0, 160)}`)
              return
            }
            // The upgrade itself was answered for another org's allocation.
            ll.crossings += 1
            const base: LongLivedCrossingSample = {
              at: new Date().toISOString(),
              org,
              connectionAllocation: "(none: first frame)",
              connectionAllocationState: "-",
              openedAt: new Date(sentAt).toISOString(),
              edgePort,
              openedOn: gateway,
              gateway,
              servedAllocation: allocation,
              servedOrg: greetedOrg,
              servedState: "(not read)",
              holderBefore: "(not read)",
              holderAfter: "(not read)",
              kind: "first frame"
            }
            const kept = longLivedCrossingSamples.length < maxSamples ? longLivedCrossingSamples.push(base) - 1 : undefined
            const states = yield* restore(describeAllocations([allocation]))
            const sample = { ...base, servedState: states(allocation) }
            if (kept !== undefined) longLivedCrossingSamples[kept] = sample
            log(`isolation: LONG-LIVED CROSSING: ${describeLongLivedCrossing(sample)}`)
            return
          }
          ll.opened += 1
          lastOpenedAt.set(org, Date.now())
          const id = nextConnectionId++
          connections.set(id, { id, org, allocation, gateway, edgePort, openedAt: Date.now(), socket, nextSeq: 1, inFlight: new Map() })
        })
      ).pipe(Effect.ensuring(Effect.sync(() => opening.delete(org))))

    /** Opens connections for active orgs that have none, up to the target, least recently opened first. */
    const refill = (snap: Snapshot, orgs: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        const withConnection = new Set([...connections.values()].map((connection) => connection.org))
        const free = longLivedTarget - connections.size - opening.size
        if (free <= 0) return
        const now = Date.now()
        const candidates = orgs.filter((org) => {
          const own = snap.byOrg.get(org)
          return own !== undefined && own.length === 1 && own[0]!.state === "active" && !withConnection.has(org) && !opening.has(org) &&
            // A snapshot that may predate the org's last close says nothing about it.
            (lastClosedAt.get(org) ?? 0) < snap.startedAt && (retryOpenAt.get(org) ?? 0) <= now
        }).sort((a, b) => (lastOpenedAt.get(a) ?? 0) - (lastOpenedAt.get(b) ?? 0) || a.localeCompare(b))
        for (const org of candidates.slice(0, free)) {
          opening.add(org)
          yield* Effect.fork(open(org))
        }
      })

    const round = Effect.gen(function*() {
      const orgs = [...new Set(options.orgs())]
      if (orgs.length === 0 && connections.size === 0) return
      const roundStarted = Date.now()
      // What arrived on the long-lived connections until now, judged against the snapshot sent next.
      for (const connection of connections.values()) {
        for (const event of connection.socket.takeEvents()) carried.push([connection, event])
      }
      const before = yield* snapshot
      if (before._tag === "Left") {
        skippedRounds += 1
        if (skippedRounds <= 3) log(`isolation: round skipped: ${before.left.message}`)
        return
      }
      yield* judge(before.right)
      sendMessages(before.right)
      const sentAt = new Date().toISOString()
      const asked = yield* Effect.forEach(
        orgs.flatMap((org) => edgePorts.map((port) => [org, port] as const)),
        ([org, port]) => Effect.map(ask(stack, port, org, requestTimeoutMs), (answer) => [org, port, answer] as const),
        { concurrency: "unbounded" }
      )
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
      const fenced: Array<Omit<FencedSample, "diagnosis">> = []

      for (const [org, edgePort, answer] of asked) {
        const ownBefore = b.byOrg.get(org) ?? []
        const ownAfter = a.byOrg.get(org) ?? []
        const steadyActive = ownBefore.length === 1 && ownAfter.length === 1 && ownBefore[0]!.id === ownAfter[0]!.id &&
          ownBefore[0]!.state === "active" && ownAfter[0]!.state === "active"
        if (answer._tag === "Fenced") {
          if (steadyActive) unavailableWhileActive += 1
          // The gateway held `held` when it refused; whose it is, Postgres says (live in either snapshot).
          const heldBefore = answer.held === null ? undefined : b.byId.get(answer.held)
          const heldAfter = answer.held === null ? undefined : a.byId.get(answer.held)
          const holder = heldBefore ?? heldAfter
          if (holder !== undefined && holder.organization_id !== org) {
            answers.fencedByGateway += 1
            if (fencedSamples.length + fenced.length < maxSamples) {
              fenced.push({
                at: sentAt,
                via: "request",
                org,
                gateway: answer.gateway,
                routeAllocation: answer.allocation,
                held: holder.id,
                heldBy: holder.organization_id,
                heldState: `${heldBefore?.state ?? "(not live)"} -> ${heldAfter?.state ?? "(not live)"}`,
                ownBefore: describeOwn(ownBefore),
                ownAfter: describeOwn(ownAfter)
              })
            }
          } else {
            answers.fencedOther += 1
            count(
              fencedOtherKinds,
              answer.held === null
                ? "the gateway held nothing"
                : holder !== undefined
                ? "the gateway held the org's own other allocation"
                : "the gateway held an allocation live in neither snapshot"
            )
          }
          continue
        }
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
            edgePort,
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
            edgePort,
            gateway,
            holderBefore: describeHolder(holdersBefore),
            holderAfter: describeHolder(holdersAfter),
            ownBefore: describeOwn(ownBefore),
            ownAfter: describeOwn(ownAfter)
          })
        }
      }

      for (const sample of stale) staleRouteSamples.push({ ...sample, diagnosis: yield* diagnose(sample.org) })
      for (const sample of fenced) fencedSamples.push({ ...sample, diagnosis: yield* diagnose(sample.org) })
      for (const crossing of crossed) {
        const diagnosis = crossingSamples.length < maxSamples ? yield* diagnose(crossing.org) : ""
        if (crossingSamples.length < maxSamples) crossingSamples.push({ ...crossing, diagnosis })
        log(
          `isolation: CROSSING at ${crossing.at}: org ${crossing.org} reached ${crossing.gateway} through edge :${crossing.edgePort}, held by org ${crossing.heldBy} ` +
            `(allocation ${crossing.allocationId}, ${crossing.stateBefore} -> ${crossing.stateAfter}); own: ${crossing.ownBefore} -> ${crossing.ownAfter}` +
            (diagnosis === "" ? "" : `; ${diagnosis}`)
        )
      }
      if (longLivedTarget > 0) yield* refill(a, orgs)
    })

    const loop = Effect.gen(function*() {
      while (options.until === undefined || !options.until()) {
        const began = Date.now()
        yield* round
        yield* Effect.sleep(Duration.millis(Math.max(10, intervalMs - (Date.now() - began))))
      }
    }).pipe(Effect.ensuring(Effect.sync(() => {
      stoppedAt ??= Date.now()
      stopped = true
      // Upgrades in flight are interrupted with this fiber (their sockets destroyed); the open ones close here.
      for (const connection of connections.values()) {
        ll.longestOpenMs = Math.max(ll.longestOpenMs, stoppedAt - connection.openedAt)
        connection.socket.destroy()
      }
    })))

    const fiber = yield* Effect.forkScoped(loop)
    return {
      figures,
      stop: Effect.map(Fiber.interrupt(fiber), () => figures())
    } satisfies IsolationChecker
  })

const describeLongLivedCrossing = (s: LongLivedCrossingSample) =>
  `${s.at} org ${s.org}: ${s.kind === "first frame" ? "upgrade answered" : "message on its connection"} of ${s.connectionAllocation}` +
  ` (${s.connectionAllocationState}; opened ${s.openedAt} through edge :${s.edgePort} on ${s.openedOn}) answered by ${s.gateway} serving ${s.servedAllocation}` +
  ` of org ${s.servedOrg} (${s.servedState}); gateway holder before the message: ${s.holderBefore}, after: ${s.holderAfter}`

const table = (record: Readonly<Record<string, number>>) =>
  Object.keys(record).length === 0
    ? "none"
    : Object.entries(record).sort(([a], [b]) => a.localeCompare(b)).map(([key, n]) => `${key}: ${n}`).join(", ")

/** The figures as a few lines for a summary. */
export const describeIsolation = (report: IsolationReport): string => {
  const ll = report.longLived
  return [
    `${report.rounds} rounds, ${report.requests} requests through nginx in ${(report.durationMs / 1000).toFixed(1)} s` +
    ` (slowest round ${report.slowestRoundMs} ms${report.skippedRounds === 0 ? "" : `, ${report.skippedRounds} skipped: snapshot unreadable`})`,
    `  answered by the org's own gateway   ${report.answers.ownGateway}`,
    `  nginx 404 (no route)                ${report.answers.notRouted}`,
    `  421 from the gateway, other         ${report.answers.fencedOther} (${table(report.fencedOtherKinds)})`,
    `  other status                        ${report.answers.otherStatus}`,
    `  no answer within the bound          ${report.answers.noAnswer}`,
    `  not answered by its gateway while steadily active (not a failure): ${report.unavailableWhileActive}`,
    `  stale routes (a gateway no other org held throughout; not a failure): ${report.staleRoutes}`,
    ...report.staleRouteSamples.slice(0, 5).map((s) =>
      `    ${s.at} org ${s.org} reached ${s.gateway} through edge :${s.edgePort}; holder ${s.holderBefore} -> ${s.holderAfter}; own ${s.ownBefore} -> ${s.ownAfter}; ${s.diagnosis}`
    ),
    `  fenced by the gateway (421 from a gateway holding another org's live allocation; not a crossing): ${report.fencedByGateway}`,
    ...report.fencedSamples.slice(0, 5).map((s) =>
      `    ${s.at} ${s.via} for org ${s.org} refused by ${s.gateway}: route named ${s.routeAllocation}, it held ${s.held} of org ${s.heldBy}` +
      ` (${s.heldState}); own ${s.ownBefore} -> ${s.ownAfter}; ${s.diagnosis}`
    ),
    ...report.otherSamples.slice(0, 3).map((line) => `    other: ${line}`),
    `  CROSSINGS (another org's gateway, held by it throughout): ${report.crossings}`,
    ...report.crossingSamples.slice(0, 10).map((s) =>
      `    ${s.at} org ${s.org} reached ${s.gateway} through edge :${s.edgePort}, held by org ${s.heldBy} allocation ${s.allocationId}` +
      ` (${s.stateBefore} -> ${s.stateAfter}); own ${s.ownBefore} -> ${s.ownAfter}; ${s.diagnosis}`
    ),
    `long-lived WebSockets through nginx (up to ${ll.target} at a time; longest open ${(ll.longestOpenMs / 1000).toFixed(1)} s):`,
    `  upgrades ${ll.opens.attempts}: opened ${ll.opens.opened}, refused ${table(ll.opens.refused)}, no answer ${ll.opens.noAnswer}` +
    `, first frame naming no allocation ${ll.opens.unowned}`,
    `  messages sent ${ll.messagesSent}, answered ${ll.messagesAnswered} (for the connection's allocation ${ll.answeredOwn})`,
    `  closed ${ll.closes.total}: allocation still active ${ll.closes.whileActive} (not a failure), stopping or rolling back ` +
    `${ll.closes.whileEnding}, over ${ll.closes.afterEnd}; close frames ${table(ll.closes.byCloseCode)}; open at the end ${ll.openAtEnd}`,
    ...ll.otherSamples.slice(0, 5).map((line) => `    ${line}`),
    `  answered holding nothing (outlived the release): ${ll.outlived}`,
    `  answered while another org's live allocation held the gateway throughout (handed over too early): ${ll.handedOver}`,
    ...ll.failureSamples.slice(0, 10).map((line) => `    ${line}`),
    `  LONG-LIVED CROSSINGS (answered for another allocation): ${ll.crossings}`,
    ...ll.crossingSamples.slice(0, 10).map((s) => `    ${describeLongLivedCrossing(s)}`)
  ].join("\n")
}
