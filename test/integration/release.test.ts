// An org's connections end with its allocation, against the real stack (embedded Postgres, nginx,
// PowerDNS, the service's HTTP API on a real socket) with ONE sample gateway, so the next org is
// necessarily handed the very gateway process the last one used. A WebSocket and an SSE stream
// opened through nginx for org A are closed by A's stop (the gateway's release), and nothing B's
// ever reaches them; a gateway that ignores the protocol (isolation "off") is caught by the same
// scenario (the negative control). nginx names the route's allocation on every request, whatever
// the client sent; a release that fails holds the gateway back until the health pass retries it;
// a handshake that timed out is released by its rollback. Both routing modes.
import { describe, expect, layer } from "@effect/vitest"
import { Data, Duration, Effect, Either, Layer, type Scope } from "effect"
import { randomUUID } from "node:crypto"
import * as http from "node:http"
import type { SampleGatewayHandle } from "../../src/dev/SampleGateway.ts"
import type { LocalStack } from "../../src/dev/stack.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { undoOrder } from "../../src/domain/steps.ts"
import { GatewayHealth } from "../../src/pool/GatewayHealth.ts"
import { get, HttpApiLive, post } from "../support/http.ts"
import { expected, reportOf } from "../support/journal.ts"
import { upgradeWebSocket } from "../support/longLived.ts"
import { awaitThat } from "../support/poll.ts"
import { expectConsistent } from "../support/probes.ts"
import { hostnameOf, rawGet } from "../support/rawHttp.ts"
import { Stack, StackLive, withStack } from "../support/stack.ts"

const STEP_TIMEOUT_MS = 2000
/** How long after the stop returned the client may still be told its connection closed. */
const CLOSED_WITHIN_MS = 1000
/** How long a connection is watched to prove that nothing (more) arrives on it. */
const QUIET_MS = 500

const newOrg = () => randomUUID() as OrganizationId

// ---------------------------------------------------------------------------------------------
// What the API and the sample gateway answer (the parts these tests read).

interface StartedBody {
  readonly organization_id: string
  readonly gateway_id: string
  readonly allocation_id: string
}

interface StoppedBody {
  readonly organization_id: string
  readonly gateway_id: string
  readonly released: boolean
  readonly gateway_release: "done" | "pending" | "not_configured"
}

/** The sample gateway's answer to a proxied request, a WebSocket message or an SSE event. */
interface GatewayAnswer {
  readonly gateway: string
  readonly allocation: string | null
  readonly organization_id: string | null
  readonly connection_allocation?: string | null
  readonly echo?: string
  readonly seq?: number
  readonly path?: string
}

const parseAnswer = (text: string): GatewayAnswer => JSON.parse(text) as GatewayAnswer

/** Whether a received text names the org or its allocation anywhere. */
const names = (text: string, started: StartedBody) =>
  text.includes(started.allocation_id) || text.includes(started.organization_id)

// ---------------------------------------------------------------------------------------------
// The API.

const start = (org: OrganizationId) =>
  Effect.map(post("/gateway/start", { organization_id: org }), (response) => {
    expect(response.status, response.text).toBe(200)
    return response.json as StartedBody
  })

const stop = (org: OrganizationId) =>
  Effect.map(post("/gateway/stop", { organization_id: org }), (response) => {
    expect(response.status, response.text).toBe(200)
    return response.json as StoppedBody
  })

/** Stops the org if a test left it running (a failed assertion must not leak the only gateway). */
const stopQuietly = (...orgs: ReadonlyArray<OrganizationId>) =>
  Effect.forEach(orgs, (org) => Effect.ignore(post("/gateway/stop", { organization_id: org })), { discard: true })

const pool = Effect.map(get("/pool"), (response) => {
  expect(response.status, response.text).toBe(200)
  return response.json
})

const onlyGateway = (stack: LocalStack): SampleGatewayHandle => {
  expect(stack.gateways).toHaveLength(1)
  return stack.gateways[0]!
}

// ---------------------------------------------------------------------------------------------
// Clients through nginx, on raw connections.

class ClientError extends Data.TaggedError("ClientError")<{ readonly message: string; readonly cause?: unknown }> {}

