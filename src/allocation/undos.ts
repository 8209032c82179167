import { Effect, Option } from "effect"
import type { DatabaseError } from "../db/errors.ts"
import type { FinalState, LiveAllocation } from "../domain/allocation.ts"
import { GatewayKept } from "../domain/errors.ts"
import type { AllocationId, GatewayId, OrganizationId, Upstream } from "../domain/ids.ts"
import { releaseLeft, routeWithdrawn, routingLeft, type StepName, undoOrder } from "../domain/steps.ts"
import { Dns, type DnsError } from "../dns/Dns.ts"
import { Handshake, type HandshakeError } from "../handshake/Handshake.ts"
import { Nginx, type NginxError, type RouteKey } from "../nginx/Nginx.ts"
import { Runner } from "../pool/Runner.ts"
import { AllocationStore } from "./AllocationStore.ts"
import { type Undo, UndoSettled, UndoSkipped } from "./runs.ts"

/** What an undo can fail with: the outside system's own error, or the gateway deliberately kept. */
export type UndoError = NginxError | DnsError | HandshakeError | DatabaseError | GatewayKept

/** What a release names: the gateway (where to send it) and the allocation it ends. */
export interface ReleaseTarget {
  readonly organizationId: OrganizationId
  readonly allocationId: AllocationId
  readonly gatewayId: GatewayId
  readonly upstream: Upstream
}

/**
 * The undo of each step, in one place: a failed start's rollback, a stop and crash recovery all
 * run these. Each is idempotent, so it is safe to run whether or not its step took effect, and
 * twice.
 */
export class Undos extends Effect.Service<Undos>()("Undos", {
  effect: Effect.gen(function*() {
    const allocations = yield* AllocationStore
    const dns = yield* Dns
    const nginx = yield* Nginx
    const handshake = yield* Handshake
    const runner = yield* Runner

    /**
     * nginx-reload: remove this allocation's route and prove nginx no longer serves this
     * allocation. When nginx refuses to load its configuration (say a broken foreign file), the
     * org is still safe if what it runs does not serve this allocation: the probe decides.
     */
    const unroute = (route: RouteKey) =>
      Effect.flatMap(nginx.removeRoute(route), () => awaitWithdrawn(route))

    /** The removal proven; skipped (saying why) when nginx did not load it but serves the allocation no more. */
    const awaitWithdrawn = (route: RouteKey) =>
      Effect.map(nginx.awaitWithdrawn(route), (withdrawn) =>
        withdrawn._tag === "gone"
          ? undefined
          : new UndoSkipped({ reason: `nginx refused its configuration (${withdrawn.reason}), but it does not route this allocation` }))

    /**
     * nginx-config: remove the route, if it is this allocation's. A route that was written may be
     * served already (lua mode at once; reload mode after any reload meanwhile: another start's,
     * the reconciler's, another replica's), even if this start's own proof never ran: so a
     * removed route is followed by the proof that nginx no longer serves this allocation.
     */
    const removeRoute = (route: RouteKey) =>
      Effect.flatMap(nginx.removeRoute(route), (found) => {
        if (found === "other") return Effect.succeed(new UndoSkipped({ reason: "the route is a newer allocation's" }))
        if (found === "absent") return Effect.void
        return Effect.asVoid(awaitWithdrawn(route))
      })

    /**
     * nginx-config in a rollback, a stop or a recovery: done already when the nginx-reload undo
     * before it removed this allocation's route and proved it withdrawn (that removal fenced late
     * writes of it in lua mode; in reload mode only the owner's own steps, over before any undo
     * runs, write its file). Otherwise `removeRoute`.
     */
    const removeConfig = (route: RouteKey): Undo<NginxError, never> => (before) =>
      routeWithdrawn(before) ? new UndoSettled({ by: "the nginx-reload undo removed the route and proved it withdrawn" }) : removeRoute(route)

    /**
     * dns: delete the org's record, unless a newer live allocation of the org holds it (the
     * record carries no allocation id: Postgres says whose it is, right before the delete).
     */
    const removeRecord = (organizationId: OrganizationId, allocationId: AllocationId) =>
      Effect.gen(function*() {
        if (dns.provider === "none") return new UndoSkipped({ reason: "DNS_PROVIDER=none: wildcard DNS" })
        const live = yield* allocations.findLive(organizationId)
        if (Option.isSome(live) && live.value.allocationId !== allocationId) {
          return new UndoSkipped({ reason: `the record belongs to the org's newer allocation ${live.value.allocationId}` })
        }
        yield* dns.remove(organizationId)
      })

    /**
     * handshake: the gateway closes every connection of the allocation and forgets the org. It
     * runs once routing is gone (see `undoOrder`): no new connection of the org can arrive after.
     * Released by allocation id: a gateway holding another allocation keeps it.
     */
    const releaseGateway = ({ allocationId, gatewayId, organizationId, upstream }: ReleaseTarget) =>
      Effect.map(
        handshake.release(upstream, { organization_id: organizationId, gateway_id: gatewayId, allocation_id: allocationId }),
        (released) =>
          released === "not_configured"
            ? new UndoSkipped({ reason: "RELEASE_PATH is empty: the gateway was not asked to release" })
            : undefined
      )

    /**
     * allocate: give the gateway back, unless a routing undo before it in the same rollback did
     * not finish (then the gateway is kept and the reconciler retries; see GatewayKept). A release
     * that did not finish frees the row but holds the gateway back until a retry succeeds. Keyed
     * by the allocation and its owner: releasing a claim that never committed, or one another
     * runner took over, changes nothing.
     */
    const release = (allocationId: AllocationId, finalState: FinalState): Undo<DatabaseError | GatewayKept, never> =>
    (before) =>
      Option.match(routingLeft(before), {
        onSome: (routing) => Effect.fail(new GatewayKept({ routing })),
        onNone: () =>
          Effect.map(
            allocations.release(allocationId, finalState, runner.id, Option.map(releaseLeft(before), (left) => left.message ?? left.status)),
            (released) => released ? undefined : new UndoSkipped({ reason: "the gateway was already released" })
          )
      })

    /**
     * Takes a live allocation down, as a stop and crash recovery do: every step's undo in
     * `undoOrder`, routing first, then the release, the gateway's row last.
     */
    const teardown = (
      allocation: LiveAllocation,
      finalState: FinalState
    ): ReadonlyArray<readonly [StepName, Undo<UndoError, never>]> => {
      const { allocationId, organizationId } = allocation
      const undoOf: Record<StepName, Undo<UndoError, never>> = {
        "nginx-reload": () => unroute(allocation),
        "nginx-config": removeConfig(allocation),
        handshake: () => releaseGateway(allocation),
        dns: () => removeRecord(organizationId, allocationId),
        allocate: release(allocationId, finalState)
      }
      return undoOrder.map((step) => [step, undoOf[step]] as const)
    }

    return { unroute, removeRoute, removeConfig, removeRecord, releaseGateway, release, teardown }
  })
}) {}
