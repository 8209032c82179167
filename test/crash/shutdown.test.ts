// Shutdown of the real service (a child process over the real stack): every gateway hangs its
// handshake, a start is under way, and SIGINT arrives. After the signal no other gateway is
// claimed (the start's attempt times out within the grace period and is not retried), the
// process says what it waits for, the caller gets an answer, and the process exits within the
// grace period plus the rollback's bounds, everything rolled back.
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Fiber, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { readFileSync } from "node:fs"
import { openDb } from "../support/invariants.ts"
import { registerGateways, startGateway, startServer } from "../support/server.ts"
import { setAllGateways, Stack, StackLive } from "../support/stack.ts"

const STEP_TIMEOUT_MS = 1500
const UNDO_TIMEOUT_MS = 1000
const SHUTDOWN_GRACE_MS = 3000

layer(StackLive({ gateways: 3 }), { timeout: 120_000, excludeTestServices: true })("shutdown", (it) => {
  it.scoped("SIGINT during a hanging start: no gateway claimed after it, what it waits for is logged, the caller answered, exit within the bounds", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const db = yield* openDb(stack.env["DATABASE_URL"] ?? "")
      const server = yield* startServer(stack, {
        name: "shutdown",
        env: {
          START_ATTEMPTS: "3",
          STEP_TIMEOUT_MS: String(STEP_TIMEOUT_MS),
          UNDO_TIMEOUT_MS: String(UNDO_TIMEOUT_MS),
          SHUTDOWN_GRACE_MS: String(SHUTDOWN_GRACE_MS)
        }
      })
      yield* registerGateways(server, stack)
      yield* setAllGateways(stack, { handshake: "hang" })
      const org = randomUUID()
      const attempts = db.query<{ count: number }>("select count(*)::int as count from allocations where organization_id = $1", [org])
        .pipe(Effect.map((rows) => rows[0]?.count ?? 0))

      const caller = yield* Effect.fork(startGateway(server, org, { timeoutMs: 60_000 }))
      // The first attempt is waiting on its gateway's handshake.
      yield* attempts.pipe(Effect.repeat({ schedule: Schedule.spaced(Duration.millis(20)), until: (n) => n === 1 }))
      const signalledAt = Date.now()
      yield* server.signal("SIGINT")

      const answer = yield* Fiber.join(caller)
      // The first attempt timed out (504) and no other gateway was tried.
      expect(answer.status).toBe(504)
      expect(answer.json.attempts).toHaveLength(1)
      yield* Effect.sync(() => server.running()).pipe(
        Effect.repeat({ schedule: Schedule.spaced(Duration.millis(20)), until: (running) => !running })
      )
      const exitedAfterMs = Date.now() - signalledAt
      // Grace, then at most the rollback of the start (five undos) and the server's own close.
      expect(exitedAfterMs).toBeLessThan(SHUTDOWN_GRACE_MS + 5 * UNDO_TIMEOUT_MS + 2000)

      expect(yield* attempts).toBe(1)
      const live = yield* db.query("select id from allocations where state in ('starting', 'active', 'stopping', 'rolling_back')")
      expect(live).toEqual([])
      const log = readFileSync(server.logFile, "utf8")
      expect(log).toContain(`shutdown: no new gateway is claimed; waiting up to ${SHUTDOWN_GRACE_MS} ms for 1 start(s) in flight`)
      expect(log).toContain("shutdown: every start and stop has finished or rolled back")
    }))
})
