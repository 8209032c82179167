// Drift repair deletes an orphan DNS record under the same fence as a claim: the org's slot
// (AllocationStore.whileUnclaimed, in Postgres the uncommitted row in allocations_one_live_per_org a
// claim's insert waits for). Over the in-memory outside systems, with the slot modelled as a lock
// per org that claims take too; test/integration/driftRepair.test.ts checks the real one.
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, Option, Ref } from "effect"
import { randomUUID } from "node:crypto"
import { Allocator } from "../../src/allocation/Allocator.ts"
import { Reconciler } from "../../src/allocation/Reconciler.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { Nginx } from "../../src/nginx/Nginx.ts"
import { AllocationStore } from "../../src/allocation/AllocationStore.ts"
import { calls, gate, OutsideTest, TestWorld } from "../support/TestLayers.ts"
import { testServices, untilCalled } from "../support/testServices.ts"

/**
 * The test layers, with the org's slot: `whileUnclaimed` holds it while the org has no live
 * allocation, and a claim of the org waits for it (as a claim's insert waits in Postgres). nginx's
 * listing names each route's upstream (the allocation's).
 */
const WithOrgSlots = Layer.effectContext(
  Effect.gen(function*() {
    const world = yield* TestWorld
    const allocations = yield* AllocationStore
    const nginx = yield* Nginx
    const slots = new Map<OrganizationId, Effect.Semaphore>()
    const slotOf = (organizationId: OrganizationId) => {
      const held = slots.get(organizationId)
      if (held !== undefined) return held
      const slot = Effect.unsafeMakeSemaphore(1)
      slots.set(organizationId, slot)
      return slot
    }
    return Context.make(
      AllocationStore,
      AllocationStore.make({
        ...allocations,
        claim: (allocationId, organizationId, runner) =>
          slotOf(organizationId).withPermits(1)(allocations.claim(allocationId, organizationId, runner)),
        whileUnclaimed: (organizationId, effect) =>
          slotOf(organizationId).withPermits(1)(
            Effect.flatMap(allocations.findLive(organizationId), (live) =>
              Option.isSome(live) ? Effect.succeed(Option.none()) : Effect.map(effect, Option.some))
          )
      })
    ).pipe(
      Context.add(
        Nginx,
        Nginx.of({
          ...nginx,
          edges: Effect.map(nginx.edges, (edges) =>
            edges.map((edge) => ({
              ...edge,
              listRoutes: Effect.gen(function*() {
                const allocations = yield* Ref.get(world.allocations)
                return [...(yield* Ref.get(world.routeFiles)).entries()].flatMap(([organizationId, allocationId]) => {
                  const allocation = allocations.get(allocationId)
                  return allocation === undefined
                    ? []
                    : [{ organizationId, allocationId, upstream: allocation.upstream, generation: allocation.generation }]
                })
              })
            })))
        })
      )
    )
  })
).pipe(Layer.provideMerge(OutsideTest))

const TestServices = testServices({ outside: WithOrgSlots, env: { RECONCILE_INTERVAL_MS: "3600000" } })

const runOnce = Effect.flatMap(Reconciler, (reconciler) => reconciler.runOnce)

describe("drift repair's DNS fence (test layers)", () => {
  it.effect("a start that claims between drift repair's check and its delete of an orphan record waits for the delete, and keeps its record", () =>
    Effect.gen(function*() {
      const world = yield* TestWorld
      const allocator = yield* Allocator
      const org = randomUUID() as OrganizationId
      // An orphan record: no live allocation holds the org.
      yield* Ref.update(world.dnsRecords, (records) => new Set(records).add(org))
      const open = yield* gate("dns.remove")
      const pass = yield* Effect.fork(runOnce)
      // Drift repair checked the org and is about to delete its record.
      yield* untilCalled("dns.remove")
      const start = yield* Effect.fork(allocator.start(org))
      yield* Effect.repeatN(Effect.yieldNow(), 100)
      // The start's claim waits for the org's slot: nothing claimed, no record written yet.
      expect((yield* calls).filter((call) => call === "pool.claim" || call === "dns.upsert")).toEqual([])
      yield* open
      yield* Fiber.join(pass)
      const started = yield* Fiber.join(start)
      // Every delete (this pass's, and the service's own first pass's if it met the record too)
      // came before the claim, and the start's record after it: the record is there.
      const made = (yield* calls).filter((call) => call === "dns.remove" || call === "dns.upsert" || call === "pool.claim")
      expect(made.slice(-2)).toEqual(["pool.claim", "dns.upsert"])
      expect(made.slice(0, -2).every((call) => call === "dns.remove")).toBe(true)
      expect((yield* Ref.get(world.dnsRecords)).has(org)).toBe(true)
      expect((yield* Ref.get(world.allocations)).get(started.allocationId)?.state).toBe("active")
      // The next pass finds nothing to repair.
      expect(yield* runOnce).toMatchObject({ orphanRecordsRemoved: 0, recordsRepaired: 0, routesRepaired: 0, orphanRoutesRemoved: 0 })
    }).pipe(Effect.provide(TestServices)))

})
