// Ownership and fencing, over the in-memory outside systems: one worker per allocation, every side
// effect checked against the owner, every removal naming the allocation it removes. Gates
// (test/support/TestLayers.ts) stop an operation mid-flight so a second actor can move in between.
import { describe, expect, it } from "@effect/vitest"
import { type Context, Effect, Fiber, Option, Ref } from "effect"
import { randomUUID } from "node:crypto"
import { Allocator } from "../../src/allocation/Allocator.ts"
import { Reconciler } from "../../src/allocation/Reconciler.ts"
import { Undos } from "../../src/allocation/undos.ts"
import type { Allocation } from "../../src/domain/allocation.ts"
import { type AllocationId, Generation, type OrganizationId } from "../../src/domain/ids.ts"
import { AllocationStore } from "../../src/allocation/AllocationStore.ts"
import { failureOf } from "../support/failures.ts"
import { undoOrder } from "../../src/domain/steps.ts"
import { rowsOf } from "../support/journal.ts"
import { calls, gate, TestWorld } from "../support/TestLayers.ts"
import { testServices, untilCalled } from "../support/testServices.ts"

const TestServices = testServices({ env: { RECONCILE_INTERVAL_MS: "3600000" } })

const newOrg = () => randomUUID() as OrganizationId

/** Rewrites the allocation's row, as another replica's compare-and-set would. */
const setRow = (allocationId: AllocationId, change: Partial<Allocation>) =>
  Effect.flatMap(TestWorld, (world) =>
    Ref.update(world.allocations, (all) => {
      const current = all.get(allocationId)
      return current === undefined ? all : new Map(all).set(allocationId, { ...current, ...change } as Allocation)
    }))

const liveOf = (org: OrganizationId) =>
  Effect.flatMap(AllocationStore, (allocations) => allocations.findLive(org)).pipe(Effect.map(Option.getOrThrow))

describe("ownership and fencing (test layers)", () => {
  it.effect("a runner whose allocation was taken over stops before its next side effect, and undoes nothing", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const org = newOrg()
      const open = yield* gate("dns.upsert")
      const start = yield* Effect.fork(allocator.start(org))
      yield* untilCalled("dns.upsert")
      const { allocationId } = yield* liveOf(org)
      // Another replica's reconciler adopted it (this runner looked dead to it).
      yield* setRow(allocationId, { runner: "replica-b", state: "rolling_back" })
      const before = (yield* calls).length
      yield* open
      const error = yield* failureOf(yield* Fiber.join(start).pipe(Effect.flip))
      expect(error._tag).toBe("StepFailed")
      if (error._tag !== "StepFailed") return
      expect(error.step).toBe("nginx-config")
      expect(error.reason).toMatch(/taken over by another runner/)
      // The upsert already under way lands (the window that remains); after it, nothing touched
      // nginx, DNS or the gateway.
      const after = (yield* calls).slice(before).filter((call) => !call.startsWith("pool."))
      expect(after).toEqual([])
      expect(error.rollback.map((outcome) => [outcome.step, outcome.status])).toEqual([
        ["dns", "skipped"],
        ["allocate", "skipped"]
      ])
      const world = yield* TestWorld
      expect((yield* Ref.get(world.allocations)).get(allocationId)).toMatchObject({ runner: "replica-b", state: "rolling_back" })
    }).pipe(Effect.provide(TestServices)))

  it.effect("a runner whose lease lapsed makes no side effect until it holds it again", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const world = yield* TestWorld
      const org = newOrg()
      const open = yield* gate("nginx.writeRoute")
      const start = yield* Effect.fork(allocator.start(org))
      yield* untilCalled("nginx.writeRoute")
      yield* Ref.set(world.leaseHeld, false)
      const before = (yield* calls).length
      yield* open
      const error = yield* failureOf(yield* Fiber.join(start).pipe(Effect.flip))
      expect(error._tag === "StepFailed" && error.step).toBe("nginx-reload")
      expect(error._tag === "StepFailed" && error.reason).toMatch(/lease is not held/)
      // The write already under way lands; nothing after it does.
      const after = (yield* calls).slice(before).filter((call) => !call.startsWith("pool."))
      expect(after).toEqual([])
      expect(error._tag !== "NoGatewayAvailable" && error.rollback.every((outcome) => outcome.status === "skipped")).toBe(true)
      // Left for whoever owns it next: the reconciler of this runner once its lease is back, or another's.
      const { state } = yield* liveOf(org)
      expect(state).toBe("rolling_back")
    }).pipe(Effect.provide(TestServices)))

  it.effect("a late undo of an old allocation never removes what the org's newer allocation made", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const undos = yield* Undos
      const world = yield* TestWorld
      const org = newOrg()
      const old = yield* allocator.start(org)
      yield* allocator.stop(org)
      const current = yield* allocator.start(org)
      expect(current.allocationId).not.toBe(old.allocationId)

      const oldRoute = { organizationId: org, allocationId: old.allocationId, generation: (yield* liveGeneration(world, old.allocationId)) }
      const file = yield* undos.removeRoute(oldRoute)
      expect(file).toMatchObject({ _tag: "UndoSkipped" })
      yield* undos.unroute(oldRoute)
      const record = yield* undos.removeRecord(org, old.allocationId)
      expect(record).toMatchObject({ _tag: "UndoSkipped", reason: expect.stringMatching(/newer allocation/) })

      expect((yield* Ref.get(world.routeFiles)).get(org)).toBe(current.allocationId)
      expect((yield* Ref.get(world.served)).get(org)).toBe(current.allocationId)
      expect((yield* Ref.get(world.dnsRecords)).has(org)).toBe(true)
    }).pipe(Effect.provide(TestServices)))

  it.effect("the reconciler leaves alone an allocation another live runner is stopping", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const world = yield* TestWorld
      const org = newOrg()
      const started = yield* allocator.start(org)
      // Replica A (alive) took it over for a stop and is working on it.
      yield* setRow(started.allocationId, { runner: "replica-a", state: "stopping" })
      const summary = yield* Effect.flatMap(Reconciler, (reconciler) => reconciler.runOnce)
      expect(summary.recovered).toBe(0)
      expect((yield* Ref.get(world.journal)).filter((e) => e.actor === "reconciler")).toEqual([])
      expect((yield* Ref.get(world.routeFiles)).get(org)).toBe(started.allocationId)
    }).pipe(Effect.provide(TestServices)))

  it.effect("drift repair does not restore the route of an org stopped during the pass", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const world = yield* TestWorld
      const org = newOrg()
      const started = yield* allocator.start(org)
      // Drift: the route is gone from nginx.
      const without = <V>(map: ReadonlyMap<OrganizationId, V>) => new Map([...map].filter(([key]) => key !== org))
      yield* Ref.update(world.routeFiles, without)
      yield* Ref.update(world.served, without)
      const open = yield* gate("pool.whileActive")
      const pass = yield* Effect.fork(Effect.flatMap(Reconciler, (reconciler) => reconciler.runOnce))
      yield* untilCalled("pool.whileActive")
      // The org is stopped while the pass holds its list of active allocations.
      const stopped = yield* allocator.stop(org)
      expect(stopped.allocationId).toBe(started.allocationId)
      yield* open
      const summary = yield* Fiber.join(pass)
      expect(summary.routesRepaired).toBe(0)
      expect((yield* Ref.get(world.routeFiles)).has(org)).toBe(false)
      expect((yield* Ref.get(world.served)).has(org)).toBe(false)
    }).pipe(Effect.provide(TestServices)))

  it.effect("a stop runs detached: a caller that goes away does not abort it, and concurrent stops share it", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const world = yield* TestWorld
      const org = newOrg()
      const started = yield* allocator.start(org)
      const open = yield* gate("nginx.reload")
      const leaving = yield* Effect.fork(allocator.stop(org))
      const staying = yield* Effect.fork(allocator.stop(org))
      yield* untilCalled("nginx.reload", 2)
      yield* Fiber.interrupt(leaving)
      yield* open
      const stopped = yield* Fiber.join(staying)
      expect(stopped.allocationId).toBe(started.allocationId)
      expect((yield* calls).filter((call) => call === "pool.takeForStop")).toHaveLength(1)
      expect((yield* Ref.get(world.allocations)).get(started.allocationId)?.state).toBe("released")
      expect((yield* Ref.get(world.served)).has(org)).toBe(false)
    }).pipe(Effect.provide(TestServices)))
})

