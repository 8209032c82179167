// Dead gateways set aside, starts retried on another gateway, draining: the ordering logic over
// the in-memory outside systems (the backoff arithmetic lives in Postgres: test/db/quarantine.test.ts).
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Option, Ref, TestClock } from "effect"
import { randomUUID } from "node:crypto"
import { AllocationQueries } from "../../src/allocation/AllocationQueries.ts"
import { Allocator } from "../../src/allocation/Allocator.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { GatewayHealth } from "../../src/pool/GatewayHealth.ts"
import { expected, reportOf, stepsBefore, undoOrderOf } from "../support/journal.ts"
import { calls, clearFaults, setFault, TestWorld } from "../support/TestLayers.ts"
import { backgroundOff, testServices, testUpstreams } from "../support/testServices.ts"

const UPSTREAMS = testUpstreams(3)
const QUARANTINE_MS = 30_000

const servicesWith = (gateways: number, env: Readonly<Record<string, string>> = {}) =>
  testServices({
    gateways,
    env: { START_ATTEMPTS: "3", GATEWAY_QUARANTINE_MS: String(QUARANTINE_MS), ...backgroundOff, ...env }
  })

const TestServices = servicesWith(UPSTREAMS.length)

const newOrg = () => randomUUID() as OrganizationId

const gateways = Effect.flatMap(GatewayStore, (pool) => pool.listGateways())
const gatewayAt = (upstream: string) =>
  Effect.map(gateways, (all) => all.find((g) => g.upstream === upstream))

