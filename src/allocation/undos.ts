import { Effect, Ref } from "effect"
import type { AllocationId, OrganizationId } from "../domain/ids.ts"
import type { RollbackReport, StepName } from "../domain/steps.ts"
import { Dns } from "../dns/Dns.ts"
import { Nginx } from "../nginx/Nginx.ts"
import { GatewayPool } from "../pool/GatewayPool.ts"
import { UndoSkipped } from "./step.ts"

/**
 * The undo of each step, in one place: a failed start's rollback, a stop and crash recovery all
 * run these. Each is idempotent and keyed by the org or the allocation, so it is safe to run
 * whether or not its step took effect, and twice.
 */
export class Undos extends Effect.Service<Undos>()("Undos", {
  effect: Effect.gen(function*() {
    const pool = yield* GatewayPool
    const dns = yield* Dns
    const nginx = yield* Nginx

    /**
     * nginx-reload: remove the route and reload, then prove nginx serves no route for the org.
     * When nginx refuses the reload (say a broken foreign file), the org is still safe if the
     * running configuration never had its route: the probe decides, not the reload's exit code.
     */
    const unroute = (organizationId: OrganizationId) =>
      Effect.gen(function*() {
        yield* nginx.removeRoute(organizationId)
        const reloaded = yield* nginx.reload.pipe(Effect.either)
        if (reloaded._tag === "Right") return yield* nginx.awaitRoute(organizationId, null)
        const served = yield* nginx.probeRoute(organizationId)
        if (served !== null) return yield* reloaded.left
        return new UndoSkipped({
          reason: `nginx refused the reload (${reloaded.left.reason}), but it does not route the org`
        })
      })

    /**
     * allocate: give the gateway back, unless a routing undo of this rollback did not finish.
     * A route that may still point at the gateway must not outlive its owner: another org could
     * be handed the gateway and receive this org's traffic. The reconciler retries later.
     */
    const release = (
      allocationId: AllocationId,
      finalState: "released" | "rolled_back",
      report?: Ref.Ref<RollbackReport>
    ) =>
      Effect.gen(function*() {
        const outcomes = report === undefined ? [] : yield* Ref.get(report)
        const routingLeft = outcomes.find(
          (outcome) =>
            (outcome.step === "nginx-config" || outcome.step === "nginx-reload") &&
            outcome.status !== "done" && !(outcome.status === "skipped")
        )
        if (routingLeft !== undefined) {
          return yield* Effect.fail(
            `gateway kept: the ${routingLeft.step} undo did not finish, so nginx may still route to it`
          )
        }
        const released = yield* pool.release(allocationId, finalState)
        return released ? undefined : new UndoSkipped({ reason: "the gateway was already released" })
      })

    const removeRecord = (organizationId: OrganizationId) =>
      dns.provider === "none"
        ? Effect.succeed(new UndoSkipped({ reason: "DNS_PROVIDER=none: wildcard DNS" }))
        : dns.remove(organizationId)

    const removeRouteFile = (organizationId: OrganizationId) => nginx.removeRoute(organizationId)

    /**
     * Takes a live allocation down, as a stop and crash recovery do: every step's undo in reverse
     * order, routing first, the gateway last.
     */
    const teardown = (
      allocation: { readonly organizationId: OrganizationId; readonly allocationId: AllocationId },
      finalState: "released" | "rolled_back",
      report: Ref.Ref<RollbackReport>
    ): ReadonlyArray<readonly [StepName, Effect.Effect<void | UndoSkipped, unknown>]> => [
      ["nginx-reload", unroute(allocation.organizationId)],
      ["nginx-config", removeRouteFile(allocation.organizationId)],
      ["dns", removeRecord(allocation.organizationId)],
      ["allocate", release(allocation.allocationId, finalState, report)]
    ]

    return { release, removeRecord, removeRouteFile, unroute, teardown }
  })
}) {}
