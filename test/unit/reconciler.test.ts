import { describe, expect, it } from "@effect/vitest"
import { Effect, Ref } from "effect"
import { randomUUID } from "node:crypto"
import { Allocator } from "../../src/allocation/Allocator.ts"
import { Reconciler } from "../../src/allocation/Reconciler.ts"
import type { AllocationId, OrganizationId } from "../../src/domain/ids.ts"
import { undoOrder } from "../../src/domain/steps.ts"
import { AllocationStore } from "../../src/allocation/AllocationStore.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { setFault, TestWorld } from "../support/TestLayers.ts"
import { testServices } from "../support/testServices.ts"

const TestServices = testServices()

const newOrg = () => randomUUID() as OrganizationId

/** What a process killed after `nginx-reload` leaves behind: a claimed gateway, a record, a route. */
const leaveOrphan = (runner: string) =>
  Effect.gen(function*() {
    const world = yield* TestWorld
    const allocations = yield* AllocationStore
    const org = newOrg()
    const allocationId = randomUUID() as AllocationId
    yield* allocations.claim(allocationId, org, runner)
    yield* Ref.update(world.dnsRecords, (s) => new Set(s).add(org))
    yield* Ref.update(world.routeFiles, (m) => new Map(m).set(org, allocationId))
    yield* Ref.update(world.served, (m) => new Map(m).set(org, allocationId))
    yield* Ref.update(world.deadRunners, (s) => new Set(s).add(runner))
    return { org, allocationId }
  })

const runOnce = Effect.flatMap(Reconciler, (reconciler) => reconciler.runOnce)

describe("reconciler (test layers)", () => {
  it.effect("undoes a start whose runner died, from the allocation row, and journals it as the reconciler's", () =>
    Effect.gen(function*() {
      const world = yield* TestWorld
      const { allocationId, org } = yield* leaveOrphan("dead-runner")
      const summary = yield* runOnce
      expect(summary.recovered).toBe(1)
      expect(summary.incomplete).toBe(0)
      expect([...(yield* Ref.get(world.dnsRecords))]).not.toContain(org)
      expect([...(yield* Ref.get(world.routeFiles)).keys()]).not.toContain(org)
      expect([...(yield* Ref.get(world.served)).keys()]).not.toContain(org)
      expect((yield* Effect.flatMap(GatewayStore, (p) => p.stats())).free).toBe(2)
      expect((yield* Ref.get(world.allocations)).get(allocationId)?.state).toBe("rolled_back")
      const journal = (yield* Ref.get(world.journal)).filter((e) => e.allocationId === allocationId)
      expect(journal.filter((e) => e.event === "undone").map((e) => [e.step, e.actor])).toEqual(
        undoOrder.map((step) => [step, "reconciler"])
      )
      const notices = yield* Ref.get(world.notices)
      expect(notices.map((n) => n.kind)).toEqual(["reconciler_repair"])
      // A second pass finds nothing left to do.
      expect(yield* runOnce).toEqual({
        recovered: 0,
        incomplete: 0,
        driftSkipped: false,
        orphanRoutesRemoved: 0,
        orphanRecordsRemoved: 0,
        routesRepaired: 0,
        recordsRepaired: 0
      })
    }).pipe(Effect.provide(TestServices)))

  it.effect("leaves allocations of live runners alone", () =>
    Effect.gen(function*() {
      const world = yield* TestWorld
      const { allocationId } = yield* leaveOrphan("live-runner")
      yield* Ref.set(world.deadRunners, new Set())
      const summary = yield* runOnce
      expect(summary.recovered).toBe(0)
      expect((yield* Ref.get(world.allocations)).get(allocationId)?.state).toBe("starting")
    }).pipe(Effect.provide(TestServices)))

  it.effect("retries an undo that failed until it succeeds, keeping the gateway meanwhile", () =>
    Effect.gen(function*() {
      const world = yield* TestWorld
      const { org } = yield* leaveOrphan("dead-runner")
      yield* setFault("nginx.reload", "fail")
      const first = yield* runOnce
      expect(first).toMatchObject({ recovered: 1, incomplete: 1 })
      expect((yield* Effect.flatMap(GatewayStore, (p) => p.stats())).allocated).toBe(1)
      yield* Ref.set(world.faults, new Map())
      const second = yield* runOnce
      expect(second).toMatchObject({ recovered: 1, incomplete: 0 })
      expect((yield* Effect.flatMap(GatewayStore, (p) => p.stats())).free).toBe(2)
      expect([...(yield* Ref.get(world.served)).keys()]).not.toContain(org)
    }).pipe(Effect.provide(TestServices)))

  it.effect("removes routes and records that belong to no allocation, and restores those an active one lost", () =>
    Effect.gen(function*() {
      const world = yield* TestWorld
      const allocator = yield* Allocator
      const active = yield* allocator.start(newOrg())
      const stray = newOrg()
      yield* Ref.update(world.dnsRecords, (s) => {
        const next = new Set(s).add(stray)
        next.delete(active.organizationId)
        return next
      })
      yield* Ref.update(world.routeFiles, (m) => {
        const next = new Map(m).set(stray, randomUUID() as AllocationId)
        next.delete(active.organizationId)
        return next
      })
      const summary = yield* runOnce
      expect(summary).toMatchObject({ orphanRoutesRemoved: 1, orphanRecordsRemoved: 1, routesRepaired: 1, recordsRepaired: 1 })
      expect([...(yield* Ref.get(world.dnsRecords))]).toEqual([active.organizationId])
      expect([...(yield* Ref.get(world.routeFiles)).entries()]).toEqual([[active.organizationId, active.allocationId]])
      expect((yield* Ref.get(world.served)).get(active.organizationId)).toBe(active.allocationId)
    }).pipe(Effect.provide(TestServices)))
})
