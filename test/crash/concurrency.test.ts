// Concurrent starts against the real service (child processes) over one Postgres: the pool never
// hands a gateway out twice and never says "no gateway" while one is free; concurrent starts for
// one org share one allocation. Then the same with two replicas on one database.
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { randomUUID } from "node:crypto"
import type { LocalStack } from "../../src/dev/stack.ts"
import { awaitInvariants, type Db, describeReport, openDb } from "../support/invariants.ts"
import {
  type ApiAnswer,
  type Endpoint,
  registerGateways,
  type ServiceProcess,
  startGateway,
  startServer,
  stopGateway
} from "../support/server.ts"
import { Stack, StackLive } from "../support/stack.ts"

const POOL_SIZE = 4
const SERVER_ENV = { RECONCILE_INTERVAL_MS: "1000", STEP_TIMEOUT_MS: "10000", UNDO_TIMEOUT_MS: "5000" }

interface Replicas {
  readonly stack: LocalStack
  readonly first: ServiceProcess
  readonly db: Db
}
class ReplicasContext extends Context.Tag("test/ReplicasContext")<ReplicasContext, Replicas>() {}

const ReplicasLive = Layer.scoped(
  ReplicasContext,
  Effect.gen(function*() {
    const stack = yield* Stack
    const first = yield* startServer(stack, { name: "concurrency-a", env: SERVER_ENV })
    yield* registerGateways(first, stack)
    const db = yield* openDb(stack.env["DATABASE_URL"]!)
    return { stack, first, db }
  })
).pipe(Layer.provideMerge(StackLive({ gateways: POOL_SIZE })))

/** Fires every request at once (round-robin over the servers) and waits for every answer. */
const together = (servers: ReadonlyArray<Endpoint>, orgs: ReadonlyArray<string>) =>
  Effect.forEach(orgs, (org, i) => startGateway(servers[i % servers.length]!, org, { timeoutMs: 60_000 }), {
    concurrency: "unbounded"
  })

const statuses = (answers: ReadonlyArray<ApiAnswer>) =>
  answers.map((answer) => answer.status).sort((a, b) => a - b)

/** Stops every org that got a gateway, so the next test starts with the whole pool free. */
const stopAll = (endpoint: Endpoint, orgs: Iterable<string>) =>
  Effect.forEach(orgs, (org) =>
    Effect.flatMap(stopGateway(endpoint, org), (answer) =>
      Effect.sync(() => expect([200, 404], `stop ${org}: ${answer.text}`).toContain(answer.status))), {
    concurrency: 4,
    discard: true
  })

/** Whatever a failed assertion left allocated is stopped, so one failure does not cascade. */
const cleanUp = (replicas: Replicas, orgs: ReadonlyArray<string>) =>
  Effect.forEach(orgs, (org) => stopGateway(replicas.first, org).pipe(Effect.ignore), { concurrency: 4, discard: true })

const expectSettled = (replicas: Replicas, endpoint: Endpoint, orgs: Iterable<string>, free: number) =>
  Effect.gen(function*() {
    const report = yield* awaitInvariants({ stack: replicas.stack, endpoint, db: replicas.db, orgs }, { timeoutMs: 2000 })
    expect(report.violations, describeReport(report)).toEqual([])
    expect(report.pool).toEqual({ total: POOL_SIZE, free, allocated: POOL_SIZE - free })
  })

