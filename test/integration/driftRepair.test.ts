// Drift repair against the real stack (Postgres, PowerDNS, nginx with the Lua module), through the
// service's own layers: it compares the whole route with Postgres and puts back what differs,
// even an entry forged through the route API with a greater generation; and it deletes an orphan
// DNS record only while holding the org's slot, so a claim of the org waits for the delete.
import { expect, layer } from "@effect/vitest"
import { Deferred, Effect, Fiber, Layer, Option } from "effect"
import { randomUUID } from "node:crypto"
import { readFile, writeFile } from "node:fs/promises"
import { Allocator } from "../../src/allocation/Allocator.ts"
import { Reconciler } from "../../src/allocation/Reconciler.ts"
import { Dns } from "../../src/dns/Dns.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { AllocationStore } from "../../src/allocation/AllocationStore.ts"
import { edgeRouteOf, openDb, routeApi, routeFileOf } from "../support/invariants.ts"
import { pollUntil } from "../support/poll.ts"
import { dnsRecordExists, expectConsistent, gatewayName, nginxRoutesSteadily } from "../support/probes.ts"
import { ServicesLive, Stack, StackLive } from "../support/stack.ts"

const newOrg = () => randomUUID() as OrganizationId
const runOnce = Effect.flatMap(Reconciler, (reconciler) => reconciler.runOnce)

/** Stops the org if a test left it running (a failed assertion must not leak a gateway). */
const stopQuietly = (org: OrganizationId) => Effect.flatMap(Allocator, (allocator) => allocator.stop(org)).pipe(Effect.ignore)

layer(
  ServicesLive({ RECONCILE_INTERVAL_MS: "3600000" }).pipe(Layer.provideMerge(StackLive({ routing: "lua" }))),
  { timeout: 120_000, excludeTestServices: true }
)("drift repair against the real stack (NGINX_ROUTING=lua)", (it) => {
  it.effect("a route forged through the route API (another upstream, a greater generation) is put back by one pass", () => {
    const org = newOrg()
    return Effect.gen(function*() {
      const stack = yield* Stack
      const allocator = yield* Allocator
      const started = yield* allocator.start(org)
      const live = yield* Effect.flatMap(AllocationStore, (allocations) => allocations.findLive(org)).pipe(Effect.flatMap(Effect.orDieWith(() => "no live allocation")))
      const own = `${org} ${live.upstream} ${live.allocationId} ${live.generation}\n`
      expect(yield* edgeRouteOf(stack, org)).toBe(own)

      // The live allocation's id, another port, a generation far above the allocation's.
      const forged = yield* Effect.orDie(
        routeApi(stack, "PUT", `/routes/${org}?upstream=127.0.0.1:9999&allocation=${live.allocationId}&generation=999999`)
      )
      expect(forged.status).toBe(200)
      expect(yield* edgeRouteOf(stack, org)).toBe(`${org} 127.0.0.1:9999 ${live.allocationId} 999999\n`)

      const summary = yield* runOnce
      expect(summary).toMatchObject({ routesRepaired: 1, orphanRoutesRemoved: 0 })
      expect(yield* edgeRouteOf(stack, org)).toBe(own)
      expect(yield* nginxRoutesSteadily(stack, org)).toBe(yield* gatewayName(started.gatewayId))

      // Another allocation's id with a greater generation: replaced in one pass too, not removed
      // as an orphan (which would have fenced the live allocation out).
      yield* Effect.orDie(routeApi(stack, "PUT", `/routes/${org}?upstream=127.0.0.1:9999&allocation=${randomUUID()}&generation=999999`))
      expect(yield* runOnce).toMatchObject({ routesRepaired: 1, orphanRoutesRemoved: 0 })
      expect(yield* edgeRouteOf(stack, org)).toBe(own)

      // Nothing left to repair.
      expect(yield* runOnce).toMatchObject({ routesRepaired: 0, orphanRoutesRemoved: 0, recordsRepaired: 0, orphanRecordsRemoved: 0 })
      yield* expectConsistent(stack, org, "active")
      yield* allocator.stop(org)
      yield* expectConsistent(stack, org, "absent")
    }).pipe(Effect.ensuring(stopQuietly(org)))
  })

  it.effect("a claim of an org waits while drift repair holds the org's slot (Postgres), and no slot is had while the org is live", () => {
    const org = newOrg()
    return Effect.gen(function*() {
      const stack = yield* Stack
      const allocator = yield* Allocator
      const allocations = yield* AllocationStore
      const holding = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const slot = yield* Effect.fork(allocations.whileUnclaimed(org, Deferred.succeed(holding, undefined).pipe(Effect.zipRight(Deferred.await(release)), Effect.as("done"))))
      yield* Deferred.await(holding)
      const start = yield* Effect.fork(allocator.start(org))
      // The claim's insert waits for the slot's transaction (a lock wait in Postgres): nothing claimed yet.
      const db = yield* openDb(stack.env["DATABASE_URL"] ?? "")
      const lockWaits = yield* pollUntil(
        db.query<{ n: number }>(
          "select count(*)::int as n from pg_stat_activity where application_name = 'gateway-allocator' and wait_event_type = 'Lock'"
        ),
        (rows) => (rows[0]?.n ?? 0) > 0,
        { withinMs: 10_000 }
      )
      expect(lockWaits[0]?.n).toBeGreaterThan(0)
      expect(Option.isNone(yield* Fiber.poll(start))).toBe(true)
      expect(Option.isNone(yield* allocations.findLive(org))).toBe(true)
      yield* Deferred.succeed(release, undefined)
      expect(yield* Fiber.join(slot)).toEqual(Option.some("done"))
      const started = yield* Fiber.join(start)
      expect(started.reused).toBe(false)
      // The slot's row was never committed: the org has one live allocation, the start's.
      expect((yield* allocations.liveAllocations()).filter((a) => a.organizationId === org).map((a) => a.allocationId)).toEqual([started.allocationId])
      // With a live allocation, the slot is not had and the effect does not run.
      expect(yield* allocations.whileUnclaimed(org, Effect.dieMessage("must not run"))).toEqual(Option.none())
      yield* expectConsistent(stack, org, "active")
      yield* allocator.stop(org)
      yield* expectConsistent(stack, org, "absent")
    }).pipe(Effect.scoped, Effect.ensuring(stopQuietly(org)))
  })

  it.effect("an orphan record (PowerDNS) is deleted by one pass; an active org's record is kept", () => {
    const active = newOrg()
    const orphan = newOrg()
    return Effect.gen(function*() {
      const stack = yield* Stack
      const allocator = yield* Allocator
      yield* allocator.start(active)
      yield* Effect.flatMap(Dns, (dns) => dns.upsert(orphan))
      expect(yield* dnsRecordExists(stack, orphan)).toBe(true)
      expect(yield* runOnce).toMatchObject({ orphanRecordsRemoved: 1, recordsRepaired: 0 })
      expect(yield* dnsRecordExists(stack, orphan)).toBe(false)
      yield* expectConsistent(stack, active, "active")
      yield* allocator.stop(active)
    }).pipe(Effect.ensuring(stopQuietly(active)))
  })
})