/** A WebSocket through nginx for `host`, once the 101 is read; destroyed when the Scope closes. */
const openWebSocket = (stack: LocalStack, host: string, path = "/ws") =>
  Effect.acquireRelease(
    Effect.flatMap(
      upgradeWebSocket({ port: stack.nginx.listenPort, host, path, timeoutMs: 10_000 }),
      (result) =>
        result._tag === "Upgraded"
          ? Effect.succeed(result.connection)
          : Effect.fail(new ClientError({ message: `no WebSocket upgrade for ${host}: ${JSON.stringify(result)}` }))
    ),
    (ws) => Effect.sync(() => ws.destroy())
  )

interface StreamClient {
  /** Every event's `data`, in order. */
  readonly events: ReadonlyArray<string>
  /** When the stream ended or its connection closed (ms since the epoch), null while it is open. */
  readonly closedAt: () => number | null
}

/** `GET /stream` through nginx for `host`: resolves on a 200; destroyed when the Scope closes. */
const openStream = (stack: LocalStack, host: string): Effect.Effect<StreamClient, ClientError, Scope.Scope> =>
  Effect.gen(function*() {
    const events: Array<string> = []
    let closedAt: number | null = null
    const request = yield* Effect.acquireRelease(
      Effect.sync(() =>
        http.request({
          host: "127.0.0.1",
          port: stack.nginx.listenPort,
          path: "/stream",
          headers: { host, accept: "text/event-stream" },
          agent: false
        })
      ),
      (request) => Effect.sync(() => request.destroy())
    )
    const client: StreamClient = { events, closedAt: () => closedAt }
    return yield* Effect.async<StreamClient, ClientError>((resume) => {
      let settled = false
      const settle = (outcome: Either.Either<StreamClient, ClientError>) => {
        if (settled) return
        settled = true
        resume(Either.isRight(outcome) ? Effect.succeed(outcome.right) : Effect.fail(outcome.left))
      }
      const closed = () => {
        closedAt ??= Date.now()
      }
      request.on("response", (response) => {
        if (response.statusCode !== 200) {
          response.resume()
          return settle(Either.left(new ClientError({ message: `GET /stream for ${host}: HTTP ${response.statusCode}` })))
        }
        settle(Either.right(client))
        let pending = ""
        response.setEncoding("utf8")
        response.on("data", (text: string) => {
          pending += text
          for (let end = pending.indexOf("\n\n"); end >= 0; end = pending.indexOf("\n\n")) {
            const block = pending.slice(0, end)
            pending = pending.slice(end + 2)
            for (const line of block.split("\n")) if (line.startsWith("data: ")) events.push(line.slice(6))
          }
        })
        response.on("end", closed)
        response.on("close", closed)
        response.on("error", closed)
      })
      request.on("error", (cause) => {
        closed()
        settle(Either.left(new ClientError({ message: `GET /stream for ${host}: ${cause.message}`, cause })))
      })
      request.on("close", closed)
      request.end()
    })
  })

/** A plain GET through nginx for the org, on a fresh connection. */
const viaNginx = (stack: LocalStack, org: OrganizationId, headers: Readonly<Record<string, string>> = {}) =>
  rawGet({ port: stack.nginx.listenPort, path: "/fresh", headers: { host: hostnameOf(stack, org), ...headers } })

// ---------------------------------------------------------------------------------------------

