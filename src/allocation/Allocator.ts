import { randomUUID } from "node:crypto"
import { Cause, Config, Data, Duration, Effect, Fiber, FiberMap, Metric, Option, Ref, Schedule } from "effect"
import { AllocationNotFound, NoGatewayAvailable, type StartError, StepFailed, StepTimedOut } from "../domain/errors.ts"
import {
  type AllocationId,
  type GatewayId,
  type OrganizationId,
  orgHostname
} from "../domain/ids.ts"
import type { RollbackReport, StepName } from "../domain/steps.ts"
import { Dns } from "../dns/Dns.ts"
import { Handshake } from "../handshake/Handshake.ts"
import { Journal } from "../journal/Journal.ts"
import { Nginx } from "../nginx/Nginx.ts"
import { type Allocation, GatewayPool } from "../pool/GatewayPool.ts"
import { recordStart, rollbacksIncompleteTotal } from "../telemetry/Metrics.ts"
import { Notifier } from "../telemetry/Notifier.ts"
import { Runner } from "./Runner.ts"
import { runUndo, skipStep, step, type StepContext, UndoSkipped } from "./step.ts"
import { Undos } from "./undos.ts"

export interface Started {
  readonly organizationId: OrganizationId
  readonly gatewayId: GatewayId
  readonly hostname: string
  readonly allocationId: AllocationId
  readonly reused: boolean
}

export interface Stopped {
  readonly organizationId: OrganizationId
  readonly gatewayId: GatewayId
  readonly allocationId: AllocationId
}

/** A stop could not remove the org's routing; the allocation stays `stopping` for a retry. */
export class StopFailed extends Data.TaggedError("StopFailed")<{
  readonly step: StepName
  readonly reason: string
  readonly allocationId: AllocationId
}> {
  override get message() {
    return `stop: undo of ${this.step} failed: ${this.reason}`
  }
}

/** Another runner holds the org's allocation in a transitional state: wait for it to settle. */
class InTransition extends Data.TaggedError("InTransition")<{ readonly state: string }> {}

export const AllocationConfig = Config.all({
  stepTimeoutMs: Config.integer("STEP_TIMEOUT_MS").pipe(Config.withDefault(10_000)),
  undoTimeoutMs: Config.integer("UNDO_TIMEOUT_MS").pipe(Config.withDefault(10_000)),
  shutdownGraceMs: Config.integer("SHUTDOWN_GRACE_MS").pipe(Config.withDefault(10_000)),
  domain: Config.string("DOMAIN").pipe(Config.withDefault("domain.local"), Config.map((s) => s.toLowerCase()))
})

const settlePoll = Schedule.spaced(Duration.millis(100))

/**
 * Starts and stops allocations. A start is the five-step pipeline in one Scope: each step's undo
 * is a finalizer of that Scope, so a failure, a timeout, a defect or an interruption anywhere
 * undoes exactly the steps that ran, in reverse order. Starts run detached from the request, one
 * fiber per org, owned by this service's scope.
 */
