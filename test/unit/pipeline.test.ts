import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, Layer, Option, Ref, Scope } from "effect"
import { randomUUID } from "node:crypto"
import { Allocator } from "../../src/allocation/Allocator.ts"
import { type Failure, startFailure } from "../support/failures.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { type StepName, undoOrder } from "../../src/domain/steps.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { expected, reportOf, stepsBefore, stepsThrough, undoOrderOf } from "../support/journal.ts"
import { calls, setFault, TestWorld } from "../support/TestLayers.ts"
import { advance, testServices, untilCalled } from "../support/testServices.ts"

const STEP_TIMEOUT_MS = 1000
const UNDO_TIMEOUT_MS = 500
const SHUTDOWN_GRACE_MS = 300

/** The allocator over in-memory outside systems with two gateways in the pool. */
const TestServices = testServices({
  env: {
    STEP_TIMEOUT_MS: String(STEP_TIMEOUT_MS),
    UNDO_TIMEOUT_MS: String(UNDO_TIMEOUT_MS),
    SHUTDOWN_GRACE_MS: String(SHUTDOWN_GRACE_MS),
    // One gateway per start: the pipeline of one attempt (retries: test/unit/gateways.test.ts).
    START_ATTEMPTS: "1"
  }
})

const newOrg = () => randomUUID() as OrganizationId

/** Nothing of the org is left anywhere, and the whole pool is free. */
const expectNothingLeft = (org: OrganizationId) =>
  Effect.gen(function*() {
    const world = yield* TestWorld
    expect([...(yield* Ref.get(world.dnsRecords))]).not.toContain(org)
    expect([...(yield* Ref.get(world.routeFiles)).keys()]).not.toContain(org)
    expect([...(yield* Ref.get(world.served)).keys()]).not.toContain(org)
    const stats = yield* Effect.flatMap(GatewayStore, (pool) => pool.stats())
    expect(stats).toMatchObject({ total: 2, free: 2, allocated: 0 })
  })

const reportSteps = (error: Failure) => error._tag === "NoGatewayAvailable" ? [] : reportOf(error.rollback)