/** The generation the (fake) pool gave an allocation at its claim. */
const liveGeneration = (world: Context.Tag.Service<typeof TestWorld>, allocationId: AllocationId) =>
  Effect.map(Ref.get(world.allocations), (all) => all.get(allocationId)?.generation ?? Generation.make(0))

// A lease that lapses for a moment and comes back, between two undos of one teardown: the undo
// that met the lapse skipped its work, so every later undo of that teardown must skip too, or the
// `allocate` undo would free a gateway nginx still routes the org to (the chaos run caught it).
describe("a lease that lapses for a moment during a teardown", () => {
  it.effect("a stop: the undos after the lapse are skipped, the gateway stays claimed, and the reconciler finishes the stop whole", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const reconciler = yield* Reconciler
      const world = yield* TestWorld
      const org = randomUUID() as OrganizationId
      const started = yield* allocator.start(org)
      // The first undo's ownership check finds the lease gone; the next checks find it back.
      yield* Ref.set(world.leaseLapses, 1)
      const error = yield* allocator.stop(org).pipe(Effect.flip)
      expect(error._tag).toBe("StopFailed")
      const stopRows = (yield* Ref.get(world.journal)).filter((e) => e.allocationId === started.allocationId && e.actor === "stop")
      expect(rowsOf(stopRows.filter((e) => e.event !== "undo_started"))).toEqual(
        undoOrder.map((step) => `${step}:undo_skipped`)
      )
      // Still routed, still claimed: nothing was freed under a route.
      expect((yield* Ref.get(world.served)).get(org)).toBe(started.allocationId)
      expect((yield* Ref.get(world.gateways)).find((g) => g.gatewayId === started.gatewayId)?.allocationId).toBe(started.allocationId)
      // The lease is back: the reconciler adopts the stop this runner left and finishes it whole.
      const summary = yield* reconciler.runOnce
      expect(summary.recovered).toBe(1)
      expect((yield* Ref.get(world.served)).has(org)).toBe(false)
      expect((yield* Ref.get(world.gateways)).every((g) => g.allocationId === null)).toBe(true)
      expect((yield* Ref.get(world.allocations)).get(started.allocationId)?.state).toBe("released")
    }).pipe(Effect.provide(TestServices)))
})
