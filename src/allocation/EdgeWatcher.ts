import { Duration, Effect, Either, Metric, Option, Ref, Schedule } from "effect"
import { AllocationStore } from "./AllocationStore.ts"
import { Database } from "../db/Database.ts"
import { type EdgeId, Generation } from "../domain/ids.ts"
import { describeCause } from "../lib/describeCause.ts"
import type { TableState } from "../nginx/Nginx.ts"
import { Dependencies } from "../readiness/Dependencies.ts"
import { reconcilerRepairsTotal } from "../telemetry/Metrics.ts"
import { makeOutageLog } from "../telemetry/Outage.ts"
import { EdgeRegistry } from "../edges/EdgeRegistry.ts"
import { type EdgeMember, EdgeSet } from "../edges/EdgeSet.ts"

/** How often each edge's table is looked at: a restarted edge gets its routes back within this (plus the push). */
const WATCH_INTERVAL = Duration.millis(250)

/** How often the registry is read again, each edge told it was reached, and acknowledgements recorded. */
const HEARTBEAT_INTERVAL = Duration.seconds(1)

/** An edge's own readiness lasts this long after a heartbeat: three missed heartbeats take it out. */
export const HEARTBEAT_TTL_MS = 3_000

/** What one look at an edge found. */
type Look = { readonly _tag: "ok"; readonly state: Option.Option<TableState> } | { readonly _tag: "failed"; readonly reason: string }

/**
 * Keeps every edge up to date with Postgres (lua routing), in every replica:
 * - an edge whose table is not filled for its boot id (a new nginx, or a restarted one: shared
 *   memory survives reloads, not restarts, and an empty table answers 503 for every org) or that
 *   missed a change (`behind`) is **caught up**, by one replica at a time: every active route
 *   pushed (rows held `FOR SHARE`, so a stop cannot take one down halfway; the table's
 *   generations and fences fence the rest), which marks its table ready; then every route no live
 *   allocation owns removed (by the allocation it names); then the removals it owed and has now
 *   done settled (their gateways return to the pool); then it is no longer behind, unless it was
 *   marked again meanwhile. Reading a new boot id makes each replica push back the fences it wrote
 *   to that edge first (see LuaRouting).
 * - an edge up to date is told every second that a replica reached it (its own readiness lasts
 *   HEARTBEAT_TTL_MS, so a load balancer takes out an edge the replicas cannot reach), and the
 *   registry records when it was seen and what it acknowledged.
 * What it meets is the `edge` dependency's readiness: usable while at least one edge is. Each
 * edge's failures are an outage log of their own (told once, not every 250 ms).
 * In reload mode there is nothing to lose (route files survive a restart) and nothing to tell.
 */
