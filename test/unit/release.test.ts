// The gateway's release (the handshake's undo) over the in-memory outside systems: where it runs
// in a teardown, when it is skipped, and the "unreleased" state a failed release leaves: the
// gateway is free but never handed out until the health pass's retry succeeds.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Option, Ref } from "effect"
import { randomUUID } from "node:crypto"
import { Allocator } from "../../src/allocation/Allocator.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { undoOrder } from "../../src/domain/steps.ts"
import { GatewayHealth } from "../../src/pool/GatewayHealth.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { startFailure } from "../support/failures.ts"
import { expected, reportOf, stepsBefore, undoOrderOf } from "../support/journal.ts"
import { calls, clearFaults, setFault, TestWorld } from "../support/TestLayers.ts"
import { advance, backgroundOff, testServices, testUpstreams } from "../support/testServices.ts"

const STEP_TIMEOUT_MS = 1000
const UNDO_TIMEOUT_MS = 500
const UPSTREAMS = testUpstreams(2)

const TestServices = testServices({
  gateways: UPSTREAMS.length,
  env: { STEP_TIMEOUT_MS: String(STEP_TIMEOUT_MS), UNDO_TIMEOUT_MS: String(UNDO_TIMEOUT_MS), START_ATTEMPTS: "1", ...backgroundOff }
})

const newOrg = () => randomUUID() as OrganizationId

const stats = Effect.flatMap(GatewayStore, (pool) => pool.stats())
const gatewayOf = (gatewayId: string) =>
  Effect.map(Effect.flatMap(GatewayStore, (pool) => pool.listGateways()), (all) => all.find((g) => g.gatewayId === gatewayId))

/** The outside calls made from the `from`-th on, pool reads left out. */
const callsSince = (from: number) =>
  Effect.map(calls, (made) => made.slice(from).filter((c) => !c.startsWith("pool.findLive")))

