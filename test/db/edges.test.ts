import { SqlClient } from "@effect/sql"
import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Redacted } from "effect"
import { randomUUID } from "node:crypto"
import { AllocationStore } from "../../src/allocation/AllocationStore.ts"
import { DatabaseLive } from "../../src/db/Database.ts"
import { type EdgeName, edgeStatus } from "../../src/domain/edge.ts"
import type { AllocationId, EdgeId, GatewayId, GatewayName, OrganizationId, Upstream } from "../../src/domain/ids.ts"
import { EdgeRegistry } from "../../src/edges/EdgeRegistry.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { configWithDataDir } from "../support/stack.ts"

// The edge registry as Postgres keeps it (database/0010_edges.sql, src/edges/EdgeRegistry.ts): a
// removal an edge owes holds its gateway out of every claim and out of `available` (the view
// gateways_claimable) until that edge settles it or is removed; a catch-up clears `behind` only
// from the latest mark; names and route API addresses are one edge's each.
const Registry = Layer.unwrapEffect(
  Effect.sync(() =>
    Layer.mergeAll(GatewayStore.Default, AllocationStore.Default, EdgeRegistry.Default).pipe(
      Layer.provideMerge(DatabaseLive),
      Layer.provide(configWithDataDir("ga-edges-"))
    )
  )
)

const RUNNER = "test-runner"

let edges = 0
/** A remote edge on its own private address. */
const addEdge = (name: string) =>
  Effect.flatMap(EdgeRegistry, (registry) => {
    edges += 1
    return registry.add({
      name: name as EdgeName,
      routeApiUrl: `http://10.0.1.${edges}:8089`,
      probeUrl: `http://10.0.1.${edges}:8080`
    })
  })

const claim = Effect.flatMap(AllocationStore, (allocations) =>
  allocations.claim(randomUUID() as AllocationId, randomUUID() as OrganizationId, RUNNER))

const release = (allocationId: AllocationId) =>
  Effect.flatMap(AllocationStore, (allocations) => allocations.release(allocationId, "released", RUNNER))

/** Whether the claim's view would hand the gateway out now. */
const claimable = (gatewayId: GatewayId) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql`select 1 from gateways_claimable where id = ${gatewayId}`).pipe(
    Effect.map((rows) => rows.length === 1)
  )

const stats = Effect.flatMap(GatewayStore, (pool) => pool.stats())

/**
 * One gateway, the only one in the pool for the test (each test removes what it added), claimed
 * once and released: `owing` edges owe the removal of that allocation's route.
 */
const servedOnce = (name: string, owing: ReadonlyArray<EdgeId>) =>
  Effect.gen(function*() {
    const pool = yield* GatewayStore
    const registry = yield* EdgeRegistry
    const gateway = yield* pool.addGateway(name as GatewayName, `${name}.test:9001` as Upstream)
    const claimed = yield* claim
    expect(claimed.gatewayId).toBe(gateway.gatewayId)
    for (const edgeId of owing) yield* registry.owe(edgeId, { allocationId: claimed.allocationId, generation: claimed.generation }, "edge down")
    // Owed while allocated: not counted as held (held counts free gateways only).
    expect((yield* stats).held).toBe(0)
    expect(yield* release(claimed.allocationId)).toBe(true)
    return { gateway, claimed }
  })

const removeGateway = (gatewayId: GatewayId) => Effect.flatMap(GatewayStore, (pool) => pool.removeGateway(gatewayId))

