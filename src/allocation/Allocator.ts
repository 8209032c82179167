import { Cause, Duration, Effect, Exit, Fiber, FiberMap, Metric, Option, Ref, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { Settings } from "../config.ts"
import type { DatabaseError } from "../db/errors.ts"
import type { LiveAllocation } from "../domain/allocation.ts"
import {
  AllocationNotFound,
  type Attempt,
  InTransition,
  ShuttingDown,
  StartFailed,
  type StartError,
  StopFailed
} from "../domain/errors.ts"
import { AllocationId, type GatewayId, type OrganizationId } from "../domain/ids.ts"
import { haltsTeardown, isUnfinished, type StartOutcome } from "../domain/steps.ts"
import { singleFlight } from "../lib/singleFlight.ts"
import { Runner } from "../pool/Runner.ts"
import { recordStart, startAttempts } from "../telemetry/Metrics.ts"
import { AllocationStore } from "./AllocationStore.ts"
import { Ownership } from "./Ownership.ts"
import { gatewayFault, Pipeline, type Started } from "./Pipeline.ts"
import type { RunKey } from "./runs.ts"
import { StepRunner } from "./StepRunner.ts"
import { Undos } from "./undos.ts"

export type { Started } from "./Pipeline.ts"

/**
 * What the gateway said to its release: it closed the org's connections (`done`), it has not yet
 * (`pending`: held back until a retry succeeds), or RELEASE_PATH is empty (`not_configured`).
 */
export type GatewayRelease = "done" | "pending" | "not_configured"

export interface Stopped {
  readonly organizationId: OrganizationId
  readonly gatewayId: GatewayId
  readonly allocationId: AllocationId
  readonly gatewayRelease: GatewayRelease
}

/** While a start or another runner moves the org's allocation, a stop asks again this often. */
const settlePoll = Schedule.spaced(Duration.millis(100))

export type StopError = StopFailed | AllocationNotFound | InTransition | DatabaseError

/** How a start ended: the `outcome` of its span and of `gateway_allocator_starts_total`. */
const startOutcome = (exit: Exit.Exit<Started, StartError>): StartOutcome =>
  Exit.match(exit, {
    onSuccess: (started) => started.reused ? "reused" : "success",
    onFailure: (cause) =>
      Option.match(Cause.failureOption(cause), {
        onNone: () => "interrupted",
        onSome: (error) =>
          error._tag === "NoGatewayAvailable"
            ? "no_gateway"
            : error._tag === "ShuttingDown"
            ? "shutting_down"
            : error.error._tag === "ActivationFailed"
            ? "activation_failed"
            : error.error._tag === "StepTimedOut"
            ? "step_timed_out"
            : "step_failed"
      })
  })

/**
 * Starts and stops allocations. A start is the five-step pipeline in one Scope: each step's undo
 * is a finalizer of that Scope, so a failure, a timeout, a defect or an interruption anywhere
 * undoes exactly the steps that ran, in reverse order. Starts run detached from the request, one
 * fiber per org, owned by this service's scope.
 */
export class Allocator extends Effect.Service<Allocator>()("Allocator", {
  scoped: Effect.gen(function*() {
    const settings = yield* Settings
    const allocations = yield* AllocationStore
    const pipeline = yield* Pipeline
    const undos = yield* Undos
    const steps = yield* StepRunner
    const runner = yield* Runner
    const ownership = yield* Ownership
    const starts = yield* singleFlight<OrganizationId, Started, StartError>()
    const stops = yield* singleFlight<OrganizationId, Stopped, StopError>()
    // Set once shutdown begins: from then on no gateway is claimed and no attempt begins.
    const shuttingDown = yield* Ref.make(false)

    /**
     * Shutdown, run before the HTTP server closes (its open requests wait on these starts): no new
     * gateway is claimed and no new attempt begins; in-flight starts get SHUTDOWN_GRACE_MS to
     * finish, then are interrupted and roll back through their Scopes (each undo bounded by
     * UNDO_TIMEOUT_MS); stops in flight finish (their undos are bounded too). Says what it waits
     * for. Idempotent: the service's own finalizer runs it again, to find nothing left.
     */
    const drain = Effect.gen(function*() {
      yield* Ref.set(shuttingDown, true)
      const inFlight = [...starts.fibers].map(([organizationId]) => organizationId)
      if (inFlight.length > 0) {
        yield* Effect.logInfo(
          `shutdown: no new gateway is claimed; waiting up to ${settings.shutdownGraceMs} ms for ${inFlight.length} start(s) in flight`
        ).pipe(Effect.annotateLogs({ organizations: inFlight }))
        // Finalizers are uninterruptible: without `interruptible` the timeout could never fire.
        const finished = yield* FiberMap.awaitEmpty(starts.fibers).pipe(
          Effect.interruptible,
          Effect.timeout(Duration.millis(settings.shutdownGraceMs)),
          Effect.isSuccess
        )
        if (!finished) {
          const left = [...starts.fibers]
          yield* Effect.logWarning(
            `shutdown: the grace period is over; rolling back the ${left.length} start(s) still running (each undo within ${settings.undoTimeoutMs} ms)`
          ).pipe(Effect.annotateLogs({ organizations: left.map(([organizationId]) => organizationId) }))
          yield* Fiber.interruptAll(left.map(([, fiber]) => fiber))
        }
      }
      const stopping = yield* FiberMap.size(stops.fibers)
      if (stopping > 0) {
        yield* Effect.logInfo(`shutdown: waiting for ${stopping} stop(s) in flight to finish`)
        yield* FiberMap.awaitEmpty(stops.fibers).pipe(Effect.ignore)
      }
      if (inFlight.length + stopping > 0) yield* Effect.logInfo("shutdown: every start and stop has finished or rolled back")
    })
    yield* Effect.addFinalizer(() => drain)

    /** Refuses to begin once shutdown has: nothing is claimed after the signal. */
    const notShuttingDown = Effect.flatMap(Ref.get(shuttingDown), (down) => down ? Effect.fail(new ShuttingDown()) : Effect.void)

    /**
     * A start: one attempt, and another on a new gateway while the last one failed on its
     * gateway's account (up to START_ATTEMPTS). The caller's error is made here, once, with every
     * attempt.
     */
    const runStart = Effect.fn("Allocation.start")(function*(organizationId: OrganizationId) {
      yield* Effect.annotateCurrentSpan({ organization_id: organizationId })
      const attempts: Array<Attempt> = []
      for (let number = 1; number <= settings.startAttempts; number++) {
        const run: RunKey = { allocationId: AllocationId.make(randomUUID()), organizationId, actor: "request" }
        yield* Effect.annotateCurrentSpan({ allocation_id: run.allocationId, attempts: number })
        const result = yield* pipeline.attempt(run, number, notShuttingDown)
        if (Exit.isSuccess(result.exit)) {
          yield* Metric.update(startAttempts, number)
          return result.exit.value
        }
        const failure = Cause.failureOption(result.exit.cause)
        // Interrupted (shutdown) or a defect outside the steps: as it is.
        if (Option.isNone(failure)) return yield* Effect.failCause(Cause.stripFailures(result.exit.cause))
        const error = failure.value
        // No (other) gateway to try, or shutting down: the last gateway's failure stands, or a 503
        // for a first attempt.
        if (error._tag === "NoGatewayAvailable" || error._tag === "ShuttingDown") {
          if (attempts.length === 0) return yield* error
          break
        }
        attempts.push({
          error,
          allocationId: error._tag !== "ActivationFailed" && error.step === "allocate" ? undefined : run.allocationId,
          gatewayId: Option.getOrUndefined(result.gatewayId),
          rollback: result.rollback
        })
        const fault = gatewayFault(error)
        if (Option.isNone(fault)) break
        if (number < settings.startAttempts) {
          yield* Effect.logWarning(`attempt ${number} failed on its gateway (${fault.value}): trying another gateway`)
        }
      }
      yield* Metric.update(startAttempts, attempts.length)
      const last = attempts[attempts.length - 1]
      if (last === undefined) return yield* Effect.dieMessage("a start ended with no attempt")
      return yield* new StartFailed({ ...last, attempts })
    }, (effect, organizationId) =>
      effect.pipe(
        Effect.onExit((exit) => reportStart(exit)),
        Effect.annotateLogs({ organization_id: organizationId }),
        Effect.annotateSpans({ organization_id: organizationId })
      ))

    /** What a finished start tells: its span's and metric's outcome, and the failed step. */
    const reportStart = (exit: Exit.Exit<Started, StartError>) =>
      Effect.gen(function*() {
        const outcome = startOutcome(exit)
        const failedStep = Exit.isFailure(exit)
          ? Option.flatMap(Cause.failureOption(exit.cause), (e) => e._tag === "StartFailed" ? Option.fromNullable(e.step) : Option.none())
          : Option.none()
        yield* Effect.annotateCurrentSpan({ outcome, ...Option.match(failedStep, { onNone: () => ({}), onSome: (step) => ({ "error.step": step }) }) })
        yield* recordStart(outcome)
      })

    /**
     * Starts (or joins the in-flight start of) the org's allocation. Detached from the caller. A
     * start that shutdown interrupted (it rolled back) is answered ShuttingDown.
     */
    const start = (organizationId: OrganizationId): Effect.Effect<Started, StartError> =>
      notShuttingDown.pipe(
        Effect.zipRight(starts.run(organizationId, Effect.suspend(() => runStart(organizationId)))),
        Effect.catchAllCause((cause) =>
          Effect.flatMap(Ref.get(shuttingDown), (down) =>
            down && Cause.isInterruptedOnly(cause) ? Effect.fail(new ShuttingDown()) : Effect.failCause(cause)))
      )

    /**
     * Takes the allocation down: routing first (nginx), then the gateway's release (it closes the
     * org's connections), DNS, and the pool row last, so the hostname never points at a gateway
     * another org may already hold. Stops at the first routing or DNS undo that does not finish;
     * the allocation stays `stopping` and a retry (or the reconciler) finishes it. A release that
     * does not finish does not stop it: the gateway is held back until a retry succeeds.
     */
    const teardown = (allocation: LiveAllocation) =>
      Effect.gen(function*() {
        const { allocationId, gatewayId, organizationId } = allocation
        const report = yield* steps.withRun({ allocationId, organizationId, actor: "stop" }, (run) =>
          steps.undoAll(run, undos.teardown(allocation, "released"), { haltOnBlocking: true }))
        const unfinished = report.find(haltsTeardown)
        if (unfinished !== undefined) return yield* new StopFailed({ allocationId, gatewayId, undo: unfinished })
        // Undos skipped because this runner lost the allocation did not stop it: only a released
        // row is a stop done (the new owner finishes it otherwise). The `allocate` undo done is
        // this runner's release of it (a final state: nothing moves it after); otherwise, read it.
        const releasedHere = report.some((outcome) => outcome.step === "allocate" && outcome.status === "done")
        const after = releasedHere ? Option.none() : yield* allocations.getAllocation(allocationId)
        if (Option.exists(after, (a) => a.state !== "released")) {
          const last = report.at(-1) ?? { step: "allocate" as const, status: "skipped" as const, duration_ms: 0 }
          return yield* new StopFailed({ allocationId, gatewayId, undo: last })
        }
        const release = report.find((outcome) => outcome.step === "handshake")
        const gatewayRelease: GatewayRelease = release === undefined || isUnfinished(release)
          ? "pending"
          : release.status === "skipped" ? "not_configured" : "done"
        yield* Effect.logInfo(
          gatewayRelease === "pending"
            ? "allocation stopped; the gateway's release is pending (it stays out of the pool until a retry succeeds)"
            : "allocation stopped"
        )
        return { organizationId, gatewayId, allocationId, gatewayRelease } satisfies Stopped
      }).pipe(
        Effect.annotateLogs({ organization_id: allocation.organizationId, allocation_id: allocation.allocationId }),
        Effect.annotateSpans({
          organization_id: allocation.organizationId,
          allocation_id: allocation.allocationId,
          gateway_id: allocation.gatewayId
        })
      )

    /**
     * Takes the org's live allocation over (compare-and-set on its row, and this process's only
     * worker on it) once no start, rollback or other runner is moving it, and tears it down.
     */
    const runStop = Effect.fn("Allocation.stop")(function*(organizationId: OrganizationId) {
      yield* Effect.annotateCurrentSpan({ organization_id: organizationId })
      const once = Effect.gen(function*() {
        yield* starts.await(organizationId)
        const live = yield* allocations.takeForStop(organizationId, runner.id)
        if (Option.isNone(live)) return yield* new AllocationNotFound({ what: `active allocation of ${organizationId}` })
        // Not taken: it is starting or rolling back, or another live runner is stopping it; wait.
        const { state, taken } = live.value
        if (Option.isNone(taken)) return yield* new InTransition({ state })
        const { allocationId } = taken.value
        yield* Effect.annotateCurrentSpan({ allocation_id: allocationId })
        // None: this process's reconciler is finishing it right now; wait for it.
        const stopped = yield* ownership.exclusive(allocationId, teardown(taken.value))
        if (Option.isNone(stopped)) return yield* new InTransition({ state })
        return stopped.value
      })
      // Gave up waiting: the allocation is still moving (409), which is not "no allocation" (404).
      return yield* once.pipe(
        Effect.retry({
          while: (error) => error._tag === "InTransition",
          schedule: settlePoll.pipe(Schedule.upTo(Duration.millis(settings.limits.settleWaitMs)))
        })
      )
    })

    /**
     * Stops the org's allocation. Detached from the caller like a start (a client that goes away
     * does not abort it halfway), and concurrent stops of one org share one.
     */
    const stop = (organizationId: OrganizationId): Effect.Effect<Stopped, StopError> =>
      stops.run(organizationId, Effect.suspend(() => runStop(organizationId)))

    return { start, stop, drain }
  })
}) {}
