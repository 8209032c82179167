import { Cause, Duration, Effect, Either, Exit, Fiber, FiberMap, Metric, Option, Ref, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { singleFlight } from "../lib/singleFlight.ts"
import { Settings } from "../config.ts"
import type { LiveAllocation } from "../domain/allocation.ts"
import {
  ActivationFailed,
  AllocationNotFound,
  type Attempt,
  type AttemptError,
  type ClaimRefused,
  InTransition,
  type OwnershipLost,
  ShuttingDown,
  StartFailed,
  type StartError,
  StopFailed
} from "../domain/errors.ts"
import { AllocationId, type GatewayId, type OrganizationId, orgHostname } from "../domain/ids.ts"
import { haltsTeardown, isUnfinished, type RollbackReport, type StartOutcome, summarise } from "../domain/steps.ts"
import { Dns } from "../dns/Dns.ts"
import { Handshake, HandshakeError } from "../handshake/Handshake.ts"
import { Nginx, type NginxError, type Route, type RouteLost } from "../nginx/Nginx.ts"
import { GatewayStore } from "../pool/GatewayStore.ts"
import { GatewayHealth } from "../pool/GatewayHealth.ts"
import { Runner } from "../pool/Runner.ts"
import type { DatabaseError } from "../db/errors.ts"
import { AllocationStore } from "./AllocationStore.ts"
import { recordStart, rollbacksIncompleteTotal, startAttempts } from "../telemetry/Metrics.ts"
import { Notifier } from "../telemetry/Notifier.ts"
import { Ownership } from "./Ownership.ts"
import { describeCause } from "../lib/describeCause.ts"
import { type Rollback, type Run, StepRunner, type Undo, UndoSkipped } from "./StepRunner.ts"
import { Undos } from "./undos.ts"

export interface Started {
  readonly organizationId: OrganizationId
  readonly gatewayId: GatewayId
  readonly hostname: string
  readonly allocationId: AllocationId
  readonly reused: boolean
}

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

const settlePoll = Schedule.spaced(Duration.millis(100))

/** How often one start writes its route again after nginx lost it (each loss is one nginx restart). */
const ROUTE_REWRITES = 2

/** One attempt's end: its exit, its rollback, and the gateway it claimed (if it got that far). */
interface AttemptResult {
  readonly exit: Exit.Exit<Started, AttemptError | ClaimRefused>
  readonly rollback: RollbackReport
  readonly gatewayId: Option.Option<GatewayId>
}

/**
 * The gateway's own failure, if the attempt failed because of it: its health check through
 * nginx never passed, or its handshake failed or timed out. Such a start moves on to another
 * gateway and sets this one aside; nothing else does (dns, nginx, an empty pool, a lost
 * allocation or a failed activation are not the gateway's doing).
 */
const gatewayFault = (error: AttemptError): Option.Option<string> => {
  if (error._tag === "ActivationFailed" || error.step !== "handshake") return Option.none()
  if (error._tag === "StepTimedOut") return Option.some(error.message)
  return error.cause instanceof HandshakeError ? Option.some(error.cause.message) : Option.none()
}

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
    const gateways = yield* GatewayStore
    const dns = yield* Dns
    const nginx = yield* Nginx
    const handshake = yield* Handshake
    const undos = yield* Undos
    const steps = yield* StepRunner
    const runner = yield* Runner
    const ownership = yield* Ownership
    const notifier = yield* Notifier
    const gatewayHealth = yield* GatewayHealth
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

    /** Claims a gateway, or finds the org's allocation; waits while another runner moves it. */
    const claim = (run: Run) =>
      notShuttingDown.pipe(
        Effect.zipRight(allocations.claim(run.allocationId, run.organizationId, runner.id)),
        Effect.filterOrFail(
          (claimed) => !claimed.reused || claimed.state === "active",
          (claimed) => new InTransition({ state: claimed.state })
        ),
        Effect.retry({ while: (error) => error._tag === "InTransition", schedule: settlePoll }),
        // The `allocate` span names the gateway it claimed.
        Effect.tap((claimed) => Effect.annotateCurrentSpan("gateway_id", claimed.gatewayId))
      )

    /**
     * Proves nginx serves the route. lua: a route gone from the table since its write (nginx
     * restarted, its table came back empty, and the restorer pushes active allocations only) is
     * written again by its owner, fenced like the first write and undone by the same undo,
     * instead of waiting out the step's timeout.
     */
    const proveRoute = (route: Route, rewrites: number): Effect.Effect<void, NginxError | RouteLost | OwnershipLost | DatabaseError> =>
      nginx.awaitRoute(route.organizationId, route.allocationId).pipe(
        Effect.catchTag("RouteLost", (lost) =>
          rewrites <= 0 ? Effect.fail(lost) : Effect.logWarning(`${lost.message}: writing it again`).pipe(
            Effect.zipRight(ownership.check(route.allocationId)),
            Effect.zipRight(nginx.writeRoute(route)),
            Effect.zipRight(proveRoute(route, rewrites - 1))
          ))
      )

    /** The five steps. Each registers its undo before it runs; the Scope runs them on failure. */
    const pipeline = (run: Run, rollback: Rollback, claimedGateway: Ref.Ref<Option.Option<GatewayId>>) =>
      Effect.gen(function*() {
        const { allocationId, organizationId } = run
        const hostname = orgHostname(organizationId, settings.domain)

        const claimed = yield* steps.step(run, rollback, "allocate", {
          run: claim(run),
          journalForward: false,
          fenced: false,
          // A claim that timed out or was interrupted may have committed: releasing by our own
          // allocation id is a no-op when it did not.
          undo: undos.release(allocationId, "rolled_back")
        })
        if (claimed.reused) {
          return { organizationId, gatewayId: claimed.gatewayId, hostname, allocationId: claimed.allocationId, reused: true }
        }
        const { gatewayId, upstream } = claimed
        const route = { organizationId, allocationId, upstream, generation: claimed.generation }
        yield* Ref.set(claimedGateway, Option.some(gatewayId))
        // Known from here on: the start's span, and every span after it (the undos' included).
        yield* Effect.annotateCurrentSpan("gateway_id", gatewayId)
        yield* steps.annotateSpansFromHere("gateway_id", gatewayId)

        if (dns.provider === "none") {
          yield* steps.skip(run, "dns", "DNS_PROVIDER=none: wildcard DNS")
        } else {
          yield* steps.step(run, rollback, "dns", {
            run: dns.upsert(organizationId),
            undo: () => undos.removeRecord(organizationId, allocationId)
          })
        }

        // The release is registered here, ahead of the routing steps' undos, so that a rollback
        // runs it after them: the gateway closes the org's connections once nginx routes it no
        // new one. It asks only a gateway the handshake may have reached.
        const handshakeSent = yield* Ref.make(false)
        const releaseGateway: Undo<HandshakeError, never> = () =>
          Effect.flatMap(Ref.get(handshakeSent), (sent) =>
            sent
              ? undos.releaseGateway({ organizationId, allocationId, gatewayId, upstream })
              : Effect.succeed(new UndoSkipped({ reason: "nothing to release: the handshake was never sent" })))
        const releaseSlot = yield* steps.reserveUndo(run, rollback, "handshake", releaseGateway)

        yield* steps.step(run, rollback, "nginx-config", {
          run: nginx.writeRoute(route),
          undo: () => undos.removeRoute(route)
        })

        // reload mode: the reload, then the proof; lua mode: the proof alone (the write is live).
        yield* steps.step(run, rollback, "nginx-reload", {
          run: nginx.apply.pipe(Effect.zipRight(proveRoute(route, ROUTE_REWRITES))),
          undo: () => undos.unroute(route)
        })

        yield* steps.step(run, rollback, "handshake", {
          run: handshake.awaitHealthy(hostname).pipe(
            Effect.zipRight(Ref.set(handshakeSent, true)),
            Effect.zipRight(handshake.handshake(upstream, {
              organization_id: organizationId,
              gateway_id: gatewayId,
              allocation_id: allocationId,
              gateway_hostname: hostname
            }))
          ),
          undo: releaseSlot
        }).pipe(
          // Its own failure: set aside before the rollback gives it back, so no start takes it meanwhile.
          Effect.tapError((error) =>
            error._tag === "NoGatewayAvailable" || error._tag === "ShuttingDown"
              ? Effect.void
              : Option.match(gatewayFault(error), {
                onNone: () => Effect.void,
                onSome: (reason) => gatewayHealth.setAside(gatewayId, reason, "start")
              })
          )
        )

        // The commit point: only now does the allocation count as active. Alongside it, and
        // independent of it: the last step's journal row, and the gateway's health (it served a
        // start: healthy, its backoff starts over).
        const [activation] = yield* Effect.all([
          Effect.either(allocations.transition(allocationId, runner.id, ["starting"], "active")),
          steps.flushJournal(run),
          gateways.markHealthy(gatewayId, true).pipe(
            Effect.catchAll((error) => Effect.logWarning(`could not mark gateway ${gatewayId} healthy: ${error.message}`))
          )
        ], { concurrency: "unbounded" })
        if (Either.isLeft(activation)) {
          return yield* new ActivationFailed({ reason: activation.left.message, cause: activation.left })
        }
        if (!activation.right) {
          return yield* new ActivationFailed({
            reason: "the allocation left the starting state while it ran (another runner took it over)"
          })
        }
        return { organizationId, gatewayId, hostname, allocationId, reused: false } satisfies Started
      }).pipe(
        // Runs before the Scope's finalizers: the row says `rolling_back` while undos run, so a
        // crash in the middle of a rollback is finished by the reconciler.
        Effect.onError((cause) =>
          allocations.transition(run.allocationId, runner.id, ["starting"], "rolling_back", {
            error: describeCause(cause).slice(0, 2000)
          }).pipe(
            Effect.interruptible,
            Effect.timeout(Duration.millis(settings.undoTimeoutMs)),
            Effect.catchAllCause((failure) => Effect.logWarning("could not mark the allocation rolling back", failure))
          )
        )
      )

    /** An attempt's incomplete rollback: counted, and the operator is told (with the gateway it kept). */
    const notifyIncomplete = (run: Run, attempt: AttemptResult) =>
      Effect.gen(function*() {
        yield* Metric.increment(rollbacksIncompleteTotal)
        const error = Exit.isFailure(attempt.exit) ? Cause.failureOption(attempt.exit.cause) : Option.none()
        yield* notifier.notify({
          kind: "rollback_incomplete",
          organization_id: run.organizationId,
          allocation_id: run.allocationId,
          gateway_id: Option.getOrNull(attempt.gatewayId),
          step: Option.getOrUndefined(Option.flatMap(error, (e) => "step" in e ? Option.some(e.step) : Option.none())),
          message: Option.match(error, { onNone: () => "interrupted (shutdown)", onSome: (e) => e.message }),
          undos: attempt.rollback
        })
      })

    /** What an attempt's rollback tells: one summary line, and a notice when it did not finish. */
    const reportRollback = (run: Run, attempt: AttemptResult) =>
      Effect.gen(function*() {
        if (attempt.rollback.length === 0) return
        const complete = !attempt.rollback.some(isUnfinished)
        const failure = Exit.isFailure(attempt.exit) ? Cause.failureOption(attempt.exit.cause) : Option.none()
        const step = Option.flatMap(failure, (e) => "step" in e ? Option.some(e.step) : Option.none())
        yield* Effect.annotateCurrentSpan({ "rollback.status": complete ? "complete" : "incomplete" })
        yield* (complete ? Effect.logWarning : Effect.logError)(
          `rollback ${complete ? "complete" : "incomplete, left to the reconciler"}: ${summarise(attempt.rollback)}`
        ).pipe(Effect.annotateLogs({ rollback: attempt.rollback, ...Option.match(step, { onNone: () => ({}), onSome: (s) => ({ step: s }) }) }))
        if (!complete) yield* notifyIncomplete(run, attempt)
      })

    /** One gateway tried: the five steps in a Scope of their own, this process's only worker on the allocation. */
    const runAttempt = (run: Run, attempt: number) =>
      Effect.gen(function*() {
        const claimed = yield* Ref.make(Option.none<GatewayId>())
        const worked = yield* ownership.exclusive(
          run.allocationId,
          // A row still waiting (an interrupted step writes none of its own) is written before the attempt ends.
          steps.attempt((rollback) => pipeline(run, rollback, claimed)).pipe(Effect.ensuring(steps.flushJournal(run)))
        )
        if (Option.isNone(worked)) return yield* Effect.dieMessage(`allocation ${run.allocationId} is already being worked on`)
        const result: AttemptResult = { ...worked.value, gatewayId: yield* Ref.get(claimed) }
        yield* reportRollback(run, result)
        return result
      }).pipe(
        Effect.annotateLogs({ allocation_id: run.allocationId, attempt }),
        Effect.annotateSpans({ allocation_id: run.allocationId, attempt })
      )

    /**
     * A start: one attempt, and another on a new gateway while the last one failed on its
     * gateway's account (up to START_ATTEMPTS). The caller's error is made here, once, with every
     * attempt.
     */
    const runStart = Effect.fn("Allocation.start")(function*(organizationId: OrganizationId) {
      yield* Effect.annotateCurrentSpan({ organization_id: organizationId })
      const attempts: Array<Attempt> = []
      for (let number = 1; number <= settings.startAttempts; number++) {
        const run: Run = { allocationId: AllocationId.make(randomUUID()), organizationId, actor: "request" }
        yield* Effect.annotateCurrentSpan({ allocation_id: run.allocationId, attempts: number })
        const result = yield* runAttempt(run, number)
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
        const run: Run = { allocationId, organizationId, actor: "stop" }
        const report = yield* steps.undoAll(run, undos.teardown(allocation, "released"), { haltOnBlocking: true })
        const unfinished = report.find(haltsTeardown)
        if (unfinished !== undefined) return yield* new StopFailed({ allocationId, gatewayId, undo: unfinished })
        // Undos skipped because this runner lost the allocation did not stop it: only a released
        // row is a stop done (the new owner finishes it otherwise).
        const after = yield* allocations.getAllocation(allocationId)
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
        const live = yield* allocations.findLive(organizationId)
        if (Option.isNone(live)) return yield* new AllocationNotFound({ what: `active allocation of ${organizationId}` })
        const { allocationId, state } = live.value
        if (state === "starting" || state === "rolling_back") return yield* new InTransition({ state })
        // None: another live runner is stopping it; wait for it to finish.
        const taken = yield* allocations.takeForStop(allocationId, runner.id)
        if (Option.isNone(taken)) return yield* new InTransition({ state })
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
