import { Effect, Option } from "effect"
import type { PoolError } from "../db/errors.ts"
import type { FinalState, LiveAllocation } from "../domain/allocation.ts"
import { GatewayKept } from "../domain/errors.ts"
import type { AllocationId, OrganizationId } from "../domain/ids.ts"
import { routingLeft, type StepName } from "../domain/steps.ts"
import { Dns, type DnsError } from "../dns/Dns.ts"
import { Nginx, type NginxError } from "../nginx/Nginx.ts"
import { GatewayPool } from "../pool/GatewayPool.ts"
import { type Undo, UndoSkipped } from "./StepRunner.ts"

/** What an undo can fail with: the outside system's own error, or the gateway deliberately kept. */
export type UndoError = NginxError | DnsError | PoolError | GatewayKept

/**
 * The undo of each step, in one place: a failed start's rollback, a stop and crash recovery all
 * run these. Each is idempotent, so it is safe to run whether or not its step took effect, and
 * twice.
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
    const unroute = (organizationId: OrganizationId): Effect.Effect<void | UndoSkipped, NginxError> =>
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

    /** nginx-config: remove the route file. */
    const removeRouteFile = (organizationId: OrganizationId): Effect.Effect<void, NginxError> =>
      nginx.removeRoute(organizationId)

    /** dns: delete the org's record. */
    const removeRecord = (organizationId: OrganizationId): Effect.Effect<void | UndoSkipped, DnsError> =>
      dns.provider === "none"
        ? Effect.succeed(new UndoSkipped({ reason: "DNS_PROVIDER=none: wildcard DNS" }))
        : dns.remove(organizationId)

    /**
     * allocate: give the gateway back, unless a routing undo before it in the same rollback did
     * not finish (then the gateway is kept and the reconciler retries; see GatewayKept). Keyed by
     * the allocation: releasing a claim that never committed changes nothing.
     */
    const release = (allocationId: AllocationId, finalState: FinalState): Undo<PoolError | GatewayKept, never> =>
    (before) =>
      Option.match(routingLeft(before), {
        onSome: (routing) => Effect.fail(new GatewayKept({ routing })),
        onNone: () =>
          Effect.map(pool.release(allocationId, finalState), (released) =>
            released ? undefined : new UndoSkipped({ reason: "the gateway was already released" }))
      })

    /**
     * Takes a live allocation down, as a stop and crash recovery do: every step's undo in reverse
     * order, routing first, the gateway last.
     */
    const teardown = (
      allocation: LiveAllocation,
      finalState: FinalState
    ): ReadonlyArray<readonly [StepName, Undo<UndoError, never>]> => [
      ["nginx-reload", () => unroute(allocation.organizationId)],
      ["nginx-config", () => removeRouteFile(allocation.organizationId)],
      ["dns", () => removeRecord(allocation.organizationId)],
      ["allocate", release(allocation.allocationId, finalState)]
    ]

    return { unroute, removeRouteFile, removeRecord, release, teardown }
  })
}) {}