layer(Registry, { excludeTestServices: true, timeout: 120_000 })("edges in Postgres", (it) => {
  it.effect("a removal an edge owes keeps its gateway out of the claim and out of available; settling it returns the gateway", () =>
    Effect.gen(function*() {
      const registry = yield* EdgeRegistry
      const edge = yield* addEdge("owes")
      const { gateway, claimed } = yield* servedOnce("held-1", [edge.edgeId])

      expect(yield* claimable(gateway.gatewayId)).toBe(false)
      expect(yield* stats).toMatchObject({ total: 1, free: 1, available: 0, held: 1 })
      expect((yield* claim.pipe(Effect.flip))._tag).toBe("NoGatewayAvailable")
      expect(yield* registry.holds()).toEqual(new Map([[gateway.gatewayId, ["owes"]]]))
      expect(yield* registry.owedBy(edge.edgeId)).toEqual([{
        edgeId: edge.edgeId,
        allocationId: claimed.allocationId,
        organizationId: expect.any(String),
        generation: claimed.generation,
        gatewayId: gateway.gatewayId,
        reason: "edge down",
        since: expect.any(Date)
      }])

      // Settling another allocation changes nothing; settling this one frees the gateway.
      yield* registry.settle(edge.edgeId, [randomUUID() as AllocationId])
      expect((yield* stats).held).toBe(1)
      yield* registry.settle(edge.edgeId, [claimed.allocationId])
      expect(yield* registry.owedBy(edge.edgeId)).toEqual([])
      expect(yield* registry.holds()).toEqual(new Map())
      expect(yield* stats).toMatchObject({ free: 1, available: 1, held: 0 })
      const next = yield* claim
      expect(next.gatewayId).toBe(gateway.gatewayId)
      yield* release(next.allocationId)
      yield* registry.remove(edge.edgeId)
      yield* removeGateway(gateway.gatewayId)
    }))

  it.effect("removing the edge drops what it owed: its gateways return to the pool; another edge's hold stays until settled", () =>
    Effect.gen(function*() {
      const registry = yield* EdgeRegistry
      const first = yield* addEdge("first")
      const second = yield* addEdge("second")
      const { gateway, claimed } = yield* servedOnce("held-2", [second.edgeId, first.edgeId])

      // One gateway held by two edges: counted once, both named.
      expect(yield* stats).toMatchObject({ available: 0, held: 1 })
      expect(yield* registry.holds()).toEqual(new Map([[gateway.gatewayId, ["first", "second"]]]))

      expect(yield* registry.remove(first.edgeId)).toBe(1)
      expect((yield* registry.get(first.edgeId).pipe(Effect.flip))._tag).toBe("EdgeNotFound")
      expect(yield* registry.holds()).toEqual(new Map([[gateway.gatewayId, ["second"]]]))
      expect(yield* claimable(gateway.gatewayId)).toBe(false)

      expect(yield* registry.remove(second.edgeId)).toBe(1)
      expect(yield* stats).toMatchObject({ available: 1, held: 0 })
      expect(yield* claimable(gateway.gatewayId)).toBe(true)
      expect((yield* registry.remove(second.edgeId).pipe(Effect.flip))._tag).toBe("EdgeNotFound")
      expect(claimed.gatewayId).toBe(gateway.gatewayId)
      yield* removeGateway(gateway.gatewayId)
    }))

  it.effect("an edge that owes two allocations of one gateway is named once; removing the gateway drops its owed rows", () =>
    Effect.gen(function*() {
      const pool = yield* GatewayStore
      const registry = yield* EdgeRegistry
      const edge = yield* addEdge("twice")
      const gateway = yield* pool.addGateway("held-3" as GatewayName, "held-3.test:9001" as Upstream)
      const earlier = yield* claim
      yield* release(earlier.allocationId)
      const later = yield* claim
      expect([earlier.gatewayId, later.gatewayId]).toEqual([gateway.gatewayId, gateway.gatewayId])
      yield* registry.owe(edge.edgeId, { allocationId: earlier.allocationId, generation: earlier.generation }, "missed")
      yield* registry.owe(edge.edgeId, { allocationId: later.allocationId, generation: later.generation }, "missed")
      // Owed again: one row per (edge, allocation).
      yield* registry.owe(edge.edgeId, { allocationId: later.allocationId, generation: later.generation }, "missed again")
      yield* release(later.allocationId)

      expect((yield* registry.owedBy(edge.edgeId)).map((owed) => owed.reason)).toEqual(["missed", "missed"])
      expect(yield* registry.holds()).toEqual(new Map([[gateway.gatewayId, ["twice"]]]))
      expect((yield* stats).held).toBe(1)

      yield* removeGateway(gateway.gatewayId)
      expect(yield* registry.owedBy(edge.edgeId)).toEqual([])
      expect((yield* stats).held).toBe(0)
      yield* registry.remove(edge.edgeId)
    }))

  it.effect("markCaughtUp clears behind only when no mark came since the catch-up began", () =>
    Effect.gen(function*() {
      const registry = yield* EdgeRegistry
      const edge = yield* addEdge("catching-up")
      expect(edge).toMatchObject({ behind: true, lastSeen: null, state: "active" })
      const markOf = Effect.map(registry.endpoints(), (all) => all.find((endpoint) => endpoint.edgeId === edge.edgeId)?.behindMark ?? -1)
      const from = yield* markOf

      // A change it missed while the catch-up ran: the catch-up does not cover it.
      yield* registry.markBehind(edge.edgeId, "write refused: HTTP 503")
      expect(yield* markOf).toBe(from + 1)
      expect(yield* registry.markCaughtUp(edge.edgeId, { fromMark: from, bootId: "boot-1", routeCount: 5 })).toBe(false)
      expect(yield* registry.get(edge.edgeId)).toMatchObject({ behind: true, lastError: "write refused: HTTP 503", bootId: null })

      expect(yield* registry.markCaughtUp(edge.edgeId, { fromMark: from + 1, bootId: "boot-1", routeCount: 5 })).toBe(true)
      const caughtUp = yield* registry.get(edge.edgeId)
      expect(caughtUp).toMatchObject({ behind: false, lastError: null, bootId: "boot-1", routeCount: 5, lastSeen: expect.any(Date) })
      expect(edgeStatus(caughtUp, Date.now())).toBe("ready")

      yield* registry.acknowledge(edge.edgeId, 9)
      yield* registry.acknowledge(edge.edgeId, 7)
      expect((yield* registry.get(edge.edgeId)).ackedGeneration).toBe(9)

      yield* registry.markBehind(edge.edgeId, "table came back empty")
      expect(edgeStatus(yield* registry.get(edge.edgeId), Date.now())).toBe("behind")
      expect(yield* registry.markCaughtUp(edge.edgeId, { fromMark: from + 1, bootId: "boot-2", routeCount: 0 })).toBe(false)
      yield* registry.remove(edge.edgeId)
    }))

  it.effect("add refuses a taken name or route API address (concurrent adds of one name too); the local edge is not removed", () =>
    Effect.gen(function*() {
      const registry = yield* EdgeRegistry
      const edge = yield* registry.add({ name: "unique" as EdgeName, routeApiUrl: "http://10.0.2.1:8089", probeUrl: "http://10.0.2.1:8080" })
      const sameName = yield* registry.add({ name: "unique" as EdgeName, routeApiUrl: "http://10.0.2.2:8089", probeUrl: "http://10.0.2.2:8080" })
        .pipe(Effect.flip)
      expect(sameName._tag).toBe("EdgeNameTaken")
      const sameAddress = yield* registry.add({ name: "other" as EdgeName, routeApiUrl: edge.routeApiUrl, probeUrl: "http://10.0.2.3:8080" })
        .pipe(Effect.flip)
      expect(sameAddress._tag).toBe("EdgeAddressTaken")

      const racing = yield* Effect.all(
        [1, 2, 3].map((i) =>
          Effect.either(registry.add({ name: "racing" as EdgeName, routeApiUrl: `http://10.0.3.${i}:8089`, probeUrl: `http://10.0.3.${i}:8080` }))
        ),
        { concurrency: "unbounded" }
      )
      expect(racing.filter((result) => result._tag === "Right")).toHaveLength(1)
      expect(racing.flatMap((result) => result._tag === "Left" ? [result.left._tag] : [])).toEqual(["EdgeNameTaken", "EdgeNameTaken"])

      // Replicas sharing one NGINX_CONF_DIR start together: each registers the one local edge.
      const localId = randomUUID() as EdgeId
      const local = {
        edgeId: localId,
        routeApiUrl: "http://127.0.0.1:8089",
        probeUrl: "http://127.0.0.1:80",
        secret: Redacted.make("feedface")
      }
      const together = yield* Effect.all([1, 2, 3, 4].map(() => Effect.either(registry.registerLocal(local))), { concurrency: "unbounded" })
      expect(together.filter((result) => result._tag === "Left")).toEqual([])
      expect((yield* registry.add({ name: "local" as EdgeName, routeApiUrl: "http://10.0.2.9:8089", probeUrl: "http://10.0.2.9:8080" })
        .pipe(Effect.flip))._tag).toBe("EdgeNameTaken")
      expect((yield* registry.remove(localId).pipe(Effect.flip))._tag).toBe("EdgeIsLocal")
      const listed = yield* registry.list()
      expect(listed[0]).toMatchObject({ edgeId: localId, name: "local", local: true })
      expect(listed.map((e) => e.name).sort()).toEqual(["local", "racing", "unique"])
    }))
})