export class Allocator extends Effect.Service<Allocator>()("Allocator", {
  scoped: Effect.gen(function*() {
    const config = yield* AllocationConfig
    const pool = yield* GatewayPool
    const journal = yield* Journal
    const dns = yield* Dns
    const nginx = yield* Nginx
    const handshake = yield* Handshake
    const undos = yield* Undos
    const runner = yield* Runner
    const notifier = yield* Notifier
    const inFlight = yield* FiberMap.make<OrganizationId, Started, StartError>()
    const inFlightLock = yield* Effect.makeSemaphore(1)
    // The allocations this process is working on right now (a start's own, a stop's target).
    // Crash recovery leaves exactly these alone: a start that merely waits for another
    // allocation of its org to settle is not working on that one.
    const workingOn = new Set<AllocationId>()
    const working = <A, E, R>(allocationId: AllocationId, effect: Effect.Effect<A, E, R>) =>
      Effect.acquireUseRelease(
        Effect.sync(() => workingOn.add(allocationId)),
        () => effect,
        () => Effect.sync(() => workingOn.delete(allocationId))
      )

    // Shutdown (the HTTP server has already stopped taking requests): in-flight starts get a
    // grace period to finish; then the FiberMap's own finalizer interrupts them, and each one
    // rolls back through its Scope.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        const running = yield* FiberMap.size(inFlight)
        if (running === 0) return
        yield* Effect.logInfo(`shutdown: waiting up to ${config.shutdownGraceMs} ms for ${running} start(s)`)
        // Finalizers are uninterruptible: without `interruptible` the timeout could never fire.
        const drained = yield* FiberMap.awaitEmpty(inFlight).pipe(
          Effect.interruptible,
          Effect.timeout(Duration.millis(config.shutdownGraceMs)),
          Effect.isSuccess
        )
        if (!drained) yield* Effect.logWarning("shutdown: interrupting the starts still running; they roll back")
      })
    )

    const newContext = (organizationId: OrganizationId, allocationId: AllocationId, actor: StepContext["actor"]) =>
      Effect.map(Ref.make<RollbackReport>([]), (report): StepContext => ({
        allocationId,
        organizationId,
        actor,
        stepTimeoutMs: config.stepTimeoutMs,
        undoTimeoutMs: config.undoTimeoutMs,
        report
      }))

    /** Claims a gateway, or finds the org's allocation; waits while another runner moves it. */
    const claim = (organizationId: OrganizationId, allocationId: AllocationId) =>
      pool.claim(allocationId, organizationId, runner.id).pipe(
        Effect.filterOrFail(
          (claimed) => !claimed.reused || claimed.state === "active",
          (claimed) => new InTransition({ state: claimed.state })
        ),
        Effect.retry({ while: (error) => error._tag === "InTransition", schedule: settlePoll })
      )

    const pipeline = (context: StepContext) =>
      Effect.gen(function*() {
        const { allocationId, organizationId } = context
        const hostname = orgHostname(organizationId, config.domain)

        const claimed = yield* step(context, "allocate", {
          run: claim(organizationId, allocationId),
          journalForward: false,
          // A claim that timed out or was interrupted may have committed: releasing by our own
          // allocation id is a no-op when it did not.
          undo: undos.release(allocationId, "rolled_back", context.report)
        })
        if (claimed.reused) {
          return {
            organizationId,
            gatewayId: claimed.gatewayId,
            hostname,
            allocationId: claimed.allocationId,
            reused: true
          } satisfies Started
        }
        const { gatewayId, upstream } = claimed

        if (dns.provider === "none") {
          yield* skipStep(context, "dns", "DNS_PROVIDER=none: wildcard DNS")
        } else {
          yield* step(context, "dns", {
            run: dns.upsert(organizationId),
            undo: undos.removeRecord(organizationId)
          })
        }

        yield* step(context, "nginx-config", {
          run: nginx.writeRoute({ organizationId, allocationId, upstream }),
          undo: undos.removeRouteFile(organizationId)
        })

        yield* step(context, "nginx-reload", {
          run: nginx.reload.pipe(Effect.zipRight(nginx.awaitRoute(organizationId, allocationId))),
          undo: undos.unroute(organizationId)
        })

        yield* step(context, "handshake", {
          run: handshake.awaitHealthy(upstream).pipe(
            Effect.zipRight(handshake.handshake(upstream, {
              organization_id: organizationId,
              gateway_id: gatewayId,
              allocation_id: allocationId,
              gateway_hostname: hostname
            }))
          ),
          undo: Effect.succeed(new UndoSkipped({ reason: "nothing to undo: the gateway was never initialised" }))
        })

        // The commit point: only now does the allocation count as active.
        const activated = yield* pool.transition(allocationId, ["starting"], "active").pipe(
          Effect.mapError((error) =>
            new StepFailed({ step: "handshake", reason: `could not activate: ${error.message}`, allocationId, rollback: [] })
          )
        )
        if (!activated) {
          return yield* new StepFailed({
            step: "handshake",
            reason: "the allocation left the starting state while it ran",
            allocationId,
            rollback: []
          })
        }
        return { organizationId, gatewayId, hostname, allocationId, reused: false } satisfies Started
      }).pipe(
        // Runs before the Scope's finalizers: the row says `rolling_back` while undos run, so a
        // crash in the middle of a rollback is finished by the reconciler.
        Effect.onError((cause) =>
          pool.transition(context.allocationId, ["starting"], "rolling_back", {
            error: Cause.pretty(cause).slice(0, 2000)
          }).pipe(
            Effect.interruptible,
            Effect.timeout(Duration.millis(config.undoTimeoutMs)),
            Effect.catchAllCause((failure) => Effect.logWarning("could not mark the allocation rolling back", failure))
          )
        )
      )

    const runStart = Effect.fn("Allocation.start")(function*(organizationId: OrganizationId) {
      const allocationId = randomUUID() as AllocationId
      const context = yield* newContext(organizationId, allocationId, "request")
      yield* Effect.annotateCurrentSpan({ organization_id: organizationId, allocation_id: allocationId })
      return yield* working(allocationId, Effect.scoped(pipeline(context))).pipe(
        Effect.provideService(Journal, journal),
        Effect.tapErrorCause((cause) =>
          Effect.gen(function*() {
            const report = yield* Ref.get(context.report)
            if (report.length === 0) return
            const left = report.filter((outcome) => outcome.status === "failed" || outcome.status === "timed_out")
            const complete = left.length === 0
            yield* Effect.annotateCurrentSpan({ "rollback.status": complete ? "complete" : "incomplete" })
            const summary = report.map((outcome) => `${outcome.step}=${outcome.status}`).join(" ")
            const failure = Cause.failureOption(cause)
            const error = Option.isSome(failure) ? failure.value : undefined
            yield* (complete ? Effect.logWarning : Effect.logError)(
              `rollback ${complete ? "complete" : "incomplete, left to the reconciler"}: ${summary}`
            ).pipe(
              Effect.annotateLogs({
                rollback: report,
                ...(error !== undefined && error._tag !== "NoGatewayAvailable" ? { step: error.step } : {})
              })
            )
            if (complete) return
            yield* Metric.increment(rollbacksIncompleteTotal)
            const allocation = yield* pool.getAllocation(allocationId).pipe(Effect.option, Effect.map(Option.flatten))
            yield* notifier.notify({
              kind: "rollback_incomplete",
              organization_id: organizationId,
              allocation_id: allocationId,
              gateway_id: Option.match(allocation, { onNone: () => null, onSome: (a) => a.gatewayId }),
              step: error !== undefined && error._tag !== "NoGatewayAvailable" ? error.step : undefined,
              message: error?.message ?? (Cause.isInterruptedOnly(cause) ? "interrupted (shutdown)" : Cause.pretty(cause)),
              undos: report
            })
          })
        ),
        Effect.tapErrorCause((cause) => {
          const failure = Cause.failureOption(cause)
          return recordStart(
            Option.match(failure, {
              onNone: () => "interrupted" as const,
              onSome: (error) =>
                error._tag === "NoGatewayAvailable"
                  ? "no_gateway" as const
                  : error._tag === "StepTimedOut"
                  ? "step_timed_out" as const
                  : "step_failed" as const
            })
          )
        }),
        Effect.tap((started) => recordStart(started.reused ? "reused" : "success")),
        // The caller gets the original error, with the rollback report attached (never substituted).
        Effect.catchAll((error) =>
          Effect.flatMap(Ref.get(context.report), (rollback) =>
            Effect.fail(error._tag === "NoGatewayAvailable" ? error : attachReport(error, rollback))
          )
        ),
        Effect.annotateLogs({ organization_id: organizationId, allocation_id: allocationId })
      )
    })

    /** Starts (or joins the in-flight start of) the org's allocation. Detached from the caller. */
    const start = (organizationId: OrganizationId): Effect.Effect<Started, StartError> =>
      inFlightLock.withPermits(1)(
        Effect.flatMap(FiberMap.get(inFlight, organizationId).pipe(Effect.option), (existing) =>
          Option.isSome(existing)
            ? Effect.succeed(existing.value)
            : FiberMap.run(inFlight, organizationId, runStart(organizationId)))
      ).pipe(Effect.flatMap(Fiber.join))

    const awaitLocalStart = (organizationId: OrganizationId) =>
      FiberMap.get(inFlight, organizationId).pipe(
        Effect.flatMap((fiber) => Fiber.await(fiber)),
        Effect.ignore
      )

    /** The org's live allocation once no start or rollback is moving it. */
    const settled = (organizationId: OrganizationId) =>
      awaitLocalStart(organizationId).pipe(
        Effect.zipRight(pool.findLive(organizationId)),
        Effect.flatMap(Option.match({
          onNone: () => Effect.fail(new AllocationNotFound({ what: `active allocation of ${organizationId}` })),
          onSome: (allocation): Effect.Effect<Allocation, AllocationNotFound | InTransition> =>
            allocation.state === "starting" || allocation.state === "rolling_back"
              ? Effect.fail(new InTransition({ state: allocation.state }))
              : Effect.succeed(allocation)
        })),
        Effect.retry({
          while: (error) => error._tag === "InTransition",
          schedule: settlePoll.pipe(Schedule.upTo(Duration.millis(6 * config.stepTimeoutMs)))
        }),
        Effect.catchTag("InTransition", () =>
          Effect.fail(new AllocationNotFound({ what: `active allocation of ${organizationId}` })))
      )

    /**
     * Stops the org's allocation: routing first (nginx, then DNS), the pool row last, so the
     * hostname never points at a gateway another org may already hold. Stops at the first undo
     * that fails; the allocation stays `stopping` and a retry (or the reconciler) finishes it.
     */
    const stop = Effect.fn("Allocation.stop")(function*(organizationId: OrganizationId) {
      const allocation = yield* settled(organizationId)
      return yield* working(allocation.allocationId, teardown(allocation))
    })

    const teardown = (allocation: Allocation) =>
      Effect.gen(function*() {
        const { allocationId, organizationId } = allocation
        yield* Effect.annotateCurrentSpan({ organization_id: organizationId, allocation_id: allocationId })
        yield* pool.transition(allocationId, ["active", "stopping"], "stopping")
        const context = yield* newContext(organizationId, allocationId, "stop")
        const undoSteps = undos.teardown(allocation, "released", context.report)
        for (const [stepName, undo] of undoSteps) {
          const outcome = yield* runUndo(context, stepName, undo).pipe(Effect.provideService(Journal, journal))
          if (outcome.status === "failed" || outcome.status === "timed_out") {
            return yield* new StopFailed({ step: stepName, reason: outcome.message ?? outcome.status, allocationId })
          }
        }
        yield* Effect.logInfo("allocation stopped").pipe(
          Effect.annotateLogs({ organization_id: organizationId, allocation_id: allocationId })
        )
        return { organizationId, gatewayId: allocation.gatewayId!, allocationId } satisfies Stopped
      })

    const status = Effect.fn("Allocation.status")(function*(organizationId: OrganizationId) {
      const allocation = yield* pool.findLive(organizationId)
      if (Option.isNone(allocation)) {
        return yield* new AllocationNotFound({ what: `active allocation of ${organizationId}` })
      }
      return { ...allocation.value, hostname: orgHostname(organizationId, config.domain) }
    })

    const describeAllocation = Effect.fn("Allocation.describe")(function*(allocationId: AllocationId) {
      const allocation = yield* pool.getAllocation(allocationId)
      if (Option.isNone(allocation)) return yield* new AllocationNotFound({ what: `allocation ${allocationId}` })
      const steps = yield* journal.entries(allocationId)
      return { ...allocation.value, hostname: orgHostname(allocation.value.organizationId, config.domain), steps }
    })

    /** Whether this process is working on the allocation right now (recovery leaves it alone). */
    const busy = (allocationId: AllocationId) => Effect.sync(() => workingOn.has(allocationId))

    return { start, stop, status, describe: describeAllocation, busy }
  })
}) {}

const attachReport = (error: Exclude<StartError, NoGatewayAvailable>, rollback: RollbackReport) =>
  error._tag === "StepFailed"
    ? new StepFailed({ ...error, rollback })
    : new StepTimedOut({ ...error, rollback })
