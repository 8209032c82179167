import { Duration, Effect, Either, Metric, Option, Schedule } from "effect"
import { Settings } from "../config.ts"
import type { LiveAllocation } from "../domain/allocation.ts"
import { ChangedNothing } from "../domain/changedNothing.ts"
import type { OrganizationId } from "../domain/ids.ts"
import { isUnfinished } from "../domain/steps.ts"
import { Dns } from "../dns/Dns.ts"
import { type EdgeRoutes, type ListedRoute, Nginx, type RouteKey } from "../nginx/Nginx.ts"
import { Database } from "../db/Database.ts"
import { AllocationStore } from "./AllocationStore.ts"
import { Runner } from "../pool/Runner.ts"
import { reconcilerRepairsTotal } from "../telemetry/Metrics.ts"
import { Notifier } from "../telemetry/Notifier.ts"
import { makeOutageLog } from "../telemetry/Outage.ts"
import { Ownership } from "./Ownership.ts"
import { StepRunner } from "./StepRunner.ts"
import { EdgeWatcher } from "./EdgeWatcher.ts"
import { Undos } from "./undos.ts"

export interface ReconcileSummary {
  /** Starts and stops whose runner died (or that outlived their deadline), undone or finished. */
  readonly recovered: number
  /** Of those, how many still have an undo that did not finish (retried next pass). */
  readonly incomplete: number
  /** Another replica was repairing drift at the same time: this pass left it to that one. */
  readonly driftSkipped: boolean
  readonly orphanRoutesRemoved: number
  readonly orphanRecordsRemoved: number
  readonly routesRepaired: number
  readonly recordsRepaired: number
}

type RepairKind =
  | "stop_finished"
  | "start_rolled_back"
  | "orphan_route_removed"
  | "orphan_record_removed"
  | "route_restored"
  | "record_restored"

const repaired = (kind: RepairKind, count = 1) =>
  count === 0 ? Effect.void : Metric.update(reconcilerRepairsTotal.pipe(Metric.tagged("kind", kind)), count)

const noDrift = { orphanRoutesRemoved: 0, orphanRecordsRemoved: 0, routesRepaired: 0, recordsRepaired: 0 }

/**
 * Crash recovery and drift repair, at start-up and every RECONCILE_INTERVAL_MS. Every replica
 * recovers orphans (taking each over with a compare-and-set, so each is recovered once, and a
 * frozen replica cannot hold up the others); drift is repaired by one replica at a time (a
 * Postgres advisory lock). It touches only `org-{uuid}` route files and DNS records;
 * foreign files and records are never listed, so never changed.
 */
