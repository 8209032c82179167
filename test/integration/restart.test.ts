// NGINX_ROUTING=lua: nginx restarted in the middle of a start, after the start wrote its route and
// before it proved it. The restart empties the route table, and the restorer pushes back active
// allocations only (a starting one may be rolling back). The start writes its own route again,
// fenced, and completes: it does not wait out its step timeout and roll back.
import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Ref } from "effect"
import { randomUUID } from "node:crypto"
import { AllocationQueries } from "../../src/allocation/AllocationQueries.ts"
import { Allocator } from "../../src/allocation/Allocator.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { expectConsistent, gatewayName, poolStats } from "../support/probes.ts"
import { ServicesLive, StackLive, Stack } from "../support/stack.ts"

const STEP_TIMEOUT_MS = 8000

/** The org whose route write is followed by an nginx restart (once), and how many restarts were done. */
const restartAfterWriteOf = Effect.runSync(Ref.make<OrganizationId | null>(null))
const restarts = Effect.runSync(Ref.make(0))

layer(
  ServicesLive({ STEP_TIMEOUT_MS: String(STEP_TIMEOUT_MS), RECONCILE_INTERVAL_MS: "3600000" }, {
    nginx: (nginx, stack) => ({
      ...nginx,
      writeRoute: (route) =>
        nginx.writeRoute(route).pipe(
          Effect.tap(() =>
            Effect.gen(function*() {
              if ((yield* Ref.getAndSet(restartAfterWriteOf, null)) !== route.organizationId) return
              yield* stack.nginx.stop
              yield* Effect.orDie(stack.nginx.start)
              yield* Ref.update(restarts, (n) => n + 1)
            })
          )
        )
    })
  }).pipe(Layer.provideMerge(StackLive({ routing: "lua" }))),
  { timeout: 120_000, excludeTestServices: true }
)("nginx restarted between a start's route write and its proof (NGINX_ROUTING=lua)", (it) => {
  it.effect("the start writes its route again and completes, well within its step timeout; nginx routes the org to its gateway", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const stack = yield* Stack
      const org = randomUUID() as OrganizationId
      const before = yield* poolStats
      yield* Ref.set(restartAfterWriteOf, org)

      const startedAt = Date.now()
      const started = yield* allocator.start(org)
      const tookMs = Date.now() - startedAt
      expect(yield* Ref.get(restarts)).toBe(1)
      expect(tookMs).toBeLessThan(STEP_TIMEOUT_MS)

      const observation = yield* expectConsistent(stack, org, "active")
      expect(observation.nginx).toBe(yield* gatewayName(started.gatewayId))
      const allocation = yield* Effect.flatMap(AllocationQueries, (queries) => queries.describe(started.allocationId))
      expect(allocation.state).toBe("active")
      expect(allocation.steps.map((entry) => `${entry.step}:${entry.event}`)).toContain("nginx-reload:completed")
      expect((yield* poolStats).allocated).toBe(before.allocated + 1)

      yield* allocator.stop(org)
      yield* expectConsistent(stack, org, "absent")
      expect(yield* poolStats).toEqual(before)
    }))
})
