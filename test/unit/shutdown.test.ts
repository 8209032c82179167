// Shutdown over the in-memory outside systems: after the signal no gateway is claimed and no new
// attempt begins; a start in flight keeps its grace period, and its caller gets an answer.
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, Layer, Option, Ref, Scope } from "effect"
import { randomUUID } from "node:crypto"
import { Allocator } from "../../src/allocation/Allocator.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { calls, setFault, TestWorld } from "../support/TestLayers.ts"
import { advance, backgroundOff, testServices, untilCalled } from "../support/testServices.ts"

const STEP_TIMEOUT_MS = 1000
const SHUTDOWN_GRACE_MS = 3000

const TestServices = testServices({
  gateways: 3,
  env: {
    STEP_TIMEOUT_MS: String(STEP_TIMEOUT_MS),
    SHUTDOWN_GRACE_MS: String(SHUTDOWN_GRACE_MS),
    START_ATTEMPTS: "3",
    GATEWAY_QUARANTINE_MS: "1",
    ...backgroundOff
  }
})

const failureTag = <A, E extends { readonly _tag: string }>(exit: Exit.Exit<A, E>) =>
  Exit.isFailure(exit) ? Option.getOrNull(Option.map(Cause.failureOption(exit.cause), (e) => e._tag)) : null

describe("shutdown (test layers)", () => {
  it.effect("a start whose attempt fails during the grace period tries no other gateway; new starts are refused", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(TestServices, scope)
      const allocator = yield* Allocator.pipe(Effect.provide(context))
      const world = yield* TestWorld.pipe(Effect.provide(context))
      // Every gateway's handshake hangs: each attempt times out on its gateway's account.
      yield* setFault("handshake.handshake", "hang").pipe(Effect.provide(context))
      const caller = yield* Effect.fork(allocator.start(randomUUID() as OrganizationId))
      yield* untilCalled("handshake.handshake").pipe(Effect.provide(context))

      // What the HTTP server's shutdown runs first (before it closes): the drain.
      const draining = yield* Effect.fork(allocator.drain)
      yield* Effect.yieldNow()
      // The signal is in: a new start is refused at once, before any claim.
      const refused = yield* Effect.exit(allocator.start(randomUUID() as OrganizationId))
      expect(failureTag(refused)).toBe("ShuttingDown")

      // The attempt times out within the grace period: without the shutdown, the start would go on
      // to a second gateway; here it ends with the first attempt's failure.
      yield* advance(STEP_TIMEOUT_MS + 1000)
      const exit = yield* Fiber.await(caller)
      expect(failureTag(exit)).toBe("StartFailed")
      if (Exit.isFailure(exit)) {
        const error = Cause.failureOption(exit.cause)
        expect(Option.map(error, (e) => e._tag === "StartFailed" ? e.attempts.length : -1)).toEqual(Option.some(1))
      }
      yield* advance(SHUTDOWN_GRACE_MS)
      yield* Fiber.join(draining)
      yield* Scope.close(scope, Exit.void)
      expect((yield* calls.pipe(Effect.provide(context))).filter((c) => c === "pool.claim")).toHaveLength(1)
      expect((yield* Ref.get(world.gateways)).every((g) => g.allocationId === null)).toBe(true)
    }))
})