/** Both routing modes run the whole suite, each on a stack of one gateway. */
const suite = (routing: "lua" | "reload") =>
  layer(
    HttpApiLive({
      STEP_TIMEOUT_MS: String(STEP_TIMEOUT_MS),
      RECONCILE_INTERVAL_MS: "3600000",
      // The health pass runs when a test asks (GatewayHealth.runOnce), never behind its back.
      GATEWAY_HEALTH_INTERVAL_MS: "3600000"
    }).pipe(Layer.provideMerge(StackLive({ gateways: 1, routing }))),
    { timeout: 120_000, excludeTestServices: true }
  )(`an org's connections end with its allocation (NGINX_ROUTING=${routing}, one gateway)`, (it) => {
  it.effect("WebSocket: closed by the org's stop; the next org on the same gateway never reaches it", () => {
    const orgA = newOrg()
    const orgB = newOrg()
    return withStack((stack) =>
      Effect.gen(function*() {
        const gateway = onlyGateway(stack)
        const a = yield* start(orgA)
        const ws = yield* openWebSocket(stack, hostnameOf(stack, orgA))
        yield* awaitThat("the WebSocket's first frame", () => ws.texts.length >= 1, { withinMs: 5000, spacingMs: 5 })
        expect(parseAnswer(ws.texts[0]!)).toEqual({
          gateway: gateway.name,
          path: "/ws",
          allocation: a.allocation_id,
          organization_id: orgA
        })
        expect(ws.send("hello from A")).toBe(true)
        yield* awaitThat("the echo of A's message", () => ws.texts.length >= 2, { withinMs: 5000, spacingMs: 5 })
        expect(parseAnswer(ws.texts[1]!)).toEqual({
          gateway: gateway.name,
          allocation: a.allocation_id,
          organization_id: orgA,
          connection_allocation: a.allocation_id,
          echo: "hello from A"
        })
        expect(yield* gateway.openConnections).toBe(1)

        const stopped = yield* stop(orgA)
        const stoppedAt = Date.now()
        expect(stopped).toEqual({ organization_id: orgA, gateway_id: a.gateway_id, released: true, gateway_release: "done" })
        // The gateway answered its release once it had closed A's connections: the client is told now.
        expect(yield* gateway.openConnections).toBe(0)
        expect(yield* gateway.held).toBeNull()
        expect(yield* gateway.releases).toEqual([
          { organization_id: orgA, gateway_id: a.gateway_id, allocation_id: a.allocation_id }
        ])
        yield* awaitThat("A's WebSocket closed after A's stop", () => ws.closedAt() !== null, { withinMs: CLOSED_WITHIN_MS, spacingMs: 5 })
        // A close frame, when one came through, is the gateway's "allocation released".
        for (const code of ws.closeCodes) expect(code).toBe(1001)
        yield* Effect.log(
          `${routing}: A's WebSocket closed ${ws.closedAt()! - stoppedAt} ms after the stop returned; close frames ${
            JSON.stringify(ws.closeCodes)
          }`
        )
        yield* expectConsistent(stack, orgA, "absent")

        const b = yield* start(orgB)
        expect(b.gateway_id).toBe(a.gateway_id)
        // A's old socket is closed: nothing can be sent, and nothing arrives on it.
        expect(ws.send("hello from A's old socket")).toBe(false)
        // Not a wait for something: the window in which nothing (more) must arrive on A's socket.
        yield* Effect.sleep(Duration.millis(QUIET_MS))
        expect(ws.texts.filter((text) => names(text, b))).toEqual([])
        expect(ws.texts).toHaveLength(2)

        // B itself is served, by the same gateway, for B.
        const fresh = yield* viaNginx(stack, orgB)
        expect(fresh.status, fresh.body).toBe(200)
        expect(parseAnswer(fresh.body)).toMatchObject({ gateway: gateway.name, allocation: b.allocation_id, organization_id: orgB })
        yield* stop(orgB)
      }).pipe(Effect.scoped, Effect.ensuring(stopQuietly(orgA, orgB)))
    )
  })

  it.effect("SSE: the org's stream ends with its stop; no event after carries the next org", () => {
    const orgA = newOrg()
    const orgB = newOrg()
    return withStack((stack) =>
      Effect.gen(function*() {
        const gateway = onlyGateway(stack)
        const a = yield* start(orgA)
        const stream = yield* openStream(stack, hostnameOf(stack, orgA))
        yield* awaitThat("A's first events", () => stream.events.length >= 2, { withinMs: 5000, spacingMs: 5 })
        for (const event of stream.events) {
          expect(parseAnswer(event)).toMatchObject({
            gateway: gateway.name,
            allocation: a.allocation_id,
            organization_id: orgA,
            connection_allocation: a.allocation_id
          })
        }
        expect(stream.closedAt()).toBeNull()

        const stopped = yield* stop(orgA)
        const stoppedAt = Date.now()
        expect(stopped.gateway_release).toBe("done")
        expect(yield* gateway.openConnections).toBe(0)
        yield* awaitThat("A's stream ended after A's stop", () => stream.closedAt() !== null, { withinMs: CLOSED_WITHIN_MS, spacingMs: 5 })
        const eventsAtStop = stream.events.length
        yield* Effect.log(
          `${routing}: A's stream ended ${stream.closedAt()! - stoppedAt} ms after the stop returned; ${eventsAtStop} events`
        )

        const b = yield* start(orgB)
        expect(b.gateway_id).toBe(a.gateway_id)
        // Not a wait for something: the window in which nothing (more) must arrive on A's stream.
        yield* Effect.sleep(Duration.millis(QUIET_MS))
        expect(stream.events.filter((event) => names(event, b))).toEqual([])
        expect(stream.events).toHaveLength(eventsAtStop)
        for (const event of stream.events) expect(parseAnswer(event).allocation).toBe(a.allocation_id)

        const fresh = yield* viaNginx(stack, orgB)
        expect(fresh.status, fresh.body).toBe(200)
        expect(parseAnswer(fresh.body)).toMatchObject({ allocation: b.allocation_id, organization_id: orgB })
        yield* stop(orgB)
      }).pipe(Effect.scoped, Effect.ensuring(stopQuietly(orgA, orgB)))
    )
  })

  it.effect("negative control: a gateway that ignores the protocol (isolation off) lets the next org reach A's old WebSocket", () => {
    const orgA = newOrg()
    const orgB = newOrg()
    return withStack((stack) =>
      Effect.gen(function*() {
        const gateway = onlyGateway(stack)
        yield* gateway.setBehaviour({ isolation: "off" })
        const a = yield* start(orgA)
        const ws = yield* openWebSocket(stack, hostnameOf(stack, orgA))
        yield* awaitThat("the WebSocket's first frame", () => ws.texts.length >= 1, { withinMs: 5000, spacingMs: 5 })
        expect(parseAnswer(ws.texts[0]!)).toMatchObject({ allocation: a.allocation_id, organization_id: orgA })

        // The broken gateway confirms the release but closes nothing.
        expect((yield* stop(orgA)).gateway_release).toBe("done")
        const b = yield* start(orgB)
        expect(b.gateway_id).toBe(a.gateway_id)
        expect(ws.closedAt()).toBeNull()

        expect(ws.send("hello from A's old socket")).toBe(true)
        yield* awaitThat("an answer on A's old socket", () => ws.texts.length >= 2, { withinMs: 5000, spacingMs: 5 })
        // The leak the real tests rule out: A's connection is answered as B.
        const leaked = ws.texts.filter((text) => names(text, b))
        expect(leaked).toHaveLength(1)
        expect(parseAnswer(leaked[0]!)).toEqual({
          gateway: gateway.name,
          allocation: b.allocation_id,
          organization_id: orgB,
          connection_allocation: a.allocation_id,
          echo: "hello from A's old socket"
        })
        yield* stop(orgB)
      }).pipe(Effect.scoped, Effect.ensuring(stopQuietly(orgA, orgB)))
    )
  })

  it.effect("X-Gateway-Allocation: nginx replaces a forged one with the route's; the gateway answers 421 to a wrong one", () => {
    const org = newOrg()
    return withStack((stack) =>
      Effect.gen(function*() {
        const gateway = onlyGateway(stack)
        const a = yield* start(org)
        const forged = randomUUID()

        // Through nginx, a client-sent header of that name is replaced: the gateway saw A's own.
        const proxied = yield* viaNginx(stack, org, { "X-Gateway-Allocation": forged })
        expect(proxied.status, proxied.body).toBe(200)
        expect(parseAnswer(proxied.body)).toEqual({
          gateway: gateway.name,
          path: "/fresh",
          method: "GET",
          host: hostnameOf(stack, org),
          allocation: a.allocation_id,
          organization_id: org
        })

        // Straight to the gateway: a wrong allocation, or none, is misdirected; A's own is served.
        const direct = (headers: Readonly<Record<string, string>>) =>
          rawGet({ port: gateway.port, path: "/direct", headers: { host: hostnameOf(stack, org), ...headers } })
        const wrong = yield* direct({ "X-Gateway-Allocation": forged })
        expect(wrong.status, wrong.body).toBe(421)
        expect(JSON.parse(wrong.body)).toMatchObject({ allocation: forged, held: a.allocation_id })
        expect((yield* direct({})).status).toBe(421)
        const own = yield* direct({ "X-Gateway-Allocation": a.allocation_id })
        expect(own.status, own.body).toBe(200)
        expect(parseAnswer(own.body)).toMatchObject({ allocation: a.allocation_id, organization_id: org })
        yield* stop(org)
      }).pipe(Effect.ensuring(stopQuietly(org)))
    )
  })

  it.effect("release fails: the stop answers pending, the gateway is held back (503 for the next org) until the health pass releases it", () => {
    const orgA = newOrg()
    const orgB = newOrg()
    return withStack((stack) =>
      Effect.gen(function*() {
        const gateway = onlyGateway(stack)
        const a = yield* start(orgA)
        yield* gateway.setBehaviour({ release: "fail" })

        const stopped = yield* stop(orgA)
        expect(stopped).toEqual({ organization_id: orgA, gateway_id: a.gateway_id, released: true, gateway_release: "pending" })
        // The gateway was asked, said no, and still holds A.
        expect(yield* gateway.releases).toEqual([{ organization_id: orgA, gateway_id: a.gateway_id, allocation_id: a.allocation_id }])
        expect((yield* gateway.held)?.allocation_id).toBe(a.allocation_id)

        const held = yield* pool
        expect(held).toMatchObject({ total: 1, free: 1, allocated: 0, available: 0, unreleased: 1 })
        expect(held.gateways).toHaveLength(1)
        expect(held.gateways[0]).toMatchObject({
          gateway_id: a.gateway_id,
          allocation_id: null,
          health: "unreleased",
          unreleased_allocation_id: a.allocation_id
        })
        // A is over everywhere (routing, DNS, the API) even though its gateway is not back.
        yield* expectConsistent(stack, orgA, "absent")

        const refused = yield* post("/gateway/start", { organization_id: orgB })
        expect(refused.status, refused.text).toBe(503)
        expect(refused.json).toMatchObject({ _tag: "NoGatewayAvailable" })
        yield* expectConsistent(stack, orgB, "absent")
        expect(yield* gateway.handshakes).toHaveLength(1)

        // The gateway answers again: one health pass releases it and puts it back.
        yield* gateway.setBehaviour({ release: "ok" })
        yield* Effect.flatMap(GatewayHealth, (health) => health.runOnce)
        expect(yield* gateway.held).toBeNull()
        expect(yield* gateway.releases).toEqual([
          { organization_id: orgA, gateway_id: a.gateway_id, allocation_id: a.allocation_id },
          { organization_id: orgA, gateway_id: a.gateway_id, allocation_id: a.allocation_id }
        ])
        const back = yield* pool
        expect(back).toMatchObject({ total: 1, free: 1, allocated: 0, available: 1, unreleased: 0 })
        expect(back.gateways[0]).toMatchObject({ gateway_id: a.gateway_id, unreleased_allocation_id: null })
        expect(back.gateways[0].health).not.toBe("unreleased")

        const b = yield* start(orgB)
        expect(b.gateway_id).toBe(a.gateway_id)
        yield* expectConsistent(stack, orgB, "active")
        expect((yield* stop(orgB)).gateway_release).toBe("done")
      }).pipe(Effect.ensuring(stopQuietly(orgA, orgB)))
    )
  })

  it.effect("a handshake that timed out (the gateway took it, never answered) is released by the rollback, after routing is gone", () => {
    const org = newOrg()
    return withStack((stack) =>
      Effect.gen(function*() {
        const gateway = onlyGateway(stack)
        yield* gateway.setBehaviour({ handshake: "hang" })
        const response = yield* post("/gateway/start", { organization_id: org })
        expect(response.status, response.text).toBe(504)
        expect(response.json).toMatchObject({ _tag: "StepTimedOut", step: "handshake", timeout_ms: STEP_TIMEOUT_MS })
        const allocationId: string = response.json.allocation_id
        expect(reportOf(response.json.rollback)).toEqual(expected.rollback(undoOrder))

        // The gateway had taken the allocation; the rollback's release made it forget it.
        expect((yield* gateway.handshakes).map((body) => (body as { allocation_id?: string }).allocation_id)).toEqual([allocationId])
        expect(yield* gateway.held).toBeNull()
        const releases = yield* gateway.releases
        expect(releases).toEqual([{ organization_id: org, gateway_id: response.json.attempts[0].gateway_id, allocation_id: allocationId }])

        yield* expectConsistent(stack, org, "absent")
        const described = yield* get(`/allocations/${allocationId}`)
        expect(described.json.state).toBe("rolled_back")
        expect(yield* pool).toMatchObject({ total: 1, free: 1, allocated: 0, unreleased: 0 })
      }).pipe(Effect.ensuring(stopQuietly(org)))
    )
  })

  it.effect("the pool is whole afterwards: the one gateway free, nothing held back", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      expect(yield* pool).toMatchObject({ total: 1, free: 1, allocated: 0, unreleased: 0 })
      expect(yield* onlyGateway(stack).held).toBeNull()
    }))
})

describe("gateway release: an org's connections end with its allocation", () => {
  suite("lua")
  suite("reload")
})
