// The paths only a route table can take, over the in-memory outside systems with nginx in lua
// mode's shape (a write is live when it returns; a restart empties the table under a new boot id):
// a start whose route vanished between its write and its proof writes it again and completes;
// the restorer pushes every active route into a table that came back empty.
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Layer, Ref, TestClock } from "effect"
import { randomUUID } from "node:crypto"
import { Allocator } from "../../src/allocation/Allocator.ts"
import { makeServices } from "../../src/app.ts"
import type { GatewayName, OrganizationId, Upstream } from "../../src/domain/ids.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { configFrom } from "../support/stack.ts"
import { calls, gate, makeOutsideTest, restartNginx, TestWorld } from "../support/TestLayers.ts"

const TestServices = Layer.effectDiscard(
  Effect.flatMap(GatewayStore, (pool) =>
    Effect.forEach(["gw-1", "gw-2"], (name, i) => pool.addGateway(name as GatewayName, `127.0.0.1:${9001 + i}` as Upstream)))
).pipe(
  Layer.provideMerge(makeServices(makeOutsideTest("lua"))),
  Layer.provide(configFrom({
    STEP_TIMEOUT_MS: "1000",
    UNDO_TIMEOUT_MS: "500",
    START_ATTEMPTS: "1",
    GATEWAY_HEALTH_INTERVAL_MS: "3600000",
    RECONCILE_INTERVAL_MS: "3600000"
  }))
)

const newOrg = () => randomUUID() as OrganizationId

const untilCalled = (operation: string) =>
  calls.pipe(Effect.repeat({ until: (made) => made.includes(operation) }), Effect.zipLeft(Effect.yieldNow()))

describe("routes in a table (lua-shaped test layers)", () => {
  it.effect("nginx restarts between a start's route write and its proof: the start writes its route again and completes", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const world = yield* TestWorld
      const org = newOrg()
      const open = yield* gate("nginx.awaitServed")
      const start = yield* Effect.fork(allocator.start(org))
      yield* untilCalled("nginx.awaitServed")
      // The write landed; before the proof, nginx restarts and its table comes back empty.
      yield* restartNginx
      yield* open
      const started = yield* Fiber.join(start)
      expect((yield* calls).filter((call) => call === "nginx.writeRoute")).toHaveLength(2)
      expect((yield* Ref.get(world.served)).get(org)).toBe(started.allocationId)
      // No rollback: the second write is the same allocation's, under the same undo.
      expect((yield* Ref.get(world.journal)).filter((e) => e.event.startsWith("undo"))).toEqual([])
    }).pipe(Effect.provide(TestServices)))

  it.effect("a table that came back empty gets every active route back from the restorer, and is ready again", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const world = yield* TestWorld
      const first = yield* allocator.start(newOrg())
      const second = yield* allocator.start(newOrg())
      yield* restartNginx
      expect((yield* Ref.get(world.served)).size).toBe(0)
      // The restorer reads the table's state every 250 ms.
      yield* TestClock.adjust(Duration.millis(300))
      yield* Effect.yieldNow()
      const served = yield* Ref.get(world.served)
      expect(served.get(first.organizationId)).toBe(first.allocationId)
      expect(served.get(second.organizationId)).toBe(second.allocationId)
      expect((yield* Ref.get(world.table)).ready).toBe(true)
    }).pipe(Effect.provide(TestServices)))
})