layer(
  ServicesLive({ RECONCILE_INTERVAL_MS: "3600000" }).pipe(Layer.provideMerge(StackLive({ routing: "reload" }))),
  { timeout: 120_000, excludeTestServices: true }
)("drift repair against the real stack (NGINX_ROUTING=reload)", (it) => {
  it.effect("a route file pointing at another upstream, or missing its generation, is written back by one pass", () => {
    const org = newOrg()
    return Effect.gen(function*() {
      const stack = yield* Stack
      const allocator = yield* Allocator
      const started = yield* allocator.start(org)
      const file = routeFileOf(stack, org)
      const own = yield* Effect.promise(() => readFile(file, "utf8"))
      const live = yield* Effect.flatMap(AllocationStore, (allocations) => allocations.findLive(org)).pipe(Effect.flatMap(Effect.orDieWith(() => "no live allocation")))
      expect(own).toContain(`"${live.upstream} ${live.allocationId}";`)
      // Someone edits the file: another port. Then a file without its generation (as older versions wrote).
      yield* Effect.promise(() => writeFile(file, own.replace(live.upstream, "127.0.0.1:9999")))
      expect(yield* runOnce).toMatchObject({ routesRepaired: 1, orphanRoutesRemoved: 0 })
      expect(yield* Effect.promise(() => readFile(file, "utf8"))).toBe(own)
      expect(yield* nginxRoutesSteadily(stack, org)).toBe(yield* gatewayName(started.gatewayId))
      yield* Effect.promise(() => writeFile(file, own.replace(/^# generation \d+\n/m, "")))
      expect(yield* runOnce).toMatchObject({ routesRepaired: 1, orphanRoutesRemoved: 0 })
      expect(yield* Effect.promise(() => readFile(file, "utf8"))).toBe(own)
      expect(yield* runOnce).toMatchObject({ routesRepaired: 0, orphanRoutesRemoved: 0 })
      yield* allocator.stop(org)
      yield* expectConsistent(stack, org, "absent")
    }).pipe(Effect.ensuring(stopQuietly(org)))
  })
})
