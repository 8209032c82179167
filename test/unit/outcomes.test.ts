// What a caller is told when the failure is nobody's step: the database failing at the commit
// point is not the gateway's handshake, and a stop that gave up waiting for a start in progress
// is not "no allocation". The ordering logic over the in-memory outside systems.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Option, Ref } from "effect"
import { randomUUID } from "node:crypto"
import { Allocator } from "../../src/allocation/Allocator.ts"
import type { AllocationId, OrganizationId } from "../../src/domain/ids.ts"
import { undoOrder } from "../../src/domain/steps.ts"
import { AllocationStore } from "../../src/allocation/AllocationStore.ts"
import { calls, setFault, TestWorld } from "../support/TestLayers.ts"
import { advance, backgroundOff, testServices } from "../support/testServices.ts"

const TestServices = testServices({ env: { START_ATTEMPTS: "3", ...backgroundOff } })

const newOrg = () => randomUUID() as OrganizationId

describe("failures that are no step's (test layers)", () => {
  it.effect("Postgres fails at the commit point: ActivationFailed (not the gateway's handshake), rolled back, no other gateway tried or set aside", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const world = yield* TestWorld
      yield* setFault("pool.activate", "fail")
      const error = yield* allocator.start(newOrg()).pipe(Effect.flip)
      expect(error._tag).toBe("StartFailed")
      if (error._tag !== "StartFailed") return
      expect(error.error._tag).toBe("ActivationFailed")
      expect(error.step).toBeUndefined()
      expect(error.attempts).toHaveLength(1)
      expect(error.rollback.map((o) => o.step)).toEqual(undoOrder)
      expect((yield* calls).filter((c) => c === "pool.claim")).toHaveLength(1)
      expect((yield* Ref.get(world.gateways)).every((g) => g.quarantinedUntil === null && g.allocationId === null)).toBe(true)
    }).pipe(Effect.provide(TestServices)))

  it.effect("a stop that gives up waiting for a start in progress says the allocation is in transition (409), not that there is none", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const allocations = yield* AllocationStore
      const org = newOrg()
      // Another replica (alive: its lease is held) is starting the org and does not finish in time.
      yield* allocations.claim(randomUUID() as AllocationId, org, "replica-b")
      expect(Option.map(yield* allocations.findLive(org), (a) => a.state)).toEqual(Option.some("starting"))
      const stop = yield* Effect.fork(allocator.stop(org).pipe(Effect.flip))
      // Past the stop's patience (a start's and a teardown's bounds).
      yield* advance(60_000, 1000)
      const error = yield* Fiber.join(stop)
      expect(error._tag).toBe("InTransition")
      expect(error.message).toMatch(/starting.*retry/)
    }).pipe(Effect.provide(TestServices)))
})
