import { SqlClient } from "@effect/sql"
import { expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { randomUUID } from "node:crypto"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import path from "node:path"
import { DatabaseLive } from "../../src/db/Database.ts"
import { QUARANTINE_CAP_MS } from "../../src/domain/gateway.ts"
import type { AllocationId, GatewayName, OrganizationId, Upstream } from "../../src/domain/ids.ts"
import { GatewayPool } from "../../src/pool/GatewayPool.ts"
import { configFrom } from "../support/stack.ts"

// The quarantine and the claim as Postgres does them: the backoff doubles and caps, and a claim
// hands out only an available gateway, least recently allocated first.
const Pool = Layer.unwrapEffect(
  Effect.sync(() =>
    GatewayPool.Default.pipe(
      Layer.provideMerge(DatabaseLive),
      Layer.provide(configFrom({ DATA_DIR: mkdtempSync(path.join(tmpdir(), "ga-quarantine-")) }))
    )
  )
)

const secondsLeft = (until: Date) => Math.round((until.getTime() - Date.now()) / 1000)

layer(Pool, { excludeTestServices: true, timeout: 120_000 })("gateway quarantine in Postgres", (it) => {
  it.effect("each failure in a row doubles the quarantine, up to 10 minutes; a served start starts it over", () =>
    Effect.gen(function*() {
      const pool = yield* GatewayPool
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
      const pool = yield* GatewayPool
      const sql = yield* SqlClient.SqlClient
      const [a, b, c] = yield* Effect.forEach(["lru-a", "lru-b", "lru-c"], (name, i) =>
        pool.addGateway(name as GatewayName, `lru-${i}.test:9001` as Upstream))
      if (a === undefined || b === undefined || c === undefined) return expect.fail("gateways")
      const claim = () => pool.claim(randomUUID() as AllocationId, randomUUID() as OrganizationId, "test-runner")
      const release = (allocationId: AllocationId) => pool.release(allocationId, "released", "test-runner")
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
