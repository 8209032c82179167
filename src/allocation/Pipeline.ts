import { Cause, Duration, Effect, Either, Exit, Metric, Option, Ref, Schedule } from "effect"
import { Settings } from "../config.ts"
import type { DatabaseError } from "../db/errors.ts"
import {
  ActivationFailed,
  type AttemptError,
  type ClaimRefused,
  InTransition,
  type OwnershipLost,
  type ShuttingDown
} from "../domain/errors.ts"
import { type AllocationId, type GatewayId, type OrganizationId, orgHostname } from "../domain/ids.ts"
import { isUnfinished, type RollbackReport, summarise } from "../domain/steps.ts"
import { Dns, type DnsError } from "../dns/Dns.ts"
import { Handshake, HandshakeError } from "../handshake/Handshake.ts"
import { describeCause } from "../lib/describeCause.ts"
import { Nginx, type NginxError, type Route, type RouteLost } from "../nginx/Nginx.ts"
import { GatewayHealth } from "../pool/GatewayHealth.ts"
import { Runner } from "../pool/Runner.ts"
import { rollbacksIncompleteTotal } from "../telemetry/Metrics.ts"
import { Notifier } from "../telemetry/Notifier.ts"
import { AllocationStore } from "./AllocationStore.ts"
import { Ownership } from "./Ownership.ts"
import { type Run, type RunKey, type TableStep, UndoSkipped } from "./runs.ts"
import { StepRunner } from "./StepRunner.ts"
import { type UndoError, Undos } from "./undos.ts"

export interface Started {
  readonly organizationId: OrganizationId
  readonly gatewayId: GatewayId
  readonly hostname: string
  readonly allocationId: AllocationId
  readonly reused: boolean
}

