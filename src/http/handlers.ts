import { HttpApiBuilder, HttpMiddleware } from "@effect/platform"
import { createHash, timingSafeEqual } from "node:crypto"
import { Duration, Effect, Layer, Option, Redacted } from "effect"
import { AllocationQueries } from "../allocation/AllocationQueries.ts"
import { Allocator } from "../allocation/Allocator.ts"
import { ApiToken, TraceUrlConfig } from "../config.ts"
import type { Allocation } from "../domain/allocation.ts"
import type { AllocationNotFound, StartError } from "../domain/errors.ts"
import type { Gateway } from "../domain/gateway.ts"
import { undoStatusOf, type UndoOutcome } from "../domain/steps.ts"
import { EdgeRegistry, type GatewayHolds } from "../edges/EdgeRegistry.ts"
import type { JournalEntry } from "../journal/Journal.ts"
import { GatewayStore } from "../pool/GatewayStore.ts"
import { Dependencies } from "../readiness/Dependencies.ts"
import { recordPool } from "../telemetry/Metrics.ts"
import { PrometheusMetrics } from "../telemetry/Prometheus.ts"
import { Api } from "./Api.ts"
import { Authorization } from "./apiShared.ts"
import * as ApiError from "./errors.ts"

const POOL_GAUGES_TTL = Duration.seconds(1)

const digest = (value: string) => createHash("sha256").update(value).digest()

/** Bearer auth against API_TOKEN, compared in constant time (digests hide the length too). */
export const AuthorizationLive = Layer.effect(
  Authorization,
  Effect.gen(function*() {
    const expected = digest(Redacted.value(yield* ApiToken))
    const unauthorized = new ApiError.Unauthorized({ message: "missing or wrong bearer token" })
    return Authorization.of({
      bearer: (token) =>
        timingSafeEqual(digest(Redacted.value(token)), expected) ? Effect.void : Effect.fail(unauthorized)
    })
  })
)

const unavailable = ApiError.serviceUnavailable
const notFound = (error: AllocationNotFound) => new ApiError.NotFound({ message: error.message })

const startError = (error: StartError) => {
  if (error._tag === "NoGatewayAvailable") return new ApiError.NoGatewayAvailableResponse({ message: error.message })
  if (error._tag === "ShuttingDown") return new ApiError.ServiceUnavailable({ message: error.message })
  const report = {
    ...(error.allocationId === undefined ? {} : { allocation_id: error.allocationId }),
    rollback: error.rollback,
    attempts: error.attempts.map((attempt) => ({
      gateway_id: attempt.gatewayId ?? null,
      allocation_id: attempt.allocationId ?? null,
      step: attempt.error._tag === "ActivationFailed" ? null : attempt.error.step,
      message: attempt.error._tag === "StepFailed" || attempt.error._tag === "ActivationFailed" ? attempt.error.reason : attempt.error.message,
      rollback: attempt.rollback
    }))
  }
  const last = error.error
  switch (last._tag) {
    case "ActivationFailed":
      return new ApiError.ActivationFailedResponse({ ...report, message: last.reason })
    case "StepFailed":
      return new ApiError.StepFailedResponse({ ...report, step: last.step, message: last.reason })
    case "StepTimedOut":
      return new ApiError.StepTimedOutResponse({ ...report, step: last.step, message: last.message, timeout_ms: last.timeoutMs })
  }
}

/** The outcome of each undo of the allocation's last rollback or stop, from the journal. */
const rollbackFromJournal = (entries: ReadonlyArray<JournalEntry>): ReadonlyArray<UndoOutcome> =>
  entries.flatMap((entry) =>
    Option.match(undoStatusOf(entry.event), {
      onNone: () => [],
      onSome: (status): Array<UndoOutcome> => [{
        step: entry.step,
        status,
        ...(entry.detail === null ? {} : { message: entry.detail }),
        duration_ms: entry.durationMs ?? 0
      }]
    })
  )


