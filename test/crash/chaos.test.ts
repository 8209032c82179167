// The chaos run of test/chaos/chaos.ts at CI size: a few hundred starts and stops from concurrent
// clients against two replicas (now and then one org flapped across both), with gateway, PowerDNS
// and nginx faults, runner leases terminated, and kill -9 of a replica; tenant isolation checked
// through nginx every ~50 ms all along; then every invariant of docs/architecture.md checked two
// reconcile periods after the last fault.
// CHAOS_SEED=N replays a run's choices; CHAOS_OPS=N changes its size.
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { formatSummary, runChaos } from "../chaos/chaos.ts"
import { describeReport } from "../support/invariants.ts"
import { describeIsolation } from "../support/isolation.ts"
import { Stack, StackLive } from "../support/stack.ts"

const SEED = Number(process.env["CHAOS_SEED"] ?? 20261125)
const OPERATIONS = Number(process.env["CHAOS_OPS"] ?? 300)

layer(StackLive({ gateways: 6 }), { timeout: 120_000, excludeTestServices: true })("chaos", (it) => {
  it.effect(`${OPERATIONS} starts and stops with faults and kills (seed ${SEED}): every invariant holds afterwards`, () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const summary = yield* runChaos({
        operations: OPERATIONS,
        seed: SEED,
        stack,
        orgs: 10,
        replicas: 2,
        workers: 4,
        timeLimitMs: 110_000,
        killEveryMs: [8000, 15000]
      })
      console.log(formatSummary(summary))
      expect(summary.operations).toBeGreaterThanOrEqual(Math.min(OPERATIONS, 150))
      expect(summary.kills).toBeGreaterThan(0)
      expect(summary.contractBreaks, `seed ${SEED}`).toEqual([])
      // Tenant isolation, checked all along through nginx: no org ever reached a gateway that
      // another org held throughout the request.
      const { isolation } = summary
      expect(isolation.crossings, `seed ${SEED}\n${describeIsolation(isolation)}`).toBe(0)
      // ...and the checker really looked: rounds every ~50 ms over the run, requests answered by
      // the orgs' own gateways (a checker that only ever saw 404s would prove nothing).
      expect(isolation.rounds).toBeGreaterThan(200)
      expect(isolation.requests).toBeGreaterThan(isolation.rounds)
      expect(isolation.answers.ownGateway).toBeGreaterThan(500)
      expect(summary.report.violations, `seed ${SEED}\n${describeReport(summary.report)}`).toEqual([])
    }).pipe(Effect.scoped), { timeout: 180_000 })
})