describe("the gateway's release (test layers)", () => {
  it.effect("a stop releases the gateway once routing is proven gone, before DNS and the row", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const org = newOrg()
      yield* allocator.start(org)
      const before = (yield* calls).length
      const stopped = yield* allocator.stop(org)
      expect(stopped.gatewayRelease).toBe("done")
      const made = yield* callsSince(before)
      // No new connection of the org can reach the gateway after the release: nginx no longer routes it.
      expect(made.indexOf("handshake.release")).toBeGreaterThan(made.lastIndexOf("nginx.awaitWithdrawn"))
      expect(made.indexOf("handshake.release")).toBeLessThan(made.indexOf("dns.remove"))
      expect(made.indexOf("dns.remove")).toBeLessThan(made.indexOf("pool.release"))
      const world = yield* TestWorld
      const journal = (yield* Ref.get(world.journal)).filter((e) => e.actor === "stop" && e.event === "undone")
      expect(journal.map((e) => e.step)).toEqual(undoOrder)
    }).pipe(Effect.provide(TestServices)))

  it.effect("a handshake that timed out is released in its rollback, after routing, before DNS", () =>
    Effect.gen(function*() {
      yield* setFault("handshake.handshake", "hang")
      const fiber = yield* Effect.fork(startFailure(newOrg()))
      yield* advance(STEP_TIMEOUT_MS + 200)
      const error = yield* Fiber.join(fiber)
      expect(error._tag !== "NoGatewayAvailable" && reportOf(error.rollback)).toEqual(expected.rollback(undoOrder))
      expect(yield* calls).toContain("handshake.release")
    }).pipe(Effect.provide(TestServices)))

  it.effect("a health wait that timed out never sent the handshake: nothing to release", () =>
    Effect.gen(function*() {
      yield* setFault("handshake.awaitHealthy", "hang")
      const fiber = yield* Effect.fork(startFailure(newOrg()))
      yield* advance(STEP_TIMEOUT_MS + 200)
      const error = yield* Fiber.join(fiber)
      expect(error._tag !== "NoGatewayAvailable" && error.rollback.find((o) => o.step === "handshake")).toMatchObject({
        status: "skipped",
        message: "nothing to release: the handshake was never sent"
      })
      expect(yield* calls).not.toContain("handshake.release")
    }).pipe(Effect.provide(TestServices)))

  it.effect("a handshake the gateway refused (non-2xx) changed nothing: no release", () =>
    Effect.gen(function*() {
      yield* setFault("handshake.handshake", "fail")
      const error = yield* startFailure(newOrg())
      expect(error._tag !== "NoGatewayAvailable" && error.rollback.map((o) => o.step)).toEqual(undoOrderOf(stepsBefore("handshake")))
      expect(yield* calls).not.toContain("handshake.release")
    }).pipe(Effect.provide(TestServices)))

  it.effect("a release that fails: the stop answers (release pending), the gateway is free but never handed out until a retry succeeds", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const health = yield* GatewayHealth
      const world = yield* TestWorld
      const org = newOrg()
      const started = yield* allocator.start(org)
      yield* setFault(`handshake.release@${UPSTREAMS[0]}`, "fail")
      yield* setFault(`handshake.release@${UPSTREAMS[1]}`, "fail")

      const stopped = yield* allocator.stop(org)
      expect(stopped.gatewayRelease).toBe("pending")
      // The org's routing and DNS are gone; its allocation is over.
      expect([...(yield* Ref.get(world.served)).keys()]).not.toContain(org)
      expect([...(yield* Ref.get(world.dnsRecords))]).not.toContain(org)
      expect((yield* Ref.get(world.allocations)).get(started.allocationId)?.state).toBe("released")
      expect(yield* gatewayOf(started.gatewayId)).toMatchObject({
        allocationId: null,
        unreleasedAllocationId: started.allocationId,
        lastFailure: expect.stringMatching(/^release: /)
      })
      expect(yield* stats).toMatchObject({ total: 2, free: 2, allocated: 0, available: 1, unreleased: 1 })

      // Two more orgs: one gets the other gateway, the next finds none (the unreleased one is not handed out).
      const next = yield* allocator.start(newOrg())
      expect(next.gatewayId).not.toBe(started.gatewayId)
      const none = yield* startFailure(newOrg())
      expect(none._tag).toBe("NoGatewayAvailable")

      // The health pass retries the release: failing twice more tells the operator, once.
      yield* health.runOnce
      yield* health.runOnce
      yield* health.runOnce
      const notices = (yield* Ref.get(world.notices)).filter((n) => n.kind === "gateway_unreleased")
      expect(notices).toHaveLength(1)
      expect(notices[0]).toMatchObject({ gateway_id: started.gatewayId, allocation_id: started.allocationId, organization_id: org })
      expect((yield* gatewayOf(started.gatewayId))?.unreleasedAllocationId).toBe(started.allocationId)

      // Once the gateway releases, it is back in rotation.
      yield* clearFaults
      yield* health.runOnce
      expect((yield* gatewayOf(started.gatewayId))?.unreleasedAllocationId).toBeNull()
      expect(yield* stats).toMatchObject({ available: 1, unreleased: 0 })
      const again = yield* allocator.start(newOrg())
      expect(again.gatewayId).toBe(started.gatewayId)
    }).pipe(Effect.provide(TestServices)))

  it.effect("a release that hangs is bounded by the undo timeout, and the gateway is held back", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const org = newOrg()
      const started = yield* allocator.start(org)
      yield* setFault("handshake.release", "hang")
      const fiber = yield* Effect.fork(allocator.stop(org))
      yield* advance(UNDO_TIMEOUT_MS * 4)
      const stopped = yield* Fiber.join(fiber)
      expect(stopped.gatewayRelease).toBe("pending")
      const world = yield* TestWorld
      const journal = (yield* Ref.get(world.journal)).filter((e) => e.allocationId === started.allocationId && e.actor === "stop")
      expect(journal.filter((e) => e.event.startsWith("undo_") && e.event !== "undo_started").map((e) => [e.step, e.event]))
        .toEqual([["handshake", "undo_timed_out"]])
      expect(Option.fromNullable((yield* gatewayOf(started.gatewayId))?.unreleasedAllocationId)).toEqual(Option.some(started.allocationId))
    }).pipe(Effect.provide(TestServices)))
})
