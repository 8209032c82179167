import { SqlClient } from "@effect/sql"
import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Option } from "effect"
import { randomUUID } from "node:crypto"
import { DatabaseLive } from "../../src/db/Database.ts"
import { QUARANTINE_CAP_MS } from "../../src/domain/gateway.ts"
import type { AllocationId, GatewayId, GatewayName, OrganizationId, Upstream } from "../../src/domain/ids.ts"
import { AllocationStore } from "../../src/allocation/AllocationStore.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { configWithDataDir } from "../support/stack.ts"

// The quarantine and the claim as Postgres does them: the backoff doubles and caps, and a claim
// hands out only an available gateway, least recently allocated first.
const Pool = Layer.unwrapEffect(
  Effect.sync(() =>
    Layer.merge(GatewayStore.Default, AllocationStore.Default).pipe(
      Layer.provideMerge(DatabaseLive),
      Layer.provide(configWithDataDir("ga-quarantine-"))
    )
  )
)

const secondsLeft = (until: Date) => Math.round((until.getTime() - Date.now()) / 1000)

layer(Pool, { excludeTestServices: true, timeout: 120_000 })("gateway quarantine in Postgres", (it) => {
  it.effect("each failure in a row doubles the quarantine, up to 10 minutes; a served start starts it over", () =>
    Effect.gen(function*() {
      const pool = yield* GatewayStore
      const gateway = yield* pool.addGateway("backoff" as GatewayName, "backoff.test:9001" as Upstream)
      const seen: Array<number> = []
      for (let i = 0; i < 7; i++) {
        const result = yield* pool.quarantine(gateway.gatewayId, `failure ${i}`, 30_000)
        if (result._tag === "None") return expect.fail("not quarantined")
        expect(result.value.consecutiveFailures).toBe(i + 1)
        seen.push(secondsLeft(result.value.quarantinedUntil))
      }
      expect(seen).toEqual([30, 60, 120, 240, 480, QUARANTINE_CAP_MS / 1000, QUARANTINE_CAP_MS / 1000])
      const listed = (yield* pool.listGateways()).find((g) => g.gatewayId === gateway.gatewayId)
      expect(listed).toMatchObject({ health: "unhealthy", consecutiveFailures: 7, lastFailure: "failure 6" })
      // A health check that passes ends the quarantine but keeps the count; a served start resets it.
      yield* pool.markHealthy(gateway.gatewayId, false)
      expect((yield* pool.listGateways()).find((g) => g.gatewayId === gateway.gatewayId))
        .toMatchObject({ health: "healthy", quarantinedUntil: null, consecutiveFailures: 7 })
      yield* pool.markHealthy(gateway.gatewayId, true)
      expect((yield* pool.listGateways()).find((g) => g.gatewayId === gateway.gatewayId)?.consecutiveFailures).toBe(0)
      yield* pool.removeGateway(gateway.gatewayId)
    }))

  it.effect("a claim skips quarantined and draining gateways and takes the least recently allocated", () =>
    Effect.gen(function*() {
      const pool = yield* GatewayStore
      const allocations = yield* AllocationStore
      const sql = yield* SqlClient.SqlClient
      const [a, b, c] = yield* Effect.forEach(["lru-a", "lru-b", "lru-c"], (name, i) =>
        pool.addGateway(name as GatewayName, `lru-${i}.test:9001` as Upstream))
      if (a === undefined || b === undefined || c === undefined) return expect.fail("gateways")
      const claim = () => allocations.claim(randomUUID() as AllocationId, randomUUID() as OrganizationId, "test-runner")
      const release = (allocationId: AllocationId) => allocations.release(allocationId, "released", "test-runner")
      // a, then b, then c: each claimed once, in order (never allocated ones first, then by age).
      const first = yield* claim()
      const second = yield* claim()
      const third = yield* claim()
      expect([first.gatewayId, second.gatewayId, third.gatewayId]).toEqual([a.gatewayId, b.gatewayId, c.gatewayId])
      for (const claimed of [third, first, second]) {
        yield* sql`select pg_sleep(0.01)`
        yield* release(claimed.allocationId)
      }
      // All free again; a was allocated longest ago, but it is quarantined and b is draining: c it is.
      yield* pool.quarantine(a.gatewayId, "dead", 60_000)
      yield* pool.setGatewayState(b.gatewayId, "draining")
      const next = yield* claim()
      expect(next.gatewayId).toBe(c.gatewayId)
      const stats = yield* pool.stats()
      expect(stats).toMatchObject({ available: 0, quarantined: 1, draining: 1 })
      expect(stats.free + stats.allocated).toBe(stats.total)
      expect((yield* claim().pipe(Effect.flip))._tag).toBe("NoGatewayAvailable")
    }))
})

layer(Pool, { excludeTestServices: true, timeout: 120_000 })("the gateways a health pass asks, in Postgres", (it) => {
  it.effect("the next ones a claim would take, those whose quarantine ran out, and a rotation by id that covers every free one; never an allocated one", () =>
    Effect.gen(function*() {
      const pool = yield* GatewayStore
      const allocations = yield* AllocationStore
      const sql = yield* SqlClient.SqlClient
      const all = yield* Effect.forEach([1, 2, 3, 4, 5, 6], (i) => pool.addGateway(`hc-${i}` as GatewayName, `hc-${i}.test:9001` as Upstream))
      const [g1, g2, g3, g4] = all
      if (g1 === undefined || g2 === undefined || g3 === undefined || g4 === undefined) return expect.fail("gateways")
      // g1 served a start (a claim takes it last now); g2's quarantine ran out; g4 is in quarantine.
      const claimed = yield* allocations.claim(randomUUID() as AllocationId, randomUUID() as OrganizationId, "test-runner")
      expect(claimed.gatewayId).toBe(g1.gatewayId)
      yield* allocations.release(claimed.allocationId, "released", "test-runner")
      yield* pool.quarantine(g2.gatewayId, "dead", 60_000)
      yield* sql`update gateways set quarantined_until = now() - interval '1 second' where id = ${g2.gatewayId}`
      yield* pool.quarantine(g4.gatewayId, "dead", 60_000)

      const first = yield* pool.healthCandidates(2, Option.none())
      const ids = (candidates: ReadonlyArray<{ readonly gatewayId: GatewayId }>) => candidates.map((g) => g.gatewayId)
      // On deck: g2 (out of quarantine, never allocated) and g3; g2 is also due.
      expect(ids(first.candidates)).toEqual(expect.arrayContaining([g2.gatewayId, g3.gatewayId]))
      expect(first.candidates.length).toBeLessThanOrEqual(4)
      expect(Option.isSome(first.rotationEnd)).toBe(true)

      // The rotation goes on from where it ended and reaches every free gateway, then starts over.
      const rotated = new Set<GatewayId>()
      let cursor = Option.none<GatewayId>()
      for (let pass = 0; pass < 4; pass++) {
        const next = yield* pool.healthCandidates(2, cursor)
        for (const id of ids(next.candidates)) rotated.add(id)
        cursor = next.rotationEnd
        if (Option.isNone(cursor)) break
      }
      expect(Option.isNone(cursor)).toBe(true)
      expect([...rotated].sort()).toEqual(ids(all).sort())

      // An allocated gateway is never asked: its org's traffic is its own.
      const taken = yield* allocations.claim(randomUUID() as AllocationId, randomUUID() as OrganizationId, "test-runner")
      for (const after of [Option.none<GatewayId>(), Option.some(g1.gatewayId)]) {
        expect(ids((yield* pool.healthCandidates(10, after)).candidates)).not.toContain(taken.gatewayId)
      }
    }))
})
