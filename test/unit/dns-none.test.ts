import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Ref } from "effect"
import { randomUUID } from "node:crypto"
import { Allocator } from "../../src/allocation/Allocator.ts"
import { DnsNone } from "../../src/dns/Dns.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { startFailure } from "../support/failures.ts"
import { calls, OutsideTest, setFault, TestWorld } from "../support/TestLayers.ts"
import { testServices } from "../support/testServices.ts"

// Wildcard DNS: the in-memory systems, with the `none` provider in place of PowerDNS.
const TestServices = testServices({ gateways: 1, outside: Layer.merge(OutsideTest, DnsNone) })

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
