import { Effect, Metric, MetricBoundaries } from "effect"
import type { StartOutcome, StepName, UndoStatus } from "../domain/steps.ts"

// Every metric the service records, in one place. They are Effect metrics: the OpenTelemetry
// metrics bridge exports them (GET /metrics), so recording them costs nothing else.

const durationBoundaries = MetricBoundaries.exponential({ start: 1, factor: 2, count: 16 }) // 1 ms .. ~33 s

export const startsTotal = Metric.counter("gateway_allocator_starts_total", {
  description: "Starts by outcome (success, reused, no_gateway, shutting_down, step_failed, step_timed_out, interrupted)",
  incremental: true
})

export const stepDuration = Metric.histogram(
  "gateway_allocator_step_duration_ms",
  durationBoundaries,
  "Duration of each forward step, by step and outcome"
)

export const stepFailuresTotal = Metric.counter("gateway_allocator_step_failures_total", {
  description: "Forward step failures by step and kind (failed, timed_out)",
  incremental: true
})

export const undosTotal = Metric.counter("gateway_allocator_undos_total", {
  description: "Undos by step, outcome (done, failed, timed_out, skipped) and actor",
  incremental: true
})

export const rollbacksIncompleteTotal = Metric.counter("gateway_allocator_rollbacks_incomplete_total", {
  description: "Rollbacks in which at least one undo failed or timed out (left to the reconciler)",
  incremental: true
})

export const reconcilerRepairsTotal = Metric.counter("gateway_allocator_reconciler_repairs_total", {
  description: "Repairs made by the reconciler, by kind",
  incremental: true
})

export const poolGatewaysTotal = Metric.gauge("gateway_allocator_pool_gateways_total", {
  description: "Gateways in the pool"
})
export const poolGatewaysFree = Metric.gauge("gateway_allocator_pool_gateways_free", {
  description: "Free gateways in the pool"
})
export const poolGatewaysAllocated = Metric.gauge("gateway_allocator_pool_gateways_allocated", {
  description: "Allocated gateways in the pool"
})

export const gatewayQuarantinesTotal = Metric.counter("gateway_allocator_gateway_quarantines_total", {
  description: "Gateways set aside, by reason (start: a start failed on it; health_check: an idle one stopped answering)",
  incremental: true
})

export const startAttempts = Metric.histogram(
  "gateway_allocator_start_attempts",
  MetricBoundaries.linear({ start: 1, width: 1, count: 10 }),
  "Gateways tried by one start (more than one: a gateway failed and the start moved on)"
)

export const poolGatewaysAvailable = Metric.gauge("gateway_allocator_pool_gateways_available", {
  description: "Free gateways that may be handed out now (not quarantined, not draining)"
})
export const poolGatewaysQuarantined = Metric.gauge("gateway_allocator_pool_gateways_quarantined", {
  description: "Gateways in quarantine"
})
export const poolGatewaysDraining = Metric.gauge("gateway_allocator_pool_gateways_draining", {
  description: "Gateways draining (not handed out again)"
})
export const poolGatewaysUnreleased = Metric.gauge("gateway_allocator_pool_gateways_unreleased", {
  description: "Free gateways held back because their release failed (they may still hold an org's connections)"
})
export const poolGatewaysHeld = Metric.gauge("gateway_allocator_pool_gateways_held", {
  description: "Free gateways held back until every nginx edge acknowledged the removal of their last org's route"
})

export const dependencyUp = Metric.gauge("gateway_allocator_dependency_up", {
  description: "Whether a dependency (postgres, powerdns, edge) answered its last check: 1 usable, 0 not"
})

export const releaseRetriesTotal = Metric.counter("gateway_allocator_release_retries_total", {
  description: "Releases retried by the health pass for gateways held back, by outcome (released, failed)",
  incremental: true
})

export const nginxReloadsTotal = Metric.counter("gateway_allocator_nginx_reloads_total", {
  description: "nginx reloads by outcome (ok, failed)",
  incremental: true
})

export const nginxReloadBatchSize = Metric.histogram(
  "gateway_allocator_nginx_reload_batch_size",
  MetricBoundaries.exponential({ start: 1, factor: 2, count: 10 }),
  "Reload requests served by one nginx reload (coalescing)"
)

export const recordStep = (step: StepName, outcome: "completed" | "failed" | "timed_out", durationMs: number) =>
  Effect.all([
    Metric.update(stepDuration.pipe(Metric.tagged("step", step), Metric.tagged("outcome", outcome)), durationMs),
    outcome === "completed"
      ? Effect.void
      : Metric.update(stepFailuresTotal.pipe(Metric.tagged("step", step), Metric.tagged("kind", outcome)), 1)
  ], { discard: true })

export const recordUndo = (step: StepName, status: UndoStatus, actor: string) =>
  Metric.update(
    undosTotal.pipe(Metric.tagged("step", step), Metric.tagged("outcome", status), Metric.tagged("actor", actor)),
    1
  )

export const recordStart = (outcome: StartOutcome) => Metric.update(startsTotal.pipe(Metric.tagged("outcome", outcome)), 1)

export const recordPool = (stats: {
  readonly total: number
  readonly free: number
  readonly allocated: number
  readonly available: number
  readonly quarantined: number
  readonly draining: number
  readonly unreleased: number
  readonly held: number
}) =>
  Effect.all([
    Metric.set(poolGatewaysTotal, stats.total),
    Metric.set(poolGatewaysFree, stats.free),
    Metric.set(poolGatewaysAllocated, stats.allocated),
    Metric.set(poolGatewaysAvailable, stats.available),
    Metric.set(poolGatewaysQuarantined, stats.quarantined),
    Metric.set(poolGatewaysDraining, stats.draining),
    Metric.set(poolGatewaysUnreleased, stats.unreleased),
    Metric.set(poolGatewaysHeld, stats.held)
  ], { discard: true })

export const tlsCertificateExpiry = Metric.gauge("gateway_allocator_tls_certificate_expiry_seconds", {
  description: "Seconds until the TLS certificate nginx serves (NGINX_TLS_CERT) expires, as last read (alert well before 0)"
})
