// The chaos run of test/chaos/chaos.ts at CI size: a few hundred starts and stops from concurrent
// clients against two replicas (now and then one org flapped across both), with gateway
// (handshake, health and release), PowerDNS and nginx faults, runner leases terminated, and
// kill -9 of a replica; tenant isolation checked through nginx every ~50 ms all along, on fresh
// connections and on long-lived WebSockets; then every invariant of docs/architecture.md checked
// two reconcile periods after the last fault, and no gateway left owing its release.
// Then a shorter run with two remote nginx edges next to the stack's own and edge faults (an edge
// frozen, restarted with its table emptied, its route API cut off): no crossing on any edge, no
// gateway lost or left held by an edge, every edge ready again at the end.
// Before it, on a stack of ONE gateway (so the next org necessarily gets the gateway the last one
// used), the long-lived check is shown not to be vacuous: a gateway that ignores the protocol
// (isolation "off") makes it report a crossing, an enforcing one does not.
// CHAOS_SEED=N replays a run's choices; CHAOS_OPS=N changes its size.
import { expect, layer } from "@effect/vitest"
import { Data, Duration, Effect, Layer, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { formatSummary, isolationFailed, runChaos } from "../chaos/chaos.ts"
import { HttpApiLive, post } from "../support/http.ts"
import { describeReport } from "../support/invariants.ts"
import { describeIsolation, type IsolationChecker, startIsolationChecker } from "../support/isolation.ts"
import { Stack, StackLive, withStack } from "../support/stack.ts"

const SEED = Number(process.env["CHAOS_SEED"] ?? 20261125)
const OPERATIONS = Number(process.env["CHAOS_OPS"] ?? 300)
const EDGE_OPERATIONS = Number(process.env["CHAOS_EDGE_OPS"] ?? 150)

// ---------------------------------------------------------------------------------------------
// The negative control: one gateway, reused by the next org.

class NotYet extends Data.TaggedError("NotYet")<{ readonly what: string; readonly withinMs: number }> {
  override get message() {
    return `${this.what}: not within ${this.withinMs} ms`
  }
}

/** Polls `condition` every 10 ms until it holds; fails NotYet after `withinMs`. */
const awaitThat = (what: string, condition: () => boolean, withinMs: number) =>
  Effect.suspend(() => (condition() ? Effect.void : Effect.fail(new NotYet({ what, withinMs })))).pipe(
    Effect.retry(Schedule.spaced(Duration.millis(10)).pipe(Schedule.upTo(Duration.millis(withinMs))))
  )

interface Started {
  readonly allocation_id: string
  readonly gateway_id: string
}

const start = (org: string) =>
  Effect.map(post("/gateway/start", { organization_id: org }), (response) => {
    expect(response.status, response.text).toBe(200)
    return response.json as Started
  })

const stop = (org: string) =>
  Effect.map(post("/gateway/stop", { organization_id: org }), (response) => {
    expect(response.status, response.text).toBe(200)
    expect(response.json.gateway_release, response.text).toBe("done")
  })

/** Stops the orgs if a test left them running (a failed assertion must not leak the only gateway). */
const stopQuietly = (...orgs: ReadonlyArray<string>) =>
  Effect.forEach(orgs, (org) => Effect.ignore(post("/gateway/stop", { organization_id: org })), { discard: true })

/**
 * With the gateway's isolation set: A started, the checker's WebSocket for A open and answered,
 * A stopped, B started (on the same gateway), then `awaitOutcome` on the checker; its report.
 */
const reuseScenario = (isolation: "enforce" | "off", awaitOutcome: (checker: IsolationChecker) => Effect.Effect<void, NotYet>) => {
  const orgA = randomUUID()
  const orgB = randomUUID()
  return withStack((stack) =>
    Effect.gen(function*() {
      expect(stack.gateways).toHaveLength(1)
      const gateway = stack.gateways[0]!
      yield* gateway.setBehaviour({ isolation })
      const started = new Set<string>()
      const checker = yield* startIsolationChecker({ stack, orgs: () => started, longLivedConnections: 4 })
      const ll = () => checker.figures().longLived
      started.add(orgA)
      const a = yield* start(orgA)
      yield* awaitThat("the checker's WebSocket for A, answered", () => ll().opens.opened >= 1 && ll().answeredOwn >= 2, 10_000)
      yield* stop(orgA)
      started.add(orgB)
      const b = yield* start(orgB)
      expect(b.gateway_id).toBe(a.gateway_id)
      yield* awaitOutcome(checker)
      const report = yield* checker.stop
      yield* stop(orgB)
      return { a, b, orgA, orgB, gateway: gateway.name, report }
    }).pipe(Effect.scoped, Effect.ensuring(stopQuietly(orgA, orgB)))
  )
}

layer(
  HttpApiLive({ RECONCILE_INTERVAL_MS: "3600000", GATEWAY_HEALTH_INTERVAL_MS: "3600000" }).pipe(
    Layer.provideMerge(StackLive({ gateways: 1 }))
  ),
  { timeout: 120_000, excludeTestServices: true }
)("the long-lived check (one gateway, reused by the next org)", (it) => {
  it.effect("negative control: a gateway that ignores the protocol (isolation off) makes it report a crossing", () =>
    Effect.gen(function*() {
      const { a, b, orgA, orgB, gateway, report } = yield* reuseScenario(
        "off",
        (checker) =>
          awaitThat(
            "a long-lived crossing, its sample completed from Postgres",
            () => checker.figures().longLived.crossingSamples.some((sample) => sample.servedState !== "(not read)"),
            10_000
          )
      )
      console.log(`negative control (isolation off):\n${describeIsolation(report)}`)
      const { longLived } = report
      expect(longLived.crossings, describeIsolation(report)).toBeGreaterThanOrEqual(1)
      // A's connection, opened for A's allocation, answered by the same gateway now serving B.
      expect(longLived.crossingSamples[0]).toMatchObject({
        kind: "message",
        org: orgA,
        connectionAllocation: a.allocation_id,
        gateway,
        servedAllocation: b.allocation_id,
        servedOrg: orgB
      })
      expect(longLived.crossingSamples[0]!.servedState).toMatch(new RegExp(`^org ${orgB} (active|starting) on ${gateway}$`))
      expect(isolationFailed(report)).toBe(true)
      // The fresh-connection check alone could not see it: A's hostname was no longer routed.
      expect(report.crossings, describeIsolation(report)).toBe(0)
    }))

  it.effect("the same with an enforcing gateway: A's connection is closed by A's stop, nothing crosses", () =>
    Effect.gen(function*() {
      const { report } = yield* reuseScenario("enforce", (checker) =>
        // A's connection closed and judged, and B's connection opened and answered on the same gateway.
        awaitThat(
          "A's connection closed, B's answered",
          () => {
            const ll = checker.figures().longLived
            return ll.closes.total >= 1 && ll.opens.opened >= 2 && ll.answeredOwn >= 4
          },
          10_000
        ))
      const { longLived } = report
      expect(isolationFailed(report), describeIsolation(report)).toBe(false)
      expect(longLived.crossings).toBe(0)
      expect(longLived.closes.whileActive).toBe(0)
      expect(longLived.closes.whileEnding + longLived.closes.afterEnd).toBe(1)
      expect(longLived.opens.opened).toBeGreaterThanOrEqual(2)
      expect(report.crossings).toBe(0)
    }))
})

// ---------------------------------------------------------------------------------------------
// The chaos run.

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
        killEveryMs: [8000, 15000],
        longLivedConnections: 4
      })
      console.log(formatSummary(summary))
      expect(summary.operations).toBeGreaterThanOrEqual(Math.min(OPERATIONS, 150))
      expect(summary.kills).toBeGreaterThan(0)
      expect(summary.contractBreaks, `seed ${SEED}`).toEqual([])
      // Release faults were among the faults (the final release check below is not vacuous).
      expect(Object.entries(summary.faults).filter(([kind]) => kind.includes("release")).length).toBeGreaterThan(0)
      // Tenant isolation, checked all along through nginx: no org ever reached a gateway that
      // another org held throughout the request.
      const { isolation } = summary
      const described = `seed ${SEED}\n${describeIsolation(isolation)}`
      expect(isolation.crossings, described).toBe(0)
      // ...and the checker really looked: rounds every ~50 ms over the run, requests answered by
      // the orgs' own gateways (a checker that only ever saw 404s would prove nothing).
      expect(isolation.rounds).toBeGreaterThan(200)
      expect(isolation.requests).toBeGreaterThan(isolation.rounds)
      expect(isolation.answers.ownGateway).toBeGreaterThan(500)
      // Long-lived connections: never answered for another allocation, for none, or while another
      // org held their gateway...
      const { longLived } = isolation
      expect(longLived.crossings, described).toBe(0)
      expect(longLived.outlived, described).toBe(0)
      expect(longLived.handedOver, described).toBe(0)
      // ...and they really ran: messages answered over the run, and connections closed by their
      // org's stop (the allocation no longer active when the close was looked at).
      expect(longLived.opens.opened, described).toBeGreaterThan(5)
      expect(longLived.messagesAnswered, described).toBeGreaterThan(1000)
      expect(longLived.closes.whileEnding + longLived.closes.afterEnd, described).toBeGreaterThan(0)
      expect(summary.report.violations, `seed ${SEED}\n${describeReport(summary.report)}`).toEqual([])
      // Every gateway whose release failed was released by the health pass once the faults
      // stopped, and no gateway was freed without its release (each holds what Postgres says).
      expect(summary.unreleasedAtEnd, `seed ${SEED}`).toEqual([])
      expect(summary.gatewaysHoldingAtEnd, `seed ${SEED}`).toEqual([])
    }).pipe(Effect.scoped), { timeout: 180_000 })
})