describe("dead gateways (test layers)", () => {
  it.effect("the first gateway's handshake fails: it is rolled back and quarantined, and the start succeeds on the next one", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const world = yield* TestWorld
      yield* setFault(`handshake.handshake@${UPSTREAMS[0]}`, "fail")
      const org = newOrg()
      const started = yield* allocator.start(org)
      const dead = yield* gatewayAt(UPSTREAMS[0] ?? "")
      expect(started.gatewayId).not.toBe(dead?.gatewayId)
      expect(dead).toMatchObject({ health: "unhealthy", consecutiveFailures: 1, allocationId: null })
      expect(dead?.quarantinedUntil?.getTime()).toBe(QUARANTINE_MS)
      // The first attempt is its own allocation, fully rolled back.
      const attempts = [...(yield* Ref.get(world.allocations)).values()].filter((a) => a.organizationId === org)
      expect(attempts.map((a) => a.state).sort()).toEqual(["active", "rolled_back"])
      const first = attempts.find((a) => a.state === "rolled_back")
      const undone = (yield* Ref.get(world.journal)).filter((e) => e.allocationId === first?.allocationId && e.event === "undone")
      expect(undone.map((e) => e.step)).toEqual(undoOrderOf(stepsBefore("handshake")))
      expect((yield* Ref.get(world.served)).get(org)).toBe(started.allocationId)
      // The healthy gateway served: its health is known now.
      expect(yield* gatewayAt(UPSTREAMS[1] ?? "")).toMatchObject({ health: "healthy", consecutiveFailures: 0 })
    }).pipe(Effect.provide(TestServices)))

  it.effect("every attempt fails: the caller gets the last error, with every gateway it tried", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      yield* setFault("handshake.handshake", "fail")
      const error = yield* allocator.start(newOrg()).pipe(Effect.flip)
      expect(error._tag).toBe("StartFailed")
      if (error._tag !== "StartFailed") return
      expect(error.step).toBe("handshake")
      expect(error.attempts).toHaveLength(3)
      expect(new Set(error.attempts.map((a) => a.gatewayId)).size).toBe(3)
      expect(error.allocationId).toBe(error.attempts[2]?.allocationId)
      for (const attempt of error.attempts) {
        expect(reportOf(attempt.rollback)).toEqual(expected.rollback(undoOrderOf(stepsBefore("handshake"))))
      }
      // All three are set aside now: the next start has no gateway to try.
      const next = yield* allocator.start(newOrg()).pipe(Effect.flip)
      expect(next._tag).toBe("NoGatewayAvailable")
    }).pipe(Effect.provide(TestServices)))

  it.effect("a failure that is not the gateway's (dns) is not retried, and quarantines nothing", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      yield* setFault("dns.upsert", "fail")
      const error = yield* allocator.start(newOrg()).pipe(Effect.flip)
      expect(error._tag === "StartFailed" && error.step).toBe("dns")
      expect(error._tag === "StartFailed" && error.attempts).toHaveLength(1)
      expect((yield* calls).filter((c) => c === "pool.claim")).toHaveLength(1)
      expect((yield* gateways).every((g) => g.quarantinedUntil === null)).toBe(true)
    }).pipe(Effect.provide(TestServices)))

  it.effect("a quarantined gateway is not handed out until its quarantine ends; failures in a row double it", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const pool = yield* GatewayStore
      // Two gateways out of the way (allocated), so only gw-1 can be claimed.
      const dead = yield* gatewayAt(UPSTREAMS[0] ?? "")
      if (dead === undefined) return expect.fail("no gw-1")
      yield* pool.quarantine(dead.gatewayId, "test", QUARANTINE_MS)
      yield* allocator.start(newOrg())
      yield* allocator.start(newOrg())
      expect((yield* allocator.start(newOrg()).pipe(Effect.flip))._tag).toBe("NoGatewayAvailable")
      expect(yield* pool.stats()).toMatchObject({ total: 3, free: 1, available: 0, quarantined: 1 })
      yield* TestClock.adjust(Duration.millis(QUARANTINE_MS))
      const later = yield* allocator.start(newOrg())
      expect(later.gatewayId).toBe(dead.gatewayId)
    }).pipe(Effect.provide(TestServices)))

  it.effect("the health check brings back a gateway whose quarantine ran out only if it answers; an idle one that stops answering is set aside", () =>
    Effect.gen(function*() {
      const pool = yield* GatewayStore
      const checker = yield* GatewayHealth
      const [gw1, gw2] = yield* gateways
      if (gw1 === undefined || gw2 === undefined) return expect.fail("no gateways")
      yield* pool.quarantine(gw1.gatewayId, "test", QUARANTINE_MS)
      // Still in quarantine: left alone, even though it answers.
      yield* checker.runOnce
      expect((yield* gatewayAt(gw1.upstream))?.quarantinedUntil).not.toBe(null)
      // Run out, but still dead: quarantined again, for twice as long.
      yield* TestClock.adjust(Duration.millis(QUARANTINE_MS))
      yield* setFault(`handshake.checkHealth@${gw1.upstream}`, "fail")
      yield* checker.runOnce
      const again = yield* gatewayAt(gw1.upstream)
      expect(again?.consecutiveFailures).toBe(2)
      expect(again?.quarantinedUntil?.getTime()).toBe(QUARANTINE_MS + 2 * QUARANTINE_MS)
      // Fixed: back once the quarantine has run out.
      yield* TestClock.adjust(Duration.millis(2 * QUARANTINE_MS))
      yield* clearFaults
      // An idle healthy gateway that stops answering is set aside at once.
      yield* setFault(`handshake.checkHealth@${gw2.upstream}`, "fail")
      yield* checker.runOnce
      expect(yield* gatewayAt(gw1.upstream)).toMatchObject({ quarantinedUntil: null, health: "healthy" })
      expect(yield* gatewayAt(gw2.upstream)).toMatchObject({ health: "unhealthy", consecutiveFailures: 1 })
      expect((yield* gatewayAt(gw2.upstream))?.lastFailure).toMatch(/health check/)
    }).pipe(Effect.provide(TestServices)))

  it.effect("a large pool: a pass asks the next gateways a claim would take and a rotation of the rest, and every gateway within free / batch passes", () =>
    Effect.gen(function*() {
      const checker = yield* GatewayHealth
      const all = yield* gateways
      const [head, , , , , , , , , last] = all
      if (head === undefined || last === undefined) return expect.fail("no gateways")
      // Dead: the gateway a claim takes first, and the one a claim takes last.
      yield* setFault(`handshake.checkHealth@${head.upstream}`, "fail")
      yield* setFault(`handshake.checkHealth@${last.upstream}`, "fail")
      const first = yield* checker.runOnce
      // 2 on deck + 2 in rotation (fewer when they overlap), not the 10 of the pool.
      expect(Option.getOrThrow(first)).toBeGreaterThanOrEqual(2)
      expect(Option.getOrThrow(first)).toBeLessThanOrEqual(4)
      expect(yield* gatewayAt(head.upstream)).toMatchObject({ health: "unhealthy", consecutiveFailures: 1 })
      // The rotation reaches the last one within 10 / 2 passes.
      for (let pass = 2; pass <= 5; pass++) {
        const checked = yield* checker.runOnce
        expect(Option.getOrThrow(checked)).toBeLessThanOrEqual(4)
      }
      expect(yield* gatewayAt(last.upstream)).toMatchObject({ health: "unhealthy", consecutiveFailures: 1 })
      // Every other gateway answered and is healthy, none quarantined.
      const healthy = (yield* gateways).filter((g) => g.gatewayId !== head.gatewayId && g.gatewayId !== last.gatewayId)
      expect(healthy.every((g) => g.quarantinedUntil === null)).toBe(true)
    }).pipe(Effect.provide(servicesWith(10, { GATEWAY_HEALTH_BATCH: "2" }))))

  it.effect("a draining gateway keeps its org and is not handed out again; active again, it is", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const pool = yield* GatewayStore
      const org = newOrg()
      const started = yield* allocator.start(org)
      yield* pool.setGatewayState(started.gatewayId, "draining")
      expect((yield* Effect.flatMap(AllocationQueries, (queries) => queries.status(org))).state).toBe("active")
      yield* allocator.stop(org)
      const others = yield* Effect.forEach([newOrg(), newOrg()], (o) => allocator.start(o))
      expect(others.map((s) => s.gatewayId)).not.toContain(started.gatewayId)
      expect((yield* allocator.start(newOrg()).pipe(Effect.flip))._tag).toBe("NoGatewayAvailable")
      expect(yield* pool.stats()).toMatchObject({ free: 1, available: 0, draining: 1 })
      yield* pool.setGatewayState(started.gatewayId, "active")
      expect((yield* allocator.start(newOrg())).gatewayId).toBe(started.gatewayId)
    }).pipe(Effect.provide(TestServices)))

  it.effect("the third quarantine in a row tells the operator, once", () =>
    Effect.gen(function*() {
      const health = yield* GatewayHealth
      const world = yield* TestWorld
      const [gateway] = yield* gateways
      if (gateway === undefined) return expect.fail("no gateway")
      for (let i = 1; i <= 4; i++) yield* health.setAside(gateway.gatewayId, `failure ${i}`, "start")
      const notices = (yield* Ref.get(world.notices)).filter((notice) => notice.kind === "gateway_quarantined")
      expect(notices).toHaveLength(1)
      expect(notices[0]).toMatchObject({ gateway_id: gateway.gatewayId, message: expect.stringMatching(/3rd time in a row: failure 3/) })
    }).pipe(Effect.provide(TestServices)))
})
