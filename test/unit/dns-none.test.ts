import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Ref } from "effect"
import { randomUUID } from "node:crypto"
import { Allocator } from "../../src/allocation/Allocator.ts"
import { makeServices } from "../../src/app.ts"
import { DnsNone } from "../../src/dns/Dns.ts"
import type { GatewayName, OrganizationId, Upstream } from "../../src/domain/ids.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { startFailure } from "../support/failures.ts"
import { configFrom } from "../support/stack.ts"
import { calls, OutsideTest, setFault, TestWorld } from "../support/TestLayers.ts"

// Wildcard DNS: the in-memory systems, with the `none` provider in place of PowerDNS.
const TestServices = Layer.effectDiscard(
  Effect.flatMap(GatewayStore, (pool) => pool.addGateway("gw-1" as GatewayName, "127.0.0.1:9001" as Upstream))
).pipe(
  Layer.provideMerge(makeServices(Layer.merge(OutsideTest, DnsNone))),
  Layer.provide(configFrom({}))
)

describe("DNS_PROVIDER=none", () => {
  it.effect("the dns step is journaled as skipped, and a rollback skips its undo", () =>
    Effect.gen(function*() {
      const allocator = yield* Allocator
      const world = yield* TestWorld
      const org = randomUUID() as OrganizationId
      const started = yield* allocator.start(org)
      expect((yield* calls).some((c) => c.startsWith("dns."))).toBe(false)
      const journal = yield* Ref.get(world.journal)
      expect(journal.filter((e) => e.step === "dns").map((e) => e.event)).toEqual(["skipped"])
      yield* allocator.stop(org)
      const stopJournal = (yield* Ref.get(world.journal)).filter((e) => e.allocationId === started.allocationId)
      expect(stopJournal.filter((e) => e.step === "dns").map((e) => e.event)).toEqual(["skipped", "undo_started", "undo_skipped"])

      yield* setFault("handshake.handshake", "fail")
      const error = yield* startFailure(randomUUID() as OrganizationId)
      expect(error._tag).toBe("StepFailed")
      if (error._tag === "NoGatewayAvailable") return
      expect(error.rollback.map((o) => o.step)).toEqual(["nginx-reload", "nginx-config", "allocate"])
    }).pipe(Effect.provide(TestServices)))
})