// ---------------------------------------------------------------------------------------------
// The chaos run with several edges.

layer(StackLive({ gateways: 6 }), { timeout: 120_000, excludeTestServices: true })("chaos with several edges", (it) => {
  it.effect(
    `${EDGE_OPERATIONS} starts and stops with two remote edges and edge faults (seed ${SEED}): no crossing on any edge, no gateway lost, every edge ready at the end`,
    () =>
      Effect.gen(function*() {
        const stack = yield* Stack
        const summary = yield* runChaos({
          operations: EDGE_OPERATIONS,
          seed: SEED,
          stack,
          orgs: 10,
          replicas: 2,
          workers: 4,
          timeLimitMs: 60_000,
          killEveryMs: [15_000, 25_000],
          // Quicker clients and faults than the run above: as many faults in a shorter run (CI time).
          thinkMs: [50, 400],
          faultEveryMs: [500, 1500],
          longLivedConnections: 4,
          edges: 2,
          // A short run: edge faults weigh more, so each kind is likely to come up.
          faultWeights: { "edge frozen": 4, "edge restarted": 3, "edge partitioned": 4 }
        })
        console.log(formatSummary(summary))
        const described = `seed ${SEED}\n${formatSummary(summary)}`
        expect(summary.edges).toBe(2)
        expect(summary.operations).toBeGreaterThanOrEqual(Math.min(EDGE_OPERATIONS, 100))
        expect(Object.values(summary.edgeFaults).reduce((a, b) => a + b, 0), described).toBeGreaterThan(0)
        expect(summary.contractBreaks, described).toEqual([])
        // No crossing on any edge, plain or long-lived, and the checker asked every edge.
        const { isolation } = summary
        expect(isolationFailed(isolation), described).toBe(false)
        expect(isolation.crossings, described).toBe(0)
        expect(isolation.answers.ownGateway, described).toBeGreaterThan(100)
        // No gateway lost: every invariant holds (free + allocated = total among them), none owes a
        // release or holds what Postgres does not give it, none is still held by an edge.
        expect(summary.report.violations, `seed ${SEED}\n${describeReport(summary.report)}`).toEqual([])
        const pool = summary.report.pool
        expect(pool === undefined ? undefined : pool.free + pool.allocated, described).toBe(pool?.total)
        expect(summary.unreleasedAtEnd, described).toEqual([])
        expect(summary.gatewaysHoldingAtEnd, described).toEqual([])
        expect(summary.heldAtEnd, described).toBe(0)
        // Every edge ready again (within 30 s of the last fault), routing every org as Postgres says.
        expect(summary.edgesAtEnd, described).toEqual([])
        expect(summary.edgesReadyAfterMs, described).not.toBeNull()
        expect(summary.edgeRoutesAtEnd, described).toEqual([])
        expect(summary.edgeRoutesChecked).toBeGreaterThan(0)
      }).pipe(Effect.scoped),
    { timeout: 120_000 }
  )
})