const poolGateway = (holds: GatewayHolds) => (gateway: Gateway) => ({
  gateway_id: gateway.gatewayId,
  name: gateway.name,
  upstream: gateway.upstream,
  allocation_id: gateway.allocationId,
  state: gateway.state,
  health: gateway.unreleasedAllocationId === null ? gateway.health : "unreleased" as const,
  unreleased_allocation_id: gateway.unreleasedAllocationId,
  quarantined_until: gateway.quarantinedUntil?.toISOString() ?? null,
  last_failure: gateway.lastFailure,
  held_by_edges: holds.get(gateway.gatewayId) ?? []
})

export const GatewayHandlers = HttpApiBuilder.group(Api, "gateway", (handlers) =>
  Effect.gen(function*() {
    const allocator = yield* Allocator
    const queries = yield* AllocationQueries
    return handlers
      .handle("start", ({ payload }) =>
        allocator.start(payload.organization_id).pipe(
          Effect.map((started) => ({
            organization_id: started.organizationId,
            gateway_id: started.gatewayId,
            gateway_hostname: started.hostname,
            allocation_id: started.allocationId,
            reused: started.reused
          })),
          Effect.mapError(startError)
        ))
      .handle("stop", ({ payload }) =>
        allocator.stop(payload.organization_id).pipe(
          Effect.map((stopped) => ({
            organization_id: stopped.organizationId,
            gateway_id: stopped.gatewayId,
            released: true as const,
            gateway_release: stopped.gatewayRelease
          })),
          Effect.catchTags({
            AllocationNotFound: (error) => Effect.fail(notFound(error)),
            InTransition: (error) => Effect.fail(new ApiError.Conflict({ message: error.message })),
            DatabaseError: (error) => Effect.fail(unavailable(error)),
            StopFailed: (error) =>
              Effect.fail(
                new ApiError.StopFailedResponse({
                  step: error.undo.step,
                  message: error.undo.message ?? error.undo.status,
                  allocation_id: error.allocationId
                })
              )
          })
        ))
      .handle("status", ({ path }) =>
        queries.status(path.organization_id).pipe(
          Effect.map((allocation) => ({
            organization_id: allocation.organizationId,
            gateway_id: allocation.gatewayId,
            gateway_hostname: allocation.hostname,
            allocation_id: allocation.allocationId,
            upstream: allocation.upstream,
            state: allocation.state
          })),
          Effect.catchTags({
            AllocationNotFound: (error) => Effect.fail(notFound(error)),
            DatabaseError: (error) => Effect.fail(unavailable(error))
          })
        ))
  }))

const traceLink = (traceId: string | null, template: Option.Option<string>) =>
  traceId === null ? null : Option.getOrNull(Option.map(template, (url) => url.replaceAll("{trace_id}", traceId)))

/** An allocation as the API shows it, with its journal and a link to its trace when traces are exported. */
const allocationBody = (
  allocation: Allocation & { readonly hostname: string; readonly steps: ReadonlyArray<JournalEntry> },
  traceUrl: Option.Option<string>
) => ({
  allocation_id: allocation.allocationId,
  organization_id: allocation.organizationId,
  gateway_id: allocation.gatewayId,
  gateway_hostname: allocation.hostname,
  upstream: allocation.upstream,
  state: allocation.state,
  runner: allocation.runner,
  created_at: allocation.createdAt.toISOString(),
  updated_at: allocation.updatedAt.toISOString(),
  finished_at: allocation.finishedAt?.toISOString() ?? null,
  error: allocation.error ?? null,
  trace_id: allocation.traceId,
  trace_url: traceLink(allocation.traceId, traceUrl),
  steps: allocation.steps.map((entry) => ({
    step: entry.step,
    event: entry.event,
    actor: entry.actor,
    detail: entry.detail,
    duration_ms: entry.durationMs,
    at: entry.at.toISOString()
  })),
  rollback: rollbackFromJournal(allocation.steps)
})

export const AllocationsHandlers = HttpApiBuilder.group(Api, "allocations", (handlers) =>
  Effect.gen(function*() {
    const queries = yield* AllocationQueries
    const traceUrl = yield* TraceUrlConfig
    return handlers
      .handle("list", ({ urlParams }) =>
        queries.list({ state: urlParams.state, organizationId: urlParams.organization_id, limit: urlParams.limit }).pipe(
          Effect.map((allocations) => ({ allocations: allocations.map((allocation) => allocationBody(allocation, traceUrl)) })),
          Effect.mapError(unavailable)
        ))
      .handle("get", ({ path }) =>
        queries.describe(path.allocation_id).pipe(
          Effect.map((allocation) => allocationBody(allocation, traceUrl)),
          Effect.catchTags({
            AllocationNotFound: (error) => Effect.fail(notFound(error)),
            DatabaseError: (error) => Effect.fail(unavailable(error))
          })
        ))
  }))

