import { Clock, Duration, Effect, Either, Metric, Option, Ref } from "effect"
import { Settings } from "../config.ts"
import {
  type Gateway,
  type PendingRelease,
  type QuarantineReason,
  QUARANTINES_WORTH_A_NOTICE,
  RELEASE_FAILURES_WORTH_A_NOTICE
} from "../domain/gateway.ts"
import type { GatewayId } from "../domain/ids.ts"
import { Handshake } from "../handshake/Handshake.ts"
import { gatewayQuarantinesTotal, releaseRetriesTotal } from "../telemetry/Metrics.ts"
import { Notifier } from "../telemetry/Notifier.ts"
import { makeOutageLog } from "../telemetry/Outage.ts"
import { Database } from "../db/Database.ts"
import { GatewayStore } from "./GatewayStore.ts"

/**
 * Gateways set aside and brought back. `setAside` quarantines a gateway that failed (backoff in
 * Postgres, so every replica honours it), counts it, and tells the operator at the third time
 * in a row. Every GATEWAY_HEALTH_INTERVAL_MS, one replica at a time (an advisory-lock job), asks
 * each free gateway's `HEALTH_PATH` (straight to its upstream):
 * - an idle gateway that stops answering is quarantined before a start finds out;
 * - a gateway whose quarantine has run out comes back if it answers, and is quarantined again
 *   (for twice as long) if it does not;
 * - a gateway still in quarantine is left to serve it out;
 * - a gateway whose release failed (it may still hold an org's connections, so no claim takes it)
 *   is asked to release again, and is back in rotation once it confirms.
 * Allocated gateways are not asked: their org's traffic is theirs.
 */