/** 2 x pool-size distinct orgs at once: exactly pool-size 200s, the rest 503, no gateway twice. */
const distinctOrgs = (replicas: Replicas, servers: ReadonlyArray<Endpoint>) => {
  const orgs = Array.from({ length: 2 * POOL_SIZE }, () => randomUUID())
  return Effect.gen(function*() {
    const answers = yield* together(servers, orgs)
    const texts = answers.map((answer) => `${answer.status} ${answer.text}`).join("\n")
    expect(statuses(answers), texts).toEqual([
      ...Array.from({ length: POOL_SIZE }, () => 200),
      ...Array.from({ length: POOL_SIZE }, () => 503)
    ])
    const won = answers.filter((answer) => answer.status === 200)
    expect(new Set(won.map((answer) => answer.json.gateway_id)).size).toBe(POOL_SIZE)
    expect(new Set(won.map((answer) => answer.json.allocation_id)).size).toBe(POOL_SIZE)
    expect(won.every((answer) => answer.json.reused === false)).toBe(true)
    for (const answer of answers.filter((answer) => answer.status === 503)) {
      expect(answer.json?._tag).toBe("NoGatewayAvailable")
    }
    const rows = yield* replicas.db.query<{ organization_id: string }>(
      "select organization_id from allocations where organization_id = any($1)",
      [orgs]
    )
    // A 503 claimed nothing and left no row; each winner has exactly one.
    expect(rows.map((row) => row.organization_id).sort()).toEqual(won.map((answer) => answer.json.organization_id).sort())
    yield* expectSettled(replicas, servers[0]!, orgs, 0)
    yield* stopAll(servers[0]!, orgs)
    yield* expectSettled(replicas, servers[0]!, orgs, POOL_SIZE)
  }).pipe(Effect.ensuring(cleanUp(replicas, orgs)))
}

/** 8 starts for one org at once: one allocation, eight answers naming it. */
const oneOrg = (replicas: Replicas, servers: ReadonlyArray<Endpoint>) => {
  const org = randomUUID()
  return Effect.gen(function*() {
    const answers = yield* together(servers, Array.from({ length: 8 }, () => org))
    const texts = answers.map((answer) => `${answer.status} ${answer.text}`).join("\n")
    expect(statuses(answers), texts).toEqual(Array.from({ length: 8 }, () => 200))
    const named = answers.map((answer) => ({ allocation_id: answer.json.allocation_id, gateway_id: answer.json.gateway_id }))
    expect(new Set(named.map((n) => JSON.stringify(n))).size, texts).toBe(1)
    const rows = yield* replicas.db.query<{ id: string; state: string }>(
      "select id, state from allocations where organization_id = $1",
      [org]
    )
    expect(rows).toEqual([{ id: named[0]!.allocation_id, state: "active" }])
    // The gateway was initialised once, for this allocation.
    const handshakes = yield* Effect.forEach(replicas.stack.gateways, (gateway) => gateway.handshakes)
    expect(
      handshakes.flat().filter((body) => (body as { organization_id?: string }).organization_id === org)
    ).toHaveLength(1)
    yield* expectSettled(replicas, servers[0]!, [org], POOL_SIZE - 1)
    yield* stopAll(servers[0]!, [org])
    yield* expectSettled(replicas, servers[0]!, [org], POOL_SIZE)
  }).pipe(Effect.ensuring(cleanUp(replicas, [org])))
}

layer(ReplicasLive, { timeout: 120_000, excludeTestServices: true })("concurrent starts", (it) => {
  it.effect("one server: 2 x pool-size distinct orgs -> exactly pool-size 200s and the rest 503, gateways distinct", () =>
    Effect.flatMap(ReplicasContext, (replicas) => distinctOrgs(replicas, [replicas.first])), { timeout: 60_000 })

  it.effect("one server: 8 concurrent starts for one org -> one allocation, eight identical answers", () =>
    Effect.flatMap(ReplicasContext, (replicas) => oneOrg(replicas, [replicas.first])), { timeout: 60_000 })

  it.effect("two replicas on one database: 2 x pool-size distinct orgs split across both", () =>
    Effect.gen(function*() {
      const replicas = yield* ReplicasContext
      const second = yield* startServer(replicas.stack, { name: "concurrency-b", env: SERVER_ENV })
      yield* distinctOrgs(replicas, [replicas.first, second])
    }).pipe(Effect.scoped), { timeout: 90_000 })

  // Across replicas the in-process single flight cannot help: the claims meet in Postgres. The
  // window is a few milliseconds, so the check runs for several orgs in turn.
  it.effect("two replicas on one database: 8 concurrent starts for one org split across both -> one allocation (x6 orgs)", () =>
    Effect.gen(function*() {
      const replicas = yield* ReplicasContext
      const second = yield* startServer(replicas.stack, { name: "concurrency-b2", env: SERVER_ENV })
      for (let round = 0; round < 6; round++) yield* oneOrg(replicas, [replicas.first, second])
    }).pipe(Effect.scoped), { timeout: 120_000 })
})
