// Dead gateways against the real stack: a gateway that refuses its handshake is set aside and
// starts go on with the others, on every replica; fixed, it comes back.
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { allocationsOf, openDb } from "../support/invariants.ts"
import { registerGateways, request, startGateway, startServer, stopGateway } from "../support/server.ts"
import { Stack, StackLive } from "../support/stack.ts"

const QUARANTINE_MS = 2000
const HEALTH_INTERVAL_MS = 500
const env = {
  START_ATTEMPTS: "3",
  GATEWAY_QUARANTINE_MS: String(QUARANTINE_MS),
  GATEWAY_HEALTH_INTERVAL_MS: String(HEALTH_INTERVAL_MS)
}

interface PoolGateway {
  readonly gateway_id: string
  readonly name: string
  readonly state: string
  readonly health: string
  readonly quarantined_until: string | null
  readonly last_failure: string | null
}

layer(StackLive({ gateways: 4 }), { timeout: 180_000, excludeTestServices: true })("dead gateways (real stack)", (it) => {
  it.effect("one gateway of four refuses its handshake: every start succeeds on the others, on both replicas; fixed, it comes back", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const db = yield* openDb(stack.env["DATABASE_URL"] ?? "")
      const dead = stack.gateways[0]
      if (dead === undefined) return expect.fail("no gateways")
      const [a, b] = yield* Effect.all([
        startServer(stack, { name: "gw-a", env }),
        startServer(stack, { name: "gw-b", env })
      ], { concurrency: 2 })
      const ids = yield* registerGateways(a, stack)
      const deadId = ids.get(dead.name)
      yield* dead.setBehaviour({ handshake: "fail" })

      // The oldest gateway is claimed first: the first start tries it, sets it aside, goes on.
      const orgs = Array.from({ length: 6 }, () => randomUUID())
      for (const [i, org] of orgs.entries()) {
        const answer = yield* startGateway(i % 2 === 0 ? a : b, org)
        expect(answer.status, answer.text).toBe(200)
        expect(answer.json.gateway_id).not.toBe(deadId)
        if (i === 2) {
          // Three active orgs on the three healthy gateways: stop them to make room.
          for (const done of orgs.slice(0, 3)) expect((yield* stopGateway(i % 2 === 0 ? b : a, done)).status).toBe(200)
        }
      }
      const firstOrgAllocations = yield* allocationsOf(db, orgs[0] ?? "")
      expect(firstOrgAllocations.map((row) => row.gateway_id)).toContain(deadId)
      // Both replicas honoured the one quarantine: the dead gateway was tried once, by the first start.
      const onDead = yield* db.query<{ n: number }>(
        "select count(*)::int as n from allocations where gateway_id = $1",
        [deadId]
      )
      expect(onDead[0]?.n).toBe(1)

      const pool = yield* request(b, "GET", "/pool")
      const listed = (pool.json.gateways as Array<PoolGateway>).find((g) => g.gateway_id === deadId)
      expect(listed).toMatchObject({ state: "active", health: "unhealthy" })
      expect(listed?.last_failure).toMatch(/HTTP 500/)
      expect(pool.json.free + pool.json.allocated).toBe(pool.json.total)

      // Fixed: back within one health interval after its quarantine ends.
      yield* dead.setBehaviour({ handshake: "ok" })
      const fixedAt = Date.now()
      const back = yield* request(a, "GET", "/pool").pipe(
        Effect.map((answer) => (answer.json.gateways as Array<PoolGateway>).find((g) => g.gateway_id === deadId)),
        Effect.filterOrFail((g) => g?.quarantined_until === null && g.health === "healthy"),
        Effect.retry(Schedule.spaced(Duration.millis(100))),
        Effect.timeout(Duration.millis(QUARANTINE_MS + 3 * HEALTH_INTERVAL_MS + 2000))
      )
      expect(back?.health).toBe("healthy")
      expect(Date.now() - fixedAt).toBeLessThan(QUARANTINE_MS + 3 * HEALTH_INTERVAL_MS + 2000)
      // Every gateway free: the one allocated longest ago, the fixed one, is handed out next.
      for (const org of orgs.slice(3)) expect((yield* stopGateway(a, org)).status).toBe(200)
      const comeback = randomUUID()
      const again = yield* startGateway(b, comeback)
      expect(again.status, again.text).toBe(200)
      expect(again.json.gateway_id).toBe(deadId)
      expect((yield* stopGateway(a, comeback)).status).toBe(200)
    }).pipe(Effect.scoped))

  it.effect("every gateway refuses: the 502 names every attempt; a drained gateway is not handed out", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const server = yield* startServer(stack, { name: "gw-all", env: { ...env, START_ATTEMPTS: "2", GATEWAY_QUARANTINE_MS: "1" } })
      const ids = yield* registerGateways(server, stack)
      for (const gateway of stack.gateways) yield* gateway.setBehaviour({ handshake: "fail" })
      const answer = yield* startGateway(server, randomUUID())
      for (const gateway of stack.gateways) yield* gateway.setBehaviour({ handshake: "ok" })
      expect(answer.status, answer.text).toBe(502)
      expect(answer.json).toMatchObject({ _tag: "StepFailed", step: "handshake" })
      expect(answer.json.attempts).toHaveLength(2)
      const tried = (answer.json.attempts as Array<{ gateway_id: string; allocation_id: string; step: string }>)
      expect(new Set(tried.map((t) => t.gateway_id)).size).toBe(2)
      expect(tried.every((t) => t.step === "handshake")).toBe(true)
      expect(answer.json.allocation_id).toBe(tried[1]?.allocation_id)

      // Drain all but one: starts land on that one only, and drained gateways keep nothing.
      const names = [...ids.keys()]
      const keep = names[0]
      for (const name of names.slice(1)) {
        const drained = yield* request(server, "PATCH", `/pool/gateways/${ids.get(name)}`, { body: { state: "draining" } })
        expect(drained.status, drained.text).toBe(200)
        expect(drained.json.state).toBe("draining")
      }
      const started = yield* startGateway(server, randomUUID())
      expect(started.status, started.text).toBe(200)
      expect(started.json.gateway_id).toBe(ids.get(keep ?? ""))
      const full = yield* startGateway(server, randomUUID())
      expect(full.status).toBe(503)
      const pool = yield* request(server, "GET", "/pool")
      expect(pool.json).toMatchObject({ draining: names.length - 1, available: 0 })
      const bad = yield* request(server, "PATCH", `/pool/gateways/${ids.get(keep ?? "")}`, { body: { state: "asleep" } })
      expect(bad.status).toBe(400)
      for (const name of names.slice(1)) {
        yield* request(server, "PATCH", `/pool/gateways/${ids.get(name)}`, { body: { state: "active" } })
      }
    }).pipe(Effect.scoped))
})