export const PoolHandlers = HttpApiBuilder.group(Api, "pool", (handlers) =>
  Effect.gen(function*() {
    const gateways = yield* GatewayStore
    const edges = yield* EdgeRegistry
    return handlers
      .handle("get", () =>
        Effect.all([gateways.stats(), gateways.listGateways(), edges.holds()]).pipe(
          Effect.map(([stats, gateways, holds]) => ({ ...stats, gateways: gateways.map(poolGateway(holds)) })),
          Effect.mapError(unavailable)
        ))
      .handle("addGateway", ({ payload }) =>
        gateways.addGateway(payload.name, payload.upstream).pipe(
          Effect.map((gateway) => ({ gateway_id: gateway.gatewayId, name: gateway.name, upstream: gateway.upstream })),
          Effect.catchTags({
            GatewayNameTaken: (error) =>
              Effect.fail(new ApiError.Conflict({ message: `a gateway named ${error.name} exists` })),
            GatewayUpstreamTaken: (error) =>
              Effect.fail(new ApiError.Conflict({ message: `upstream ${error.upstream} is in the pool already` })),
            DatabaseError: (error) => Effect.fail(unavailable(error))
          })
        ))
      .handle("setGatewayState", ({ path, payload }) =>
        gateways.setGatewayState(path.gateway_id, payload.state).pipe(
          Effect.flatMap((gateway) => Effect.map(edges.holds(), (holds) => poolGateway(holds)(gateway))),
          Effect.catchTags({
            GatewayNotFound: (error) => Effect.fail(new ApiError.NotFound({ message: `gateway ${error.gatewayId} not found` })),
            DatabaseError: (error) => Effect.fail(unavailable(error))
          })
        ))
      .handle("removeGateway", ({ path }) =>
        gateways.removeGateway(path.gateway_id).pipe(
          Effect.as({ gateway_id: path.gateway_id, removed: true as const }),
          Effect.catchTags({
            GatewayNotFound: (error) => Effect.fail(new ApiError.NotFound({ message: `gateway ${error.gatewayId} not found` })),
            GatewayAllocated: (error) =>
              Effect.fail(new ApiError.Conflict({ message: `gateway ${error.gatewayId} is allocated: stop its org first` })),
            DatabaseError: (error) => Effect.fail(unavailable(error))
          })
        ))
  }))

export const HealthHandlers = HttpApiBuilder.group(Api, "health", (handlers) =>
  Effect.gen(function*() {
    const gateways = yield* GatewayStore
    const dependencies = yield* Dependencies
    const prometheus = yield* PrometheusMetrics
    // The pool gauges are read from the database at most once a second, however often /metrics
    // is scraped; without the database the rest still answers.
    const refreshPoolGauges = yield* Effect.cachedWithTTL(
      gateways.stats().pipe(
        Effect.flatMap(recordPool),
        Effect.catchAll((error) => Effect.logWarning(`metrics: pool gauges not refreshed: ${error.message}`))
      ),
      POOL_GAUGES_TTL
    )
    return handlers
      .handle("healthz", () => HttpMiddleware.withLoggerDisabled(Effect.succeed({ status: "ok" as const })))
      .handle("readyz", () =>
        dependencies.notReady.pipe(
          Effect.flatMap((notReady) =>
            notReady.length === 0
              ? Effect.succeed({ status: "ready" as const })
              : Effect.fail(
                new ApiError.NotReady({
                  not_ready: notReady.map(({ dependency, reason, since }) => ({ dependency, reason, since: since.toISOString() }))
                })
              )
          ),
          HttpMiddleware.withLoggerDisabled
        ))
      .handle("metrics", () =>
        refreshPoolGauges.pipe(
          Effect.zipRight(prometheus.scrape),
          Effect.orDie,
          HttpMiddleware.withLoggerDisabled
        ))
  }))
