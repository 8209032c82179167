// Several nginx edges behaving as one, on the real stack: the stack's nginx (the local edge) and
// remote edges, each a real nginx of its own on loopback, registered through POST /edges and
// running the file GET /edges/{id}/config renders. Faults are real: an edge frozen (SIGSTOP of its
// master and workers), restarted (its table comes back empty), removed from the registry.
import { expect, layer } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { randomUUID } from "node:crypto"
import { describeIsolation, startIsolationChecker } from "../support/isolation.ts"
import { awaitEdgeState, edgeReadiness, edgeView, type RemoteEdge, startRemoteEdge } from "../support/edges.ts"
import { pollUntil } from "../support/poll.ts"
import { domainOf, gatewayAnswerOf, hostnameOf, rawGet } from "../support/rawHttp.ts"
import { request, startGateway, stopGateway } from "../support/server.ts"
import { type Served, ServedStackLive, withServedStack } from "../support/servedStack.ts"
import { setAllGateways } from "../support/stack.ts"

/** What an edge answers for the org's hostname: the gateway that served it (by name), or the status. */
const answerOn = (served: Served, port: number, org: string) =>
  rawGet({ port, path: "/edges", headers: { host: hostnameOf(served.stack, org) }, timeoutMs: 2000 }).pipe(
    Effect.map((response) => {
      const answer = gatewayAnswerOf(response.body)
      return response.status === 200 && answer !== undefined ? answer.gateway : `HTTP ${response.status}`
    }),
    Effect.catchAll((error) => Effect.succeed(`no answer: ${error.message}`))
  )

/** Waits until the edge answers `expected` for the org (within 10 s); returns what it answered last. */
const awaitAnswer = (served: Served, port: number, org: string, expected: string) =>
  pollUntil(answerOn(served, port, org), (answer) => answer === expected, { withinMs: 10_000, spacingMs: 50 })

const poolGateway = (served: Served, gatewayId: string) =>
  Effect.map(request(served.server, "GET", "/pool", { timeoutMs: 10_000 }), (answer) => ({
    pool: answer.json,
    gateway: (answer.json?.gateways ?? []).find((gateway: { readonly gateway_id: string }) => gateway.gateway_id === gatewayId)
  }))

const nameOfGateway = (served: Served, gatewayId: string) =>
  Effect.map(poolGateway(served, gatewayId), ({ gateway }) => String(gateway?.name))

const started = (served: Served, org: string) =>
  Effect.map(startGateway(served.server, org, { timeoutMs: 30_000 }), (answer) => {
    expect(answer.status, answer.text).toBe(200)
    return answer.json as { readonly gateway_id: string; readonly allocation_id: string }
  })

const stopped = (served: Served, org: string) =>
  Effect.map(stopGateway(served.server, org, { timeoutMs: 30_000 }), (answer) => {
    expect(answer.status, answer.text).toBe(200)
  })

/** Every edge's org listener: the local one first. */
const portsOf = (served: Served, edges: ReadonlyArray<RemoteEdge>) => [served.stack.nginx.listenPort, ...edges.map((edge) => edge.port)]

