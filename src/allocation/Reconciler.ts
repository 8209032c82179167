import { Duration, Effect, Metric, Option, Schedule } from "effect"
import { Settings } from "../config.ts"
import type { LiveAllocation } from "../domain/allocation.ts"
import type { OrganizationId } from "../domain/ids.ts"
import { isUnfinished } from "../domain/steps.ts"
import { Dns } from "../dns/Dns.ts"
import { Nginx } from "../nginx/Nginx.ts"
import { GatewayPool } from "../pool/GatewayPool.ts"
import { Runner } from "../pool/Runner.ts"
import { reconcilerRepairsTotal } from "../telemetry/Metrics.ts"
import { Notifier } from "../telemetry/Notifier.ts"
import { Allocator } from "./Allocator.ts"
import { type Run, StepRunner } from "./StepRunner.ts"
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
    const pool = yield* GatewayPool
    const dns = yield* Dns
    const nginx = yield* Nginx
    const undos = yield* Undos
    const steps = yield* StepRunner
    const allocator = yield* Allocator
    const runner = yield* Runner
    const notifier = yield* Notifier

    /** Undoes an orphaned start, or finishes an orphaned stop, from its row: undos are idempotent. */
    const recover = (found: LiveAllocation) =>
      Effect.gen(function*() {
        const adopted = yield* pool.adopt(found, runner.id)
        if (Option.isNone(adopted)) return Option.none()
        const allocation = adopted.value
        const finishingStop = allocation.state === "stopping"
        const run: Run = { allocationId: allocation.allocationId, organizationId: allocation.organizationId, actor: "reconciler" }
        yield* Effect.logWarning(
          `recovering ${finishingStop ? "an interrupted stop" : "an orphaned start"} of runner ${found.runner}`
        )
        const report = yield* steps.undoAll(
          run,
          undos.teardown(allocation, finishingStop ? "released" : "rolled_back"),
          { untilUnfinished: false }
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

    /** Files and records nobody owns are removed; active allocations missing theirs get them back. */
    const repairDrift = Effect.gen(function*() {
      // Listed before the allocations are read: anything created after the listing belongs to
      // an allocation that is already live when it is read.
      const routes = yield* nginx.listRoutes
      const records = yield* dns.listOrgRecords
      const live = new Map((yield* pool.liveAllocations()).map((a) => [a.organizationId, a]))
      const stillOrphaned = (organizationId: OrganizationId) => Effect.map(pool.findLive(organizationId), Option.isNone)

      const orphanRoutes: Array<OrganizationId> = []
      for (const organizationId of routes.filter((org) => !live.has(org))) {
        if (!(yield* stillOrphaned(organizationId))) continue
        yield* nginx.removeRoute(organizationId)
        orphanRoutes.push(organizationId)
      }
      if (orphanRoutes.length > 0) yield* nginx.reload

      const orphanRecords: Array<OrganizationId> = []
      for (const organizationId of records.filter((org) => !live.has(org))) {
        if (!(yield* stillOrphaned(organizationId))) continue
        yield* dns.remove(organizationId)
        orphanRecords.push(organizationId)
      }

      const active = [...live.values()].filter((a) => a.state === "active")
      const routeSet = new Set(routes)
      const recordSet = new Set(records)
      const missingRoutes = active.filter((a) => !routeSet.has(a.organizationId))
      for (const allocation of missingRoutes) {
        yield* nginx.writeRoute(allocation)
      }
      if (missingRoutes.length > 0) {
        yield* nginx.reload
        yield* Effect.forEach(missingRoutes, (a) =>
          nginx.awaitRoute(a.organizationId, a.allocationId).pipe(
            Effect.timeout(Duration.millis(settings.stepTimeoutMs))
          ), { concurrency: 8, discard: true })
      }
      const missingRecords = dns.provider === "none" ? [] : active.filter((a) => !recordSet.has(a.organizationId))
      yield* Effect.forEach(missingRecords, (a) => dns.upsert(a.organizationId), { concurrency: 8, discard: true })

      yield* repaired("orphan_route_removed", orphanRoutes.length)
      yield* repaired("orphan_record_removed", orphanRecords.length)
      yield* repaired("route_restored", missingRoutes.length)
      yield* repaired("record_restored", missingRecords.length)
      const changes = orphanRoutes.length + orphanRecords.length + missingRoutes.length + missingRecords.length
      if (changes > 0) {
        yield* Effect.logWarning(
          `drift repaired: ${orphanRoutes.length} orphan route(s) and ${orphanRecords.length} orphan record(s) removed, ${missingRoutes.length} route(s) and ${missingRecords.length} record(s) restored`
        )
        yield* notifyDrift([
          ...orphanRoutes.map((org) => [org, "orphan route removed"] as const),
          ...orphanRecords.map((org) => [org, "orphan DNS record removed"] as const),
          ...missingRoutes.map((a) => [a.organizationId, "missing route restored"] as const),
          ...missingRecords.map((a) => [a.organizationId, "missing DNS record restored"] as const)
        ])
      }
      return {
        orphanRoutesRemoved: orphanRoutes.length,
        orphanRecordsRemoved: orphanRecords.length,
        routesRepaired: missingRoutes.length,
        recordsRepaired: missingRecords.length
      }
    }).pipe(Effect.withSpan("Reconciler.repairDrift"))

    const pass = Effect.gen(function*() {
      const candidates = yield* pool.recoverable(runner.id, settings.limits.recoveryDeadlineMs)
      const orphans: Array<LiveAllocation> = []
      for (const allocation of candidates) {
        // This process's own allocations are left alone while it is still working on them.
        if (allocation.runner === runner.id && (yield* allocator.busy(allocation.allocationId))) continue
        orphans.push(allocation)
      }
      const outcomes = yield* Effect.forEach(orphans, recover, { concurrency: 4 })
      const finished = outcomes.filter(Option.isSome)
      // Drift is judged once the orphans are gone, or their files and records would look owned.
      const drift = yield* pool.exclusively("reconciler-drift", repairDrift)
      return {
        recovered: finished.length,
        incomplete: finished.filter((complete) => !complete.value).length,
        driftSkipped: Option.isNone(drift),
        ...Option.getOrElse(drift, () => noDrift)
      } satisfies ReconcileSummary
    })

    /** One reconcile pass. */
    const runOnce = pass.pipe(Effect.withSpan("Reconciler.run", { attributes: { runner: runner.id } }))

    yield* runOnce.pipe(
      Effect.tap((summary) => Effect.logDebug("reconcile pass done").pipe(Effect.annotateLogs({ summary }))),
      Effect.catchAllCause((cause) => Effect.logError("reconcile pass failed", cause)),
      Effect.repeat(Schedule.spaced(Duration.millis(settings.reconcileIntervalMs))),
      Effect.forkScoped
    )

    return { runOnce }
  })
}) {}