export class GatewayHealth extends Effect.Service<GatewayHealth>()("GatewayHealth", {
  scoped: Effect.gen(function*() {
    const settings = yield* Settings
    const gateways = yield* GatewayStore
    const database = yield* Database
    const handshake = yield* Handshake
    const notifier = yield* Notifier

    /** Quarantines the gateway; never fails (what failed on it is the caller's story). */
    const setAside = (gatewayId: GatewayId, reason: string, kind: QuarantineReason) =>
      Effect.gen(function*() {
        const quarantined = yield* gateways.quarantine(gatewayId, reason, settings.gatewayQuarantineMs)
        yield* Metric.update(gatewayQuarantinesTotal.pipe(Metric.tagged("reason", kind)), 1)
        if (Option.isNone(quarantined)) return
        const { consecutiveFailures, quarantinedUntil } = quarantined.value
        yield* Effect.logWarning(
          `gateway ${gatewayId} quarantined until ${quarantinedUntil.toISOString()} (${consecutiveFailures} failure(s) in a row): ${reason}`
        )
        if (consecutiveFailures === QUARANTINES_WORTH_A_NOTICE) {
          yield* notifier.notify({
            kind: "gateway_quarantined",
            organization_id: null,
            allocation_id: null,
            gateway_id: gatewayId,
            message: `gateway quarantined for the ${consecutiveFailures}rd time in a row: ${reason}`,
            undos: []
          })
        }
      }).pipe(
        Effect.annotateLogs({ gateway_id: gatewayId }),
        Effect.catchAll((error) => Effect.logWarning(`could not quarantine gateway ${gatewayId}: ${error.message}`))
      )

    const check = (gateway: Gateway, nowMs: number) =>
      Effect.gen(function*() {
        const quarantined = gateway.quarantinedUntil !== null
        if (gateway.quarantinedUntil !== null && gateway.quarantinedUntil.getTime() > nowMs) return
        const answer = yield* Effect.either(handshake.checkHealth(gateway.upstream))
        if (Either.isRight(answer)) {
          if (quarantined || gateway.health !== "healthy") {
            yield* gateways.markHealthy(gateway.gatewayId, false)
            if (quarantined) yield* Effect.logInfo(`gateway ${gateway.name} answers its health check again: back in the pool`)
          }
          return
        }
        yield* setAside(gateway.gatewayId, `health check: ${answer.left.reason}`, "health_check")
      }).pipe(Effect.annotateLogs({ gateway_id: gateway.gatewayId }))

    /**
     * Asks a held-back gateway to release its last allocation again (bounded like an undo). Once
     * it confirms, the mark is cleared by allocation id; each failure is counted, and the third in
     * a row is told to the operator.
     */
    const retryRelease = (pending: PendingRelease) =>
      Effect.gen(function*() {
        const { allocationId, gatewayId, organizationId } = pending
        const answer = yield* handshake.release(pending.upstream, {
          organization_id: organizationId,
          gateway_id: gatewayId,
          allocation_id: allocationId
        }).pipe(
          Effect.interruptible,
          Effect.timeout(Duration.millis(settings.undoTimeoutMs)),
          Effect.mapError((error) => error._tag === "TimeoutException" ? `no answer within ${settings.undoTimeoutMs} ms` : error.reason),
          Effect.either
        )
        if (Either.isRight(answer)) {
          yield* Metric.update(releaseRetriesTotal.pipe(Metric.tagged("outcome", "released")), 1)
          if (yield* gateways.releaseConfirmed(gatewayId, allocationId)) {
            yield* Effect.logInfo(`gateway ${pending.name} released allocation ${allocationId} at last: back in the pool`)
          }
          return
        }
        yield* Metric.update(releaseRetriesTotal.pipe(Metric.tagged("outcome", "failed")), 1)
        const failures = yield* gateways.releaseRetryFailed(gatewayId, allocationId, answer.left)
        yield* Effect.logWarning(`gateway ${pending.name} still does not release allocation ${allocationId}: ${answer.left}`)
        if (Option.contains(failures, RELEASE_FAILURES_WORTH_A_NOTICE)) {
          yield* notifier.notify({
            kind: "gateway_unreleased",
            organization_id: organizationId,
            allocation_id: allocationId,
            gateway_id: gatewayId,
            message: `gateway ${pending.name} failed to release org ${organizationId} ${RELEASE_FAILURES_WORTH_A_NOTICE} times in a ` +
              `row (${answer.left}); it stays out of the pool until it confirms`,
            undos: []
          })
        }
      }).pipe(
        Effect.annotateLogs({ gateway_id: pending.gatewayId, organization_id: pending.organizationId, allocation_id: pending.allocationId }),
        Effect.catchAll((error) => Effect.logWarning(`could not record gateway ${pending.name}'s release: ${error.message}`))
      )

    // Where this replica's rotation over the free gateways goes on from (none: from the start).
    const rotation = yield* Ref.make(Option.none<GatewayId>())

    /**
     * One pass, unless another replica is running one. It asks the gateways that matter next, not
     * the whole pool (a pass over 10,000 idle gateways every interval kept a core busy): the next
     * GATEWAY_HEALTH_BATCH a claim would take, every one whose quarantine has run out, and as many
     * others in rotation, so each free gateway is asked at least once every (free / batch)
     * intervals. A pool of up to twice the batch is asked whole, every pass.
     */
    const runOnce = database.exclusively(
      "gateway-health",
      Effect.gen(function*() {
        const nowMs = yield* Clock.currentTimeMillis
        const pending = yield* gateways.pendingReleases()
        yield* Effect.forEach(pending, retryRelease, { concurrency: 8, discard: true })
        const { candidates, rotationEnd } = yield* gateways.healthCandidates(settings.gatewayHealthBatch, yield* Ref.get(rotation))
        yield* Ref.set(rotation, rotationEnd)
        yield* Effect.forEach(candidates, (gateway) => check(gateway, nowMs), { concurrency: 8, discard: true })
        yield* Effect.annotateCurrentSpan({ "gateways.checked": candidates.length, "gateways.releases_retried": pending.length })
        return candidates.length
      })
    ).pipe(Effect.withSpan("HealthChecker.run"))

    // The first pass one interval after start-up: what a start meets before then, it reports itself.
    const outage = yield* makeOutageLog("the gateway health pass")
    yield* Effect.sleep(Duration.millis(settings.gatewayHealthIntervalMs)).pipe(
      Effect.zipRight(runOnce.pipe(
        Effect.matchCauseEffect({ onFailure: outage.reportCause, onSuccess: () => outage.report(Either.void) })
      )),
      Effect.forever,
      Effect.forkScoped
    )

    return { setAside, runOnce }
  })
}) {}