export class EdgeWatcher extends Effect.Service<EdgeWatcher>()("EdgeWatcher", {
  scoped: Effect.gen(function*() {
    const set = yield* EdgeSet
    const registry = yield* EdgeRegistry
    const allocations = yield* AllocationStore
    const database = yield* Database
    const dependencies = yield* Dependencies

    yield* set.registerLocal

    const outages = new Map<EdgeId, Effect.Effect.Success<ReturnType<typeof makeOutageLog>>>()
    const outageOf = (member: EdgeMember) =>
      Effect.gen(function*() {
        const known = outages.get(member.edgeId)
        if (known !== undefined) return known
        const log = yield* makeOutageLog(`edge ${member.name}`)
        outages.set(member.edgeId, log)
        return log
      })
    /**
     * What this process's last look found of each edge's table (after any catch-up it ran): a new
     * boot id is a restart, worth a warning; the heartbeat goes by it rather than asking again.
     */
    const lastState = yield* Ref.make(new Map<EdgeId, TableState>())

    /** Brings one edge up to date with Postgres (see the class comment); how many routes it holds then. */
    const catchUp = (member: EdgeMember, state: TableState) =>
      Effect.gen(function*() {
        const routes = member.routes
        const pushed = yield* allocations.withActiveAllocations((active) => Effect.as(routes.restoreAll(state.bootId, active), active.length))
        const listed = yield* routes.listRoutes
        const live = new Set((yield* allocations.liveAllocations()).map((a) => a.allocationId))
        const orphans = listed.filter((route) => !live.has(route.allocationId))
        yield* Effect.forEach(orphans, (route) => routes.removeRoute(route), { concurrency: 8, discard: true })
        // Debts of allocations that are over: their routes were orphans, removed just now.
        const settled = yield* registry.owedFinished(member.edgeId)
        yield* registry.settle(member.edgeId, settled.map((owed) => owed.allocationId))
        const cleared = yield* registry.markCaughtUp(member.edgeId, {
          fromMark: member.behindMark,
          bootId: state.bootId,
          routeCount: listed.length - orphans.length
        })
        const restarted = Option.exists(Option.fromNullable((yield* Ref.get(lastState)).get(member.edgeId)), (seen) => seen.bootId !== state.bootId)
        yield* Metric.update(reconcilerRepairsTotal.pipe(Metric.tagged("kind", "route_table_restored")), 1)
        yield* (restarted ? Effect.logWarning : Effect.logInfo)(
          `edge ${member.name} ${
            restarted ? "restarted (its route table came back empty)" : state.ready ? "was behind" : "had its route table not filled yet"
          }: ${pushed} active route(s) pushed, ${orphans.length} orphan route(s) removed, ${settled.length} owed removal(s) settled` +
            (cleared ? "" : "; it missed a change meanwhile, so it is caught up again")
        ).pipe(Effect.annotateLogs({ edge_id: member.edgeId, boot_id: state.bootId }))
        return cleared
      }).pipe(Effect.withSpan("EdgeWatcher.catchUp", { attributes: { edge: member.name } }))

    /** One look at an edge: its table's state, and a catch-up when it needs one (one replica at a time). */
    const look = (member: EdgeMember): Effect.Effect<Look> =>
      Effect.gen(function*() {
        const state = yield* member.routes.tableState
        if (Option.isNone(state)) return { _tag: "ok", state } as const
        let ready = state.value.ready
        if (!state.value.ready || member.behind) {
          const cleared = yield* database.exclusively(`edge-catch-up:${member.edgeId}`, catchUp(member, state.value))
          // The push marked the table ready (when this replica ran it).
          ready = ready || Option.isSome(cleared)
          // Up to date: it takes (awaited) writes again from now, not from the next read of the registry.
          if (Option.getOrElse(cleared, () => false)) yield* set.refresh
        }
        yield* Ref.update(lastState, (states) => new Map(states).set(member.edgeId, { bootId: state.value.bootId, ready }))
        return { _tag: "ok", state } as const
      }).pipe(
        Effect.catchAllCause((cause) => Effect.succeed({ _tag: "failed", reason: describeCause(cause) } as const)),
        Effect.tap((result) =>
          Effect.flatMap(outageOf(member), (log) => log.report(result._tag === "ok" ? Either.void : Either.left(result.reason)))
        )
      )

    // Usable while one edge is; otherwise each edge's reason.
    const watch = Effect.gen(function*() {
      const members = yield* set.members
      const looks = yield* Effect.forEach(members, look, { concurrency: "unbounded" })
      const asked = looks.some((l) => l._tag === "failed" || Option.isSome(l.state))
      if (!asked) return
      const failures = looks.flatMap((l, i) => (l._tag === "failed" ? [`edge ${members[i]?.name}: ${l.reason}`] : []))
      yield* dependencies.report("edge", failures.length < looks.length ? Either.void : Either.left(failures.join("; ")))
    })

    /**
     * The removals an edge owes for allocations that are over, made and settled: a debt whose
     * allocation was still live when the edge was caught up (its owner's stop still running) is
     * paid once that allocation is over, whether or not the edge is behind by then. Each removal
     * names its allocation (compare-and-delete, fenced), so a newer allocation's route stays.
     */
    const payDebts = (member: EdgeMember) =>
      Effect.gen(function*() {
        const finished = yield* registry.owedFinished(member.edgeId)
        if (finished.length === 0) return
        yield* Effect.forEach(finished, (owed) =>
          member.routes.removeRoute({
            organizationId: owed.organizationId,
            allocationId: owed.allocationId,
            generation: Generation.make(owed.generation)
          }), { concurrency: 8, discard: true })
        yield* registry.settle(member.edgeId, finished.map((owed) => owed.allocationId))
        yield* Effect.logInfo(`edge ${member.name} acknowledged ${finished.length} removal(s) it owed: their gateways are no longer held by it`)
          .pipe(Effect.annotateLogs({ edge_id: member.edgeId }))
      })

    /** Each edge up to date told it was reached; the registry told what each was seen with and acknowledged. */
    const heartbeat = Effect.gen(function*() {
      yield* set.refresh
      const members = yield* set.members
      yield* Effect.forEach(members, (member) =>
        Effect.gen(function*() {
          const state = (yield* Ref.get(lastState)).get(member.edgeId)
          if (state === undefined || !state.ready) return
          yield* payDebts(member)
          if (member.behind) return
          yield* member.routes.heartbeat(state.bootId, HEARTBEAT_TTL_MS, !member.draining)
          yield* registry.markSeen(member.edgeId, { bootId: state.bootId })
        }).pipe(
          Effect.catchAll((error) => registry.markFailing(member.edgeId, error.message).pipe(Effect.ignore))
        ), { concurrency: "unbounded", discard: true })
      const acknowledged = yield* set.takeAcknowledged
      yield* Effect.forEach(acknowledged, ([edgeId, generation]) => registry.acknowledge(edgeId, generation), { discard: true })
    }).pipe(Effect.catchAllCause((cause) => Effect.logDebug(`edge heartbeat: ${describeCause(cause)}`)))

    // Once before the service takes requests (an empty table answers 503 for everyone), then on.
    yield* watch
    yield* heartbeat
    yield* watch.pipe(Effect.schedule(Schedule.spaced(WATCH_INTERVAL)), Effect.forkScoped)
    yield* heartbeat.pipe(Effect.schedule(Schedule.spaced(HEARTBEAT_INTERVAL)), Effect.forkScoped)

    /** Every edge looked at now (the reconciler, before drift repair: a refilled table is not drift). */
    return { watchNow: watch }
  })
}) {}