/** One attempt's end: its exit, its rollback, and the gateway it claimed (if it got that far). */
export interface AttemptResult {
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
export const gatewayFault = (error: AttemptError): Option.Option<string> => {
  if (error._tag === "ActivationFailed" || error.step !== "handshake") return Option.none()
  if (error._tag === "StepTimedOut") return Option.some(error.message)
  return error.cause instanceof HandshakeError ? Option.some(error.cause.message) : Option.none()
}

/** What the steps after the claim can fail with, in their own words (StepRunner makes it the step's error). */
type StepCause = DnsError | NginxError | RouteLost | OwnershipLost | DatabaseError | HandshakeError

/** While another runner moves the org's allocation, a claim asks again this often. */
const settlePoll = Schedule.spaced(Duration.millis(100))

/** How often one start writes its route again after nginx lost it (each loss is one nginx restart). */
const ROUTE_REWRITES = 2

/**
 * One attempt of a start: one gateway, the five steps in a Scope of their own. The steps are a
 * table (below): each with what it does and its undo. `StepRunner.runSteps` registers every undo
 * up front, in `undoOrder` (routing, then the release, DNS, the row), and arms each as its step
 * begins, so a failure, a timeout, a defect or an interruption anywhere undoes exactly the steps
 * that ran or may have.
 */
export class Pipeline extends Effect.Service<Pipeline>()("Pipeline", {
  effect: Effect.gen(function*() {
    const settings = yield* Settings
    const allocations = yield* AllocationStore
    const dns = yield* Dns
    const nginx = yield* Nginx
    const handshake = yield* Handshake
    const undos = yield* Undos
    const steps = yield* StepRunner
    const runner = yield* Runner
    const ownership = yield* Ownership
    const notifier = yield* Notifier
    const gatewayHealth = yield* GatewayHealth

    /** Claims a gateway, or finds the org's allocation; waits while another runner moves it. */
    const claim = (run: Run, gate: Effect.Effect<void, ShuttingDown>) =>
      gate.pipe(
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
     * Makes nginx serve the route and proves it. A route gone since its write (nginx restarted and
     * its table came back empty; a catch-up pushes active allocations only) is written again by
     * its owner, fenced like the first write and undone by the same undo, instead of waiting out
     * the step's timeout.
     */
    const proveRoute = (route: Route, rewrites: number): Effect.Effect<void, NginxError | RouteLost | OwnershipLost | DatabaseError> =>
      nginx.awaitServed(route).pipe(
        Effect.catchTag("RouteLost", (lost) =>
          rewrites <= 0 ? Effect.fail(lost) : Effect.logWarning(`${lost.message}: writing it again`).pipe(
            Effect.zipRight(ownership.check(route.allocationId)),
            Effect.zipRight(nginx.writeRoute(route)),
            Effect.zipRight(proveRoute(route, rewrites - 1))
          ))
      )

    /** The commit point: the allocation becomes active, or the attempt fails with ActivationFailed. */
    const activate = (allocationId: AllocationId, gatewayId: GatewayId, run: Run) =>
      Effect.gen(function*() {
        // With it, in the same statement, the last step's journal row and the gateway's health
        // (it served a start: healthy, its backoff starts over).
        const activation = yield* Effect.either(
          Effect.flatMap(run.journal.handOver(), (journal) => allocations.activate(allocationId, runner.id, gatewayId, journal))
        )
        if (Either.isLeft(activation)) return yield* new ActivationFailed({ reason: activation.left.message, cause: activation.left })
        if (!activation.right) {
          return yield* new ActivationFailed({ reason: "the allocation left the starting state while it ran (another runner took it over)" })
        }
      })

    /** The five steps of one attempt, its claimed gateway recorded in `claimedGateway`. */
    const pipeline = (run: Run, claimedGateway: Ref.Ref<Option.Option<GatewayId>>, gate: Effect.Effect<void, ShuttingDown>) =>
      steps.attempt((rollback) =>
        Effect.gen(function*() {
          const { allocationId, organizationId } = run
          const hostname = orgHostname(organizationId, settings.domain)

          // The claim is the table's first row, run on its own: it says which gateway the others act on.
          const claimed = yield* steps.step(run, rollback, "allocate", {
            run: claim(run, gate),
            claims: true,
            // A claim that timed out or was interrupted may have committed: releasing by our own
            // allocation id is a no-op when it did not.
            undo: undos.release(allocationId, "rolled_back")
          })
          if (claimed.reused) {
            return { organizationId, gatewayId: claimed.gatewayId, hostname, allocationId: claimed.allocationId, reused: true }
          }
          const { gatewayId, upstream } = claimed
          const route: Route = { organizationId, allocationId, upstream, generation: claimed.generation }
          yield* Ref.set(claimedGateway, Option.some(gatewayId))
          // Known from here on: the start's span, and every span after it (the undos' included).
          yield* Effect.annotateCurrentSpan("gateway_id", gatewayId)
          yield* steps.annotateSpansFromHere("gateway_id", gatewayId)
          // The release asks only a gateway the handshake may have reached.
          const handshakeSent = yield* Ref.make(false)

          const table: ReadonlyArray<TableStep<StepCause, never, UndoError, never>> = [
            {
              name: "dns",
              run: dns.upsert(organizationId),
              undo: () => undos.removeRecord(organizationId, allocationId),
              skipped: dns.provider === "none" ? "DNS_PROVIDER=none: wildcard DNS" : undefined
            },
            { name: "nginx-config", run: nginx.writeRoute(route), undo: undos.removeConfig(route) },
            {
              name: "nginx-reload",
              run: proveRoute(route, ROUTE_REWRITES),
              undo: () => undos.unroute(route)
            },
            {
              name: "handshake",
              run: handshake.awaitHealthy(hostname).pipe(
                Effect.zipRight(Ref.set(handshakeSent, true)),
                Effect.zipRight(handshake.handshake(upstream, {
                  organization_id: organizationId,
                  gateway_id: gatewayId,
                  allocation_id: allocationId,
                  gateway_hostname: hostname
                }))
              ),
              undo: () =>
                Effect.flatMap(Ref.get(handshakeSent), (sent) =>
                  sent
                    ? undos.releaseGateway({ organizationId, allocationId, gatewayId, upstream })
                    : Effect.succeed(new UndoSkipped({ reason: "nothing to release: the handshake was never sent" })))
            }
          ]
          yield* steps.runSteps(run, rollback, table).pipe(
            // The gateway's own failure: set aside before the rollback gives it back, so no start takes it meanwhile.
            Effect.tapError((error) =>
              error._tag === "NoGatewayAvailable" || error._tag === "ShuttingDown"
                ? Effect.void
                : Option.match(gatewayFault(error), {
                  onNone: () => Effect.void,
                  onSome: (reason) => gatewayHealth.setAside(gatewayId, reason, "start")
                })
            )
          )

          yield* activate(allocationId, gatewayId, run)
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
      )

    /** An attempt's incomplete rollback: counted, and the operator is told (with the gateway it kept). */
    const notifyIncomplete = (run: RunKey, attempt: AttemptResult) =>
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
    const reportRollback = (run: RunKey, attempt: AttemptResult) =>
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

    /**
     * Runs one attempt as this process's only worker on its allocation (a new one, `key`); `gate`
     * refuses the claim once shutdown has begun.
     */
    const attempt = (key: RunKey, number: number, gate: Effect.Effect<void, ShuttingDown>) =>
      Effect.gen(function*() {
        const claimed = yield* Ref.make(Option.none<GatewayId>())
        // The journal stays open until the rollback (the Scope's undos) has written its rows.
        const worked = yield* ownership.exclusive(key.allocationId, steps.withRun(key, (run) => pipeline(run, claimed, gate)))
        if (Option.isNone(worked)) return yield* Effect.dieMessage(`allocation ${key.allocationId} is already being worked on`)
        const result: AttemptResult = { ...worked.value, gatewayId: yield* Ref.get(claimed) }
        yield* reportRollback(key, result)
        return result
      }).pipe(
        Effect.annotateLogs({ allocation_id: key.allocationId, attempt: number }),
        Effect.annotateSpans({ allocation_id: key.allocationId, attempt: number })
      )

    return { attempt }
  })
}) {}