describe("allocation pipeline (test layers)", () => {
  it.effect("success: all five steps run in order and no undo runs", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const org = newOrg()
      // From here: what the start calls (the readiness checks at start-up came before).
      const before = (yield* calls).length
      const started = yield* allocator.start(org)
      expect(started.reused).toBe(false)
      expect(started.hostname).toBe(`org-${org}.domain.local`)
      expect((yield* calls).slice(before)).toEqual([
        "pool.claim",
        "dns.upsert",
        "nginx.writeRoute",
        "nginx.reload",
        "nginx.awaitServed",
        "handshake.awaitHealthy",
        "handshake.handshake",
        "pool.activate"
      ])
      const world = yield* TestWorld
      expect((yield* Ref.get(world.served)).get(org)).toBe(started.allocationId)
      expect((yield* Ref.get(world.allocations)).get(started.allocationId)?.state).toBe("active")
      const events = (yield* Ref.get(world.journal)).map((e) => e.event)
      expect(events.filter((e) => e.startsWith("undo"))).toEqual([])
      // A second start of the same org reuses the allocation.
      const again = yield* allocator.start(org)
      expect(again).toEqual({ ...started, reused: true })
    }).pipe(Effect.provide(TestServices)))

  // A refused step changed nothing: exactly the steps before it are undone.
  const failures: ReadonlyArray<{ readonly step: StepName; readonly fault: string }> = [
    { step: "allocate", fault: "pool.claim" },
    { step: "dns", fault: "dns.upsert" },
    { step: "nginx-config", fault: "nginx.writeRoute" },
    { step: "nginx-reload", fault: "nginx.reload" },
    { step: "handshake", fault: "handshake.handshake" }
  ]

  it.effect("a failure after the reload was signalled (the probe fails) is undone too: nginx may still load the route", () =>
    Effect.gen(function*() {
      yield* setFault("nginx.awaitServed", "fail")
      const org = newOrg()
      const error = yield* startFailure(org)
      expect(error._tag === "StepFailed" && error.step).toBe("nginx-reload")
      expect(reportSteps(error)).toEqual(expected.rollback(undoOrderOf(stepsThrough("nginx-reload"))))
      yield* expectNothingLeft(org)
    }).pipe(Effect.provide(TestServices)))

  for (const { fault, step } of failures) {
    const undone = undoOrderOf(stepsBefore(step))
    it.effect(`failure at ${step}: exactly the completed steps are undone, in reverse order`, () =>
      Effect.gen(function*() {
        yield* setFault(fault, "fail")
        const org = newOrg()
        const error = yield* startFailure(org)
        expect(error._tag).toBe("StepFailed")
        if (error._tag !== "StepFailed") return
        expect(error.step).toBe(step)
        expect(error.reason).toMatch(/injected|HTTP 500/)
        expect(error.allocationId === undefined).toBe(step === "allocate")
        expect(reportSteps(error)).toEqual(expected.rollback(undone))
        yield* expectNothingLeft(org)
        const world = yield* TestWorld
        const journal = yield* Ref.get(world.journal)
        expect(journal.filter((e) => e.event === "undone").map((e) => e.step)).toEqual(undone)
        if (step !== "allocate") {
          expect((yield* Ref.get(world.allocations)).get(error.allocationId!)?.state).toBe("rolled_back")
          expect(journal.find((e) => e.step === step)?.event).toBe("started")
          expect(journal.filter((e) => e.step === step && e.event === "failed")).toHaveLength(1)
        }
      }).pipe(Effect.provide(TestServices)))
  }

  it.effect("no gateway free: NoGatewayAvailable and nothing is undone", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      yield* allocator.start(newOrg())
      yield* allocator.start(newOrg())
      const before = (yield* calls).length
      const error = yield* startFailure(newOrg())
      expect(error._tag).toBe("NoGatewayAvailable")
      expect(reportSteps(error)).toEqual([])
      expect((yield* calls).slice(before)).toEqual(["pool.claim", "pool.transition"])
    }).pipe(Effect.provide(TestServices)))

  it.effect("an undo that fails and one that hangs: the others still run, the original error comes back", () =>
    Effect.gen(function*() {
      yield* setFault("handshake.handshake", "fail")
      yield* setFault("dns.remove", "fail")
      yield* setFault("pool.release", "hang")
      const org = newOrg()
      const fiber = yield* Effect.fork(startFailure(org))
      yield* advance(UNDO_TIMEOUT_MS * 3)
      const error = yield* Fiber.join(fiber)
      expect(error._tag).toBe("StepFailed")
      if (error._tag !== "StepFailed") return
      expect(error.step).toBe("handshake")
      expect(reportSteps(error)).toEqual(
        expected.rollback(undoOrderOf(stepsBefore("handshake")), { dns: "failed", allocate: "timed_out" })
      )
      const world = yield* TestWorld
      expect([...(yield* Ref.get(world.served)).keys()]).not.toContain(org)
      const journal = yield* Ref.get(world.journal)
      expect(journal.filter((e) => e.step === "dns" && e.event === "undo_failed")).toHaveLength(1)
      const notices = yield* Ref.get(world.notices)
      expect(notices).toHaveLength(1)
      expect(notices[0]).toMatchObject({ kind: "rollback_incomplete", organization_id: org, step: "handshake" })
      expect(journal.filter((e) => e.step === "allocate" && e.event === "undo_timed_out")).toHaveLength(1)
    }).pipe(Effect.provide(TestServices)))

  it.effect("a forward step that hangs: StepTimedOut, and everything before it is rolled back", () =>
    Effect.gen(function*() {
      yield* setFault("handshake.handshake", "hang")
      const org = newOrg()
      const fiber = yield* Effect.fork(startFailure(org))
      yield* advance(STEP_TIMEOUT_MS + 200)
      const error = yield* Fiber.join(fiber)
      expect(error._tag).toBe("StepTimedOut")
      if (error._tag !== "StepTimedOut") return
      expect(error.step).toBe("handshake")
      expect(error.timeoutMs).toBe(STEP_TIMEOUT_MS)
      // A timed-out handshake may have reached the gateway: it is released once routing is gone.
      expect(reportSteps(error)).toEqual(expected.rollback(undoOrder))
      yield* expectNothingLeft(org)
    }).pipe(Effect.provide(TestServices)))

  it.effect("a step that dies is that step's failure, and is rolled back", () =>
    Effect.gen(function*() {
      yield* setFault("nginx.writeRoute", "die")
      const org = newOrg()
      const error = yield* startFailure(org)
      expect(error._tag).toBe("StepFailed")
      if (error._tag !== "StepFailed") return
      expect(error.step).toBe("nginx-config")
      expect(error.reason).toMatch(/defect: injected defect/)
      expect(reportSteps(error)).toEqual(expected.rollback(undoOrderOf(stepsThrough("nginx-config"))))
      yield* expectNothingLeft(org)
    }).pipe(Effect.provide(TestServices)))

  it.effect("a routing undo that fails keeps the gateway: it must not be handed to another org", () =>
    Effect.gen(function*() {
      yield* setFault("handshake.handshake", "hang")
      const org = newOrg()
      const fiber = yield* Effect.fork(startFailure(org))
      yield* untilCalled("handshake.handshake")
      // nginx now serves the route; from here on it refuses every reload.
      yield* setFault("nginx.reload", "fail")
      yield* advance(STEP_TIMEOUT_MS + 200)
      const error = yield* Fiber.join(fiber)
      expect(reportSteps(error)).toEqual(expected.rollback(undoOrder, { "nginx-reload": "failed", allocate: "failed" }))
      // nginx-reload's undo did not finish: nginx-config's asks nginx itself (a second removal).
      expect((yield* calls).filter((call) => call === "nginx.removeRoute")).toHaveLength(2)
      const stats = yield* Effect.flatMap(GatewayStore, (pool) => pool.stats())
      expect(stats.allocated).toBe(1)
      const world = yield* TestWorld
      if (error._tag === "NoGatewayAvailable") return
      expect((yield* Ref.get(world.allocations)).get(error.allocationId!)?.state).toBe("rolling_back")
    }).pipe(Effect.provide(TestServices)))

  it.effect("shutdown waits out the grace period, then interrupts a hung start, which rolls back", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(TestServices, scope)
      const world = yield* TestWorld.pipe(Effect.provide(context))
      const allocator = yield* Allocator.pipe(Effect.provide(context))
      yield* setFault("handshake.awaitHealthy", "hang").pipe(Effect.provide(context))
      const org = newOrg()
      const caller = yield* Effect.fork(allocator.start(org))
      yield* untilCalled("handshake.awaitHealthy").pipe(Effect.provide(context))
      const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
      yield* advance(SHUTDOWN_GRACE_MS - 100)
      // Still within the grace period: nothing was undone yet.
      expect((yield* Ref.get(world.journal)).filter((e) => e.event === "undone")).toEqual([])
      // Past the grace period, well before the step's own timeout.
      yield* advance(400)
      yield* Fiber.join(closing)
      // The caller is told the service shut down (503), not left with an interruption.
      const exit = yield* Fiber.await(caller)
      expect(Exit.isFailure(exit) && Cause.failureOption(exit.cause).pipe(Option.map((e) => e._tag), Option.getOrNull)).toBe("ShuttingDown")
      expect([...(yield* Ref.get(world.served)).keys()]).toEqual([])
      expect([...(yield* Ref.get(world.dnsRecords))]).toEqual([])
      expect((yield* Ref.get(world.gateways)).every((g) => g.allocationId === null)).toBe(true)
      const undone = (yield* Ref.get(world.journal)).filter((e) => e.event === "undone").map((e) => e.step)
      expect(undone).toEqual(undoOrderOf(stepsBefore("handshake")))
    }))

  it.effect("a caller that goes away does not abort the start; a retry finds it", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      yield* setFault("handshake.awaitHealthy", "hang")
      const org = newOrg()
      const caller = yield* Effect.fork(allocator.start(org))
      yield* untilCalled("handshake.awaitHealthy")
      yield* Fiber.interrupt(caller)
      const world = yield* TestWorld
      yield* Ref.set(world.faults, new Map())
      // The detached start is still waiting on the gateway; it times out and rolls back alone.
      const retry = yield* Effect.fork(allocator.start(org).pipe(Effect.either))
      yield* advance(STEP_TIMEOUT_MS + 200)
      const result = yield* Fiber.join(retry)
      expect(result._tag).toBe("Left")
      expect((yield* calls).filter((c) => c === "pool.claim")).toHaveLength(1)
      yield* expectNothingLeft(org)
    }).pipe(Effect.provide(TestServices)))

  it.effect("concurrent starts for one org share one pipeline and get one answer", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const org = newOrg()
      const answers = yield* Effect.all(Array.from({ length: 8 }, () => allocator.start(org)), { concurrency: "unbounded" })
      expect(new Set(answers.map((a) => a.allocationId)).size).toBe(1)
      expect((yield* calls).filter((c) => c === "pool.claim")).toHaveLength(1)
    }).pipe(Effect.provide(TestServices)))

  it.effect("stop takes the allocation over, removes routing first and releases the gateway last", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const org = newOrg()
      const started = yield* allocator.start(org)
      const before = (yield* calls).length
      const stopped = yield* allocator.stop(org)
      expect(stopped.allocationId).toBe(started.allocationId)
      const stopCalls = (yield* calls).slice(before).filter((c) => !c.startsWith("pool.findLive"))
      expect(stopCalls).toEqual([
        "pool.takeForStop",
        "nginx.removeRoute",
        "nginx.reload",
        "nginx.awaitWithdrawn",
        // No second removal: nginx-config's undo is done by nginx-reload's.
        "handshake.release",
        "dns.remove",
        "pool.release"
      ])
      yield* expectNothingLeft(org)
      const error = yield* allocator.stop(org).pipe(Effect.flip)
      expect(error._tag).toBe("AllocationNotFound")
    }).pipe(Effect.provide(TestServices)))
})