layer(
  ServedStackLive({
    name: "edges",
    gateways: 4,
    // One outside call is 1.5 s: a frozen edge is given up on (and owes what it missed) quickly.
    env: { STEP_TIMEOUT_MS: "3000", UNDO_TIMEOUT_MS: "3000", RECONCILE_INTERVAL_MS: "2000" }
  }),
  { timeout: 180_000, excludeTestServices: true }
)("several nginx edges (real nginx edges, real stack)", (it) => {
  it.scoped("a start is routed on every edge and a stop takes it off every edge; each edge says it is ready", () =>
    withServedStack((served) =>
      Effect.gen(function*() {
        const edges = [yield* startRemoteEdge(served.server, "edge-a"), yield* startRemoteEdge(served.server, "edge-b")]
        for (const edge of edges) expect((yield* awaitEdgeState(served.server, edge.edgeId, "ready")).held_gateways).toBe(0)
        const domain = domainOf(served.stack)
        for (const port of portsOf(served, edges)) {
          const ready = yield* pollUntil(edgeReadiness(port, domain).pipe(Effect.either), (r) => r._tag === "Right" && r.right.status === 200, {
            withinMs: 5000,
            spacingMs: 100
          })
          expect(ready._tag === "Right" ? ready.right.status : ready.left.message).toBe(200)
        }

        const org = randomUUID()
        const allocation = yield* started(served, org)
        const gateway = yield* nameOfGateway(served, allocation.gateway_id)
        // A start answers once every edge serves it: no waiting here.
        for (const port of portsOf(served, edges)) expect(yield* answerOn(served, port, org)).toBe(gateway)
        yield* stopped(served, org)
        for (const port of portsOf(served, edges)) expect(yield* answerOn(served, port, org)).toBe("HTTP 404")

        // What each edge acknowledged is recorded (within a heartbeat).
        const seen = yield* pollUntil(edgeView(served.server, edges[0]?.edgeId ?? ""), (edge) => Number(edge?.acked_generation) > 0, {
          withinMs: 5000,
          spacingMs: 100
        })
        expect(Number(seen?.acked_generation)).toBeGreaterThan(0)
      })
    ))

  it.scoped("an edge frozen during starts and stops: starts succeed, the stopped org's gateway is held and never handed out, and the thawed edge catches up and gives it back", () =>
    withServedStack((served) =>
      Effect.gen(function*() {
        const edge = yield* startRemoteEdge(served.server, "edge-frozen")
        yield* awaitEdgeState(served.server, edge.edgeId, "ready")
        const orgs: Array<string> = []
        const isolation = yield* startIsolationChecker({
          stack: served.stack,
          orgs: () => orgs,
          db: served.db,
          edgePorts: portsOf(served, [edge]),
          longLivedConnections: 2
        })

        const x = randomUUID()
        orgs.push(x)
        const xAllocation = yield* started(served, x)
        const xGateway = yield* nameOfGateway(served, xAllocation.gateway_id)
        expect(yield* answerOn(served, edge.port, x)).toBe(xGateway)

        yield* edge.freeze(true)
        // A start while the edge is frozen succeeds on the others; the edge is behind.
        const y = randomUUID()
        orgs.push(y)
        const yAllocation = yield* started(served, y)
        expect(yield* answerOn(served, served.stack.nginx.listenPort, y)).toBe(yield* nameOfGateway(served, yAllocation.gateway_id))
        const behind = yield* edgeView(served.server, edge.edgeId)
        expect(["behind", "unreachable"]).toContain(behind?.state)

        // The stop succeeds; the frozen edge owes the removal, so X's gateway is held.
        yield* stopped(served, x)
        const held = yield* poolGateway(served, xAllocation.gateway_id)
        expect(held.gateway?.held_by_edges).toEqual(["edge-frozen"])
        expect(held.pool.held).toBe(1)
        // Every other free gateway is taken; X's never is, and then the pool is empty.
        const others: Array<string> = []
        for (;;) {
          const org = randomUUID()
          const answer = yield* startGateway(served.server, org, { timeoutMs: 30_000 })
          if (answer.status === 503) break
          expect(answer.status, answer.text).toBe(200)
          expect(answer.json.gateway_id).not.toBe(xAllocation.gateway_id)
          others.push(org)
          orgs.push(org)
        }
        expect(others.length).toBeGreaterThan(0)
        expect((yield* edgeView(served.server, edge.edgeId))?.held_gateways).toBe(1)

        yield* edge.freeze(false)
        yield* awaitEdgeState(served.server, edge.edgeId, "ready")
        // Caught up: X is gone from it, Y and the others are on it, and X's gateway is free again.
        expect(yield* answerOn(served, edge.port, x)).toBe("HTTP 404")
        expect(yield* awaitAnswer(served, edge.port, y, yield* nameOfGateway(served, yAllocation.gateway_id))).toBe(
          yield* nameOfGateway(served, yAllocation.gateway_id)
        )
        const freed = yield* poolGateway(served, xAllocation.gateway_id)
        expect(freed.gateway?.held_by_edges).toEqual([])
        expect(freed.gateway?.allocation_id).toBeNull()
        const z = randomUUID()
        orgs.push(z)
        expect((yield* started(served, z)).gateway_id).toBe(xAllocation.gateway_id)

        const report = yield* isolation.stop
        expect(report.crossings, describeIsolation(report)).toBe(0)
        expect(report.longLived.crossings + report.longLived.outlived + report.longLived.handedOver, describeIsolation(report)).toBe(0)
        expect(report.requests).toBeGreaterThan(0)
        for (const org of [y, z, ...others]) yield* stopped(served, org)
      })
    ))

  it.scoped("a removal an edge owes for an allocation still stopping when the edge was caught up is paid once that stop is over", () =>
    withServedStack((served) =>
      Effect.gen(function*() {
        const edge = yield* startRemoteEdge(served.server, "edge-debt")
        yield* awaitEdgeState(served.server, edge.edgeId, "ready")
        const org = randomUUID()
        const allocation = yield* started(served, org)
        // The stop's release hangs (its undo times out after 3 s), so the allocation is still
        // stopping when the frozen edge comes back and is caught up.
        yield* setAllGateways(served.stack, { release: "hang" })
        yield* edge.freeze(true)
        const stop = yield* Effect.fork(stopGateway(served.server, org, { timeoutMs: 30_000 }))
        yield* pollUntil(poolGateway(served, allocation.gateway_id), ({ gateway }) => (gateway?.held_by_edges ?? []).includes("edge-debt"), {
          withinMs: 10_000,
          spacingMs: 50
        })
        yield* edge.freeze(false)
        yield* awaitEdgeState(served.server, edge.edgeId, "ready")
        expect((yield* Fiber.join(stop)).status).toBe(200)
        // Over now: the edge removes the route it still held and the debt is settled.
        const paid = yield* pollUntil(poolGateway(served, allocation.gateway_id), ({ gateway }) => (gateway?.held_by_edges ?? []).length === 0, {
          withinMs: 10_000,
          spacingMs: 100
        })
        expect(paid.gateway?.held_by_edges).toEqual([])
        expect(yield* answerOn(served, edge.port, org)).toBe("HTTP 404")
      })
    ))

  it.scoped("an edge restarted (its table empty) answers 503 until it is refilled, then serves every active org again", () =>
    withServedStack((served) =>
      Effect.gen(function*() {
        const edge = yield* startRemoteEdge(served.server, "edge-restarted")
        yield* awaitEdgeState(served.server, edge.edgeId, "ready")
        const org = randomUUID()
        const allocation = yield* started(served, org)
        const gateway = yield* nameOfGateway(served, allocation.gateway_id)
        expect(yield* answerOn(served, edge.port, org)).toBe(gateway)
        yield* edge.nginx.stop
        yield* Effect.orDie(edge.nginx.start)
        // Refilled by the watcher (it looks every 250 ms), never routed elsewhere meanwhile.
        const answers = new Set<string>()
        const last = yield* pollUntil(
          Effect.tap(answerOn(served, edge.port, org), (answer) => Effect.sync(() => answers.add(answer))),
          (answer) => answer === gateway,
          { withinMs: 10_000, spacingMs: 20 }
        )
        expect(last).toBe(gateway)
        for (const answer of answers) expect([gateway, "HTTP 503"]).toContain(answer.startsWith("no answer") ? "HTTP 503" : answer)
        // Its own readiness is back with the next heartbeat (one a second).
        const readiness = yield* pollUntil(edgeReadiness(edge.port, domainOf(served.stack)), (r) => r.status === 200, {
          withinMs: 5000,
          spacingMs: 100
        })
        expect(readiness.status).toBe(200)
        yield* stopped(served, org)
      })
    ))

  it.scoped("every replica gone: the edges keep serving the routes they hold, and their own readiness lapses until a replica is back", () =>
    withServedStack((served) =>
      Effect.gen(function*() {
        const edge = yield* startRemoteEdge(served.server, "edge-alone")
        yield* awaitEdgeState(served.server, edge.edgeId, "ready")
        const org = randomUUID()
        const allocation = yield* started(served, org)
        const gateway = yield* nameOfGateway(served, allocation.gateway_id)
        const domain = domainOf(served.stack)
        const readiness = (status: number, withinMs: number) =>
          pollUntil(edgeReadiness(edge.port, domain).pipe(Effect.either), (r) => r._tag === "Right" && r.right.status === status, {
            withinMs,
            spacingMs: 100
          })
        yield* readiness(200, 5000)

        yield* served.server.kill("SIGKILL")
        for (const port of portsOf(served, [edge])) expect(yield* answerOn(served, port, org)).toBe(gateway)
        // No heartbeat for 3 s: the edge says it is not ready (a load balancer takes it out)...
        const lapsed = yield* readiness(503, 6000)
        expect(lapsed._tag === "Right" ? lapsed.right.body : "").toContain("no replica reached")
        // ...and still serves what it holds: nothing expires.
        for (const port of portsOf(served, [edge])) expect(yield* answerOn(served, port, org)).toBe(gateway)

        yield* Effect.orDie(served.server.restart)
        const back = yield* readiness(200, 6000)
        expect(back._tag === "Right" ? back.right.status : 0).toBe(200)
        yield* stopped(served, org)
      })
    ))

  it.scoped("an edge removed from the registry gives back the gateways it held; a draining edge says it is not ready", () =>
    withServedStack((served) =>
      Effect.gen(function*() {
        const edge = yield* startRemoteEdge(served.server, "edge-removed")
        yield* awaitEdgeState(served.server, edge.edgeId, "ready")
        const org = randomUUID()
        const allocation = yield* started(served, org)

        // Draining: the edge's own readiness answers 503 (within a heartbeat), routes kept.
        expect((yield* request(served.server, "PATCH", `/edges/${edge.edgeId}`, { body: { state: "draining" } })).status).toBe(200)
        const draining = yield* pollUntil(edgeReadiness(edge.port, domainOf(served.stack)), (r) => r.body.includes("draining"), {
          withinMs: 5000,
          spacingMs: 100
        })
        expect(draining.status).toBe(503)
        expect(draining.body).toContain("draining")
        expect(yield* answerOn(served, edge.port, org)).toBe(yield* nameOfGateway(served, allocation.gateway_id))

        yield* edge.freeze(true)
        yield* stopped(served, org)
        expect((yield* poolGateway(served, allocation.gateway_id)).gateway?.held_by_edges).toEqual(["edge-removed"])
        const removed = yield* request(served.server, "DELETE", `/edges/${edge.edgeId}`)
        expect(removed.status).toBe(200)
        expect(removed.json.removals_dropped).toBe(1)
        const freed = yield* poolGateway(served, allocation.gateway_id)
        expect(freed.gateway?.held_by_edges).toEqual([])
        expect(freed.pool.held).toBe(0)
        expect(yield* edgeView(served.server, edge.edgeId)).toBeUndefined()
      })
    ))
})
