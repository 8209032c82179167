import { Clock, Duration, Effect, Either, Metric, Option, Schedule } from "effect"
import { Settings } from "../config.ts"
import type { Gateway } from "../domain/gateway.ts"
import { QUARANTINES_WORTH_A_NOTICE } from "../domain/gateway.ts"
import { Handshake } from "../handshake/Handshake.ts"
import { gatewayQuarantinesTotal } from "../telemetry/Metrics.ts"
import { Notifier } from "../telemetry/Notifier.ts"
import { GatewayPool } from "./GatewayPool.ts"

/**
 * Every GATEWAY_HEALTH_INTERVAL_MS, one replica at a time (an advisory-lock job), asks each free
 * gateway's `HEALTH_PATH` (straight to its upstream):
 * - an idle gateway that stops answering is quarantined before a start finds out;
 * - a gateway whose quarantine has run out comes back if it answers, and is quarantined again
 *   (for twice as long) if it does not;
 * - a gateway still in quarantine is left to serve it out.
 * Allocated gateways are not asked: their org's traffic is theirs.
 */
export class HealthChecker extends Effect.Service<HealthChecker>()("HealthChecker", {
  scoped: Effect.gen(function*() {
    const settings = yield* Settings
    const pool = yield* GatewayPool
    const handshake = yield* Handshake
    const notifier = yield* Notifier

    const check = (gateway: Gateway, nowMs: number) =>
      Effect.gen(function*() {
        const quarantined = gateway.quarantinedUntil !== null
        if (gateway.quarantinedUntil !== null && gateway.quarantinedUntil.getTime() > nowMs) return
        const answer = yield* Effect.either(handshake.checkHealth(gateway.upstream))
        if (Either.isRight(answer)) {
          if (quarantined || gateway.health !== "healthy") {
            yield* pool.markHealthy(gateway.gatewayId, false)
            if (quarantined) yield* Effect.logInfo(`gateway ${gateway.name} answers its health check again: back in the pool`)
          }
          return
        }
        const reason = `health check: ${answer.left.reason}`
        const result = yield* pool.quarantine(gateway.gatewayId, reason, settings.gatewayQuarantineMs)
        yield* Metric.update(gatewayQuarantinesTotal.pipe(Metric.tagged("reason", "health_check")), 1)
        if (Option.isNone(result)) return
        yield* Effect.logWarning(
          `gateway ${gateway.name} quarantined until ${result.value.quarantinedUntil.toISOString()} ` +
            `(${result.value.consecutiveFailures} failure(s) in a row): ${reason}`
        )
        if (result.value.consecutiveFailures === QUARANTINES_WORTH_A_NOTICE) {
          yield* notifier.notify({
            kind: "gateway_quarantined",
            organization_id: null,
            allocation_id: null,
            gateway_id: gateway.gatewayId,
            message: `gateway ${gateway.name} quarantined for the ${QUARANTINES_WORTH_A_NOTICE}rd time in a row: ${reason}`,
            undos: []
          })
        }
      }).pipe(Effect.annotateLogs({ gateway_id: gateway.gatewayId }))

    /** One pass over the free gateways, unless another replica is running one. */
    const runOnce = pool.exclusively(
      "gateway-health",
      Effect.gen(function*() {
        const nowMs = yield* Clock.currentTimeMillis
        const free = (yield* pool.listGateways()).filter((gateway) => gateway.allocationId === null)
        yield* Effect.forEach(free, (gateway) => check(gateway, nowMs), { concurrency: 8, discard: true })
        return free.length
      })
    ).pipe(Effect.withSpan("HealthChecker.run"))

    yield* runOnce.pipe(
      Effect.catchAllCause((cause) => Effect.logWarning("gateway health pass failed", cause)),
      Effect.repeat(Schedule.spaced(Duration.millis(settings.gatewayHealthIntervalMs))),
      Effect.forkScoped
    )

    return { runOnce }
  })
}) {}