export class Reconciler extends Effect.Service<Reconciler>()("Reconciler", {
  scoped: Effect.gen(function*() {
    const settings = yield* Settings
    const allocations = yield* AllocationStore
    const database = yield* Database
    const dns = yield* Dns
    const nginx = yield* Nginx
    const edgeWatcher = yield* EdgeWatcher
    const undos = yield* Undos
    const steps = yield* StepRunner
    const ownership = yield* Ownership
    const runner = yield* Runner
    const notifier = yield* Notifier

    /** Undoes an orphaned start, or finishes an orphaned stop, from its row: undos are idempotent. */
    const recover = (found: LiveAllocation) =>
      Effect.gen(function*() {
        const adopted = yield* allocations.adopt(found, runner.id)
        if (Option.isNone(adopted)) return Option.none()
        const allocation = adopted.value
        const finishingStop = allocation.state === "stopping"
        yield* Effect.logWarning(
          `recovering ${finishingStop ? "an interrupted stop" : "an orphaned start"} of runner ${found.runner}`
        )
        const report = yield* steps.withRun(
          { allocationId: allocation.allocationId, organizationId: allocation.organizationId, actor: "reconciler" },
          (run) => steps.undoAll(run, undos.teardown(allocation, finishingStop ? "released" : "rolled_back"), { haltOnBlocking: false })
        )
        const left = report.filter(isUnfinished)
        yield* repaired(finishingStop ? "stop_finished" : "start_rolled_back")
        yield* notifier.notify({
          kind: "reconciler_repair",
          organization_id: allocation.organizationId,
          allocation_id: allocation.allocationId,
          gateway_id: allocation.gatewayId,
          message: `${finishingStop ? "finished an interrupted stop" : "rolled back an orphaned start"} of runner ${
            found.runner
          }${left.length === 0 ? "" : `; ${left.length} undo(s) still to retry`}`,
          undos: report
        })
        return Option.some(left.length === 0)
      }).pipe(
        Effect.annotateLogs({ organization_id: found.organizationId, allocation_id: found.allocationId }),
        Effect.annotateSpans({
          organization_id: found.organizationId,
          allocation_id: found.allocationId,
          gateway_id: found.gatewayId
        }),
        Effect.withSpan("Reconciler.recover")
      )

    /** One notice per org whose route or record was removed or restored. */
    const notifyDrift = (repairs: ReadonlyArray<readonly [OrganizationId, string]>) =>
      Effect.forEach(repairs, ([organizationId, what]) =>
        notifier.notify({
          kind: "reconciler_repair",
          organization_id: organizationId,
          allocation_id: null,
          gateway_id: null,
          message: `drift repaired: ${what}`,
          undos: []
        }), { discard: true })

    /**
     * One edge's routes against Postgres (`live`, read after the listing: anything created after
     * it belongs to an allocation that is already live when it is read):
     * - a route no live allocation owns is removed (compare-and-delete by the allocation it names);
     * - an active allocation whose route is missing or differs in any part (upstream, allocation,
     *   generation) from its row gets its own back, written as a restore (which replaces a
     *   forged or stale entry) while its row is held: a stop cannot take it down halfway, and a
     *   stopped one is not restored.
     */
    const repairRoutes = (edge: EdgeRoutes, routes: ReadonlyArray<ListedRoute>, live: ReadonlyMap<OrganizationId, LiveAllocation>, several: boolean) =>
      Effect.gen(function*() {
        const on = several ? ` on edge ${edge.name}` : ""
        const ownedBy = (route: RouteKey, allocation: Option.Option<LiveAllocation>) =>
          Option.exists(allocation, (a) => a.allocationId === route.allocationId)
        // Looked at again right before each removal: the org may have started since the listing.
        const stillOrphan = (route: RouteKey) => Effect.map(allocations.findLive(route.organizationId), (a) => !ownedBy(route, a))
        const isActive = (organizationId: OrganizationId) => live.get(organizationId)?.state === "active"

        // An active org's route is judged whole below, and replaced rather than removed.
        const removed: Array<ListedRoute> = []
        for (const route of routes) {
          if (isActive(route.organizationId) || ownedBy(route, Option.fromNullable(live.get(route.organizationId)))) continue
          if (!(yield* stillOrphan(route))) continue
          if ((yield* edge.removeRoute(route)) === "removed") removed.push(route)
        }
        // Made to take effect together (reload mode: their reloads coalesce into one).
        yield* Effect.forEach(removed, edge.awaitWithdrawn, { concurrency: "unbounded", discard: true })
        const orphanRoutes = removed.map((route) => [route.organizationId, `orphan route removed${on}`] as const)

        const listed = new Map(routes.map((route) => [route.organizationId, route]))
        /** How the org's route differs from its active allocation's row, if it does. */
        const drift = (a: LiveAllocation): Option.Option<string> => {
          const route = listed.get(a.organizationId)
          if (route === undefined) return Option.some(`missing route restored${on}`)
          if (route.allocationId !== a.allocationId) return Option.some(`route of allocation ${route.allocationId} replaced${on}`)
          if (route.upstream !== a.upstream) return Option.some(`route to ${route.upstream} put back to ${a.upstream}${on}`)
          if (route.generation !== a.generation) {
            return Option.some(`route generation ${route.generation} put back to ${a.generation}${on}`)
          }
          return Option.none()
        }
        const restoreRoute = (a: LiveAllocation) =>
          allocations.whileActive(
            a.allocationId,
            edge.writeRoute(a, { restore: true }).pipe(
              Effect.zipRight(edge.awaitServed(a)),
              Effect.timeout(Duration.millis(settings.stepTimeoutMs))
            )
          )
        // One org's route that cannot be put back (say a fence of a forged removal refuses it, until
        // it expires) holds up no other org's.
        const restoredRoutes = (yield* Effect.forEach(
          [...live.values()].filter((a) => a.state === "active").flatMap((a) =>
            Option.match(drift(a), { onNone: () => [], onSome: (what) => [[a, what] as const] })
          ),
          ([a, what]) =>
            restoreRoute(a).pipe(
              Effect.map(Option.as([a.organizationId, what] as const)),
              Effect.catchAll((error) =>
                Effect.logWarning(`drift: could not put back the route of org ${a.organizationId} (${what}), left to the next pass`, error)
                  .pipe(Effect.as(Option.none()))
              )
            ),
          { concurrency: 8 }
        )).filter(Option.isSome).map((repair) => repair.value)
        return { orphanRoutes, restoredRoutes }
      })

    /**
     * Compares every edge's routes and PowerDNS's records with Postgres, both ways: routes edge by
     * edge (`repairRoutes`; an edge that cannot be listed is left to its catch-up); a record no
     * live allocation owns is deleted while the org's slot is held (`whileUnclaimed`), so a start
     * cannot claim between the check and the delete and lose its record; an active allocation
     * missing its record gets it back, its row held.
     */
    const repairDrift = Effect.gen(function*() {
      // Listed before the allocations are read: anything created after the listing belongs to
      // an allocation that is already live when it is read.
      const edges = yield* nginx.edges
      const listings = yield* Effect.forEach(edges, (edge) =>
        edge.listRoutes.pipe(
          Effect.map(Option.some),
          Effect.catchAll((error) =>
            // Said once by the edge watcher's outage log of that edge, not on every pass.
            Effect.logDebug(`drift: could not list the routes of edge ${edge.name}, left to its catch-up`, error).pipe(Effect.as(Option.none()))
          )
        ), { concurrency: "unbounded" })
      const records = yield* dns.listOrgRecords
      const live = new Map((yield* allocations.liveAllocations()).map((a) => [a.organizationId, a]))

      const perEdge = yield* Effect.forEach(
        edges.flatMap((edge, i) => Option.match(listings[i] ?? Option.none(), { onNone: () => [], onSome: (routes) => [[edge, routes] as const] })),
        ([edge, routes]) => repairRoutes(edge, routes, live, edges.length > 1),
        { concurrency: "unbounded" }
      )
      const orphanRoutes = perEdge.flatMap((repair) => repair.orphanRoutes)
      const restoredRoutes = perEdge.flatMap((repair) => repair.restoredRoutes)

      // A delete that failed without a "no" may still land: the org's slot stays held for one
      // more outside call, so that it lands (or never will) before a claim can follow it.
      const removeOrphanRecord = (organizationId: OrganizationId) =>
        dns.remove(organizationId).pipe(
          Effect.tapError((error) => ChangedNothing.is(error) ? Effect.void : Effect.sleep(Duration.millis(settings.limits.outsideCallMs)))
        )
      const orphanRecords: Array<OrganizationId> = []
      for (const organizationId of records.filter((org) => !live.has(org))) {
        if (Option.isSome(yield* allocations.whileUnclaimed(organizationId, removeOrphanRecord(organizationId)))) {
          orphanRecords.push(organizationId)
        }
      }

      const active = [...live.values()].filter((a) => a.state === "active")
      const recorded = new Set(records)
      const restoredRecords = dns.provider === "none" ? [] : (yield* Effect.forEach(
        active.filter((a) => !recorded.has(a.organizationId)),
        (a) => Effect.map(allocations.whileActive(a.allocationId, dns.upsert(a.organizationId)), Option.as(a.organizationId)),
        { concurrency: 8 }
      )).filter(Option.isSome).map((org) => org.value)

      yield* repaired("orphan_route_removed", orphanRoutes.length)
      yield* repaired("orphan_record_removed", orphanRecords.length)
      yield* repaired("route_restored", restoredRoutes.length)
      yield* repaired("record_restored", restoredRecords.length)
      const changes = orphanRoutes.length + orphanRecords.length + restoredRoutes.length + restoredRecords.length
      if (changes > 0) {
        yield* Effect.logWarning(
          `drift repaired: ${orphanRoutes.length} orphan route(s) and ${orphanRecords.length} orphan record(s) removed, ${restoredRoutes.length} route(s) and ${restoredRecords.length} record(s) restored`
        )
        yield* notifyDrift([
          ...orphanRoutes,
          ...orphanRecords.map((org) => [org, "orphan DNS record removed"] as const),
          ...restoredRoutes,
          ...restoredRecords.map((org) => [org, "missing DNS record restored"] as const)
        ])
      }
      return {
        orphanRoutesRemoved: orphanRoutes.length,
        orphanRecordsRemoved: orphanRecords.length,
        routesRepaired: restoredRoutes.length,
        recordsRepaired: restoredRecords.length
      }
    }).pipe(Effect.withSpan("Reconciler.repairDrift"))

    const pass = Effect.gen(function*() {
      const candidates = yield* allocations.recoverable(runner.id, settings.limits.recoveryDeadlineMs)
      // What a start or a stop of this process is working on is left alone (none).
      const outcomes = yield* Effect.forEach(
        candidates,
        (allocation) => Effect.map(ownership.exclusive(allocation.allocationId, recover(allocation)), Option.flatten),
        { concurrency: 4 }
      )
      const finished = outcomes.filter(Option.isSome)
      // An emptied route table (an edge restarted) or an edge behind is caught up in one push
      // first: drift repair would otherwise restore its routes one by one.
      yield* edgeWatcher.watchNow
      // Drift is judged once the orphans are gone, or their files and records would look owned.
      const drift = yield* database.exclusively("reconciler-drift", repairDrift)
      return {
        recovered: finished.length,
        incomplete: finished.filter((complete) => !complete.value).length,
        driftSkipped: Option.isNone(drift),
        ...Option.getOrElse(drift, () => noDrift)
      } satisfies ReconcileSummary
    })

    /** One reconcile pass. */
    const runOnce = pass.pipe(Effect.withSpan("Reconciler.run", { attributes: { runner: runner.id } }))

    // A pass that cannot run (Postgres away, say) is told when it starts failing, then once a minute.
    const outage = yield* makeOutageLog("the reconcile pass")
    yield* runOnce.pipe(
      Effect.tap((summary) => Effect.logDebug("reconcile pass done").pipe(Effect.annotateLogs({ summary }))),
      Effect.matchCauseEffect({ onFailure: outage.reportCause, onSuccess: () => outage.report(Either.void) }),
      Effect.repeat(Schedule.spaced(Duration.millis(settings.reconcileIntervalMs))),
      Effect.forkScoped
    )

    return { runOnce }
  })
}) {}
