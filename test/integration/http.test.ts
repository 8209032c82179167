// The HTTP API of the README's API table over a real socket (HttpServerLive on 127.0.0.1), over the
// real stack (embedded Postgres, nginx, PowerDNS, sample gateways), driven with fetch. Every
// status code of the contract table, and what bad input and failed starts leave behind.
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { randomUUID } from "node:crypto"
import type { LocalStack } from "../../src/dev/stack.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { undoOrder } from "../../src/domain/steps.ts"
import { ApiServer, call, del, get, HttpApiLive, post } from "../support/http.ts"
import { expected, reportOf, rowsOf, stepsBefore, undoOrderOf } from "../support/journal.ts"
import { expectConsistent } from "../support/probes.ts"
import { edgeRoutes } from "../support/invariants.ts"
import { setAllGateways, StackLive, withStack } from "../support/stack.ts"

const STEP_TIMEOUT_MS = 2000

const newOrg = () => randomUUID() as OrganizationId

const poolNumbers = Effect.map(get("/pool"), (response) => {
  expect(response.status).toBe(200)
  const { allocated, free, total } = response.json as { total: number; free: number; allocated: number }
  return { total, free, allocated }
})

/** The orgs nginx holds a route for. */
const routesOf = (stack: LocalStack) => Effect.map(edgeRoutes(stack), ({ routes }) => [...routes.keys()].sort())

/** Stops the org if a test left it running (a failed assertion must not leak a gateway). */
const stopQuietly = (org: OrganizationId) => Effect.asVoid(post("/gateway/stop", { organization_id: org }))

/** Stops the org through the API, expecting 200. */
const stop = (org: OrganizationId) =>
  Effect.map(post("/gateway/stop", { organization_id: org }), (response) => {
    expect(response.status).toBe(200)
    return response.json
  })

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

layer(
  HttpApiLive({ STEP_TIMEOUT_MS: String(STEP_TIMEOUT_MS), RECONCILE_INTERVAL_MS: "3600000" }).pipe(
    Layer.provideMerge(StackLive())
  ),
  { timeout: 120_000, excludeTestServices: true }
)("HTTP API over a real socket", (it) => {
  describe("no auth", () => {
    it.effect("GET /healthz answers 200 without a token", () =>
      Effect.gen(function*() {
        const response = yield* get("/healthz", { token: null })
        expect(response.status).toBe(200)
        expect(response.json).toEqual({ status: "ok" })
      }))

    it.effect("GET /metrics answers 200 Prometheus text without a token", () =>
      Effect.gen(function*() {
        const response = yield* get("/metrics", { token: null })
        expect(response.status).toBe(200)
        expect(response.contentType ?? "").toMatch(/^text\/plain/)
        expect(response.text).toMatch(/^# (HELP|TYPE) /m)
      }))

    it.effect("GET /docs answers 200 with the API reference without a token", () =>
      Effect.gen(function*() {
        const response = yield* get("/docs", { token: null })
        expect(response.status).toBe(200)
        expect(response.contentType ?? "").toMatch(/^text\/html/)
        expect(response.text).toContain("/gateway/start")
      }))
  })

  describe("401", () => {
    const protectedCalls = (org: string) =>
      [
        ["POST", "/gateway/start", { organization_id: org }],
        ["POST", "/gateway/stop", { organization_id: org }],
        ["GET", `/gateway/${org}`, undefined],
        ["GET", `/allocations/${randomUUID()}`, undefined],
        ["GET", "/pool", undefined],
        ["POST", "/pool/gateways", { name: "never-added", upstream: "127.0.0.1:9" }],
        ["DELETE", `/pool/gateways/${randomUUID()}`, undefined]
      ] as const

    it.effect("every /gateway, /allocations and /pool call without a token, with a wrong one, or one off by its last char", () =>
      withStack((stack) =>
        Effect.gen(function*() {
          const server = yield* ApiServer
          const org = newOrg()
          const before = yield* poolNumbers
          const last = server.token.slice(-1)
          const tokens = [null, "wrong-token", server.token.slice(0, -1) + (last === "A" ? "B" : "A"), ""]
          for (const token of tokens) {
            for (const [method, path, body] of protectedCalls(org)) {
              const response = yield* call(method, path, body === undefined ? { token } : { token, body })
              expect({ token, method, path, status: response.status }).toEqual({ token, method, path, status: 401 })
            }
          }
          // Nothing happened behind the refused calls.
          expect(yield* poolNumbers).toEqual(before)
          expect((yield* get("/pool")).json.gateways.map((g: { name: string }) => g.name)).not.toContain("never-added")
          yield* expectConsistent(stack, org, "absent")
        })
      ))
  })

  describe("start, status, stop", () => {
    it.effect("200 start, 200 reused start, 200 status, 200 allocation, 200 stop, then 404s", () => {
      const org = newOrg()
      return withStack((stack) =>
        Effect.gen(function*() {
          const before = yield* poolNumbers

          const started = yield* post("/gateway/start", { organization_id: org })
          expect(started.status).toBe(200)
          expect(started.json).toEqual({
            organization_id: org,
            gateway_id: expect.stringMatching(uuidPattern),
            gateway_hostname: `org-${org}.domain.local`,
            allocation_id: expect.stringMatching(uuidPattern),
            reused: false
          })
          yield* expectConsistent(stack, org, "active")
          expect(yield* poolNumbers).toEqual({ ...before, free: before.free - 1, allocated: before.allocated + 1 })

          const again = yield* post("/gateway/start", { organization_id: org })
          expect(again.status).toBe(200)
          expect(again.json).toEqual({ ...started.json, reused: true })
          expect((yield* poolNumbers).free).toBe(before.free - 1)

          // Upper-case UUIDs name the same org.
          const upper = yield* post("/gateway/start", { organization_id: org.toUpperCase() })
          expect(upper.status).toBe(200)
          expect(upper.json).toEqual({ ...started.json, reused: true })

          const status = yield* get(`/gateway/${org}`)
          expect(status.status).toBe(200)
          expect(status.json).toMatchObject({
            organization_id: org,
            gateway_id: started.json.gateway_id,
            gateway_hostname: `org-${org}.domain.local`,
            allocation_id: started.json.allocation_id,
            state: "active"
          })

          const allocation = yield* get(`/allocations/${started.json.allocation_id}`)
          expect(allocation.status).toBe(200)
          expect(allocation.json).toMatchObject({
            allocation_id: started.json.allocation_id,
            organization_id: org,
            gateway_id: started.json.gateway_id,
            state: "active",
            rollback: []
          })
          expect(rowsOf(allocation.json.steps)).toEqual(expected.forward())

          expect(yield* stop(org)).toEqual({
            organization_id: org,
            gateway_id: started.json.gateway_id,
            released: true,
            gateway_release: "done"
          })
          yield* expectConsistent(stack, org, "absent")
          expect(yield* poolNumbers).toEqual(before)

          const gone = yield* get(`/gateway/${org}`)
          expect(gone.status).toBe(404)
          const stopAgain = yield* post("/gateway/stop", { organization_id: org })
          expect(stopAgain.status).toBe(404)

          // The allocation stays readable, with the stop's undos.
          const history = yield* get(`/allocations/${started.json.allocation_id}`)
          expect(history.status).toBe(200)
          expect(history.json.state).toBe("released")
          expect(reportOf(history.json.rollback)).toEqual(expected.rollback(undoOrder))
        }).pipe(Effect.ensuring(stopQuietly(org)))
      )
    })

    it.effect("404: stop, status and allocation of unknown ids", () =>
      Effect.gen(function*() {
        const org = newOrg()
        expect((yield* post("/gateway/stop", { organization_id: org })).status).toBe(404)
        expect((yield* get(`/gateway/${org}`)).status).toBe(404)
        expect((yield* get(`/allocations/${randomUUID()}`)).status).toBe(404)
      }))
  })

  describe("400: bad input is refused and changes nothing", () => {
    it.effect("start, stop, status, allocations and pool calls with invalid bodies or path params", () =>
      withStack((stack) =>
        Effect.gen(function*() {
          const before = yield* poolNumbers
          const gatewaysBefore = (yield* get("/pool")).json.gateways
          const filesBefore = yield* routesOf(stack)
          const org = newOrg()

          const cases = [
            ["start: non-UUID organization_id", post("/gateway/start", { organization_id: "not-a-uuid" })],
            ["start: UUID with junk", post("/gateway/start", { organization_id: `${org}x` })],
            ["start: number", post("/gateway/start", { organization_id: 42 })],
            ["start: missing field", post("/gateway/start", {})],
            ["start: not JSON", post("/gateway/start", undefined, { rawBody: "{organization_id: nope" })],
            ["start: empty body", post("/gateway/start", undefined, { rawBody: "" })],
            [
              "start: body over 64 KiB",
              post("/gateway/start", { organization_id: org, padding: "x".repeat(70 * 1024) })
            ],
            ["stop: non-UUID organization_id", post("/gateway/stop", { organization_id: "../../etc" })],
            ["status: non-UUID path", get("/gateway/not-a-uuid")],
            ["allocations: non-UUID path", get("/allocations/12345")],
            ["remove gateway: non-UUID path", del("/pool/gateways/xyz")],
            ["add gateway: upstream without port", post("/pool/gateways", { name: "bad-1", upstream: "127.0.0.1" })],
            ["add gateway: space in host", post("/pool/gateways", { name: "bad-2", upstream: "a b:80" })],
            ["add gateway: semicolon", post("/pool/gateways", { name: "bad-3", upstream: "x;y:80" })],
            ["add gateway: quote", post("/pool/gateways", { name: "bad-4", upstream: "x\"y:80" })],
            ["add gateway: port 0", post("/pool/gateways", { name: "bad-5", upstream: "127.0.0.1:0" })],
            ["add gateway: port 65536", post("/pool/gateways", { name: "bad-6", upstream: "127.0.0.1:65536" })],
            ["add gateway: name too long", post("/pool/gateways", { name: "a".repeat(64), upstream: "127.0.0.1:9" })],
            ["add gateway: name with space", post("/pool/gateways", { name: "a b", upstream: "127.0.0.1:9" })],
            ["add gateway: missing upstream", post("/pool/gateways", { name: "bad-7" })]
          ] as const
          // Every case's outcome side by side, so one run shows every deviation. The README's API table:
          // all bodies are JSON, errors included.
          const outcomes = []
          for (const [name, request] of cases) {
            const response = yield* request
            outcomes.push({
              name,
              status: response.status,
              jsonBody: response.json !== undefined ? true : `not JSON: ${JSON.stringify(response.text.slice(0, 160))}`
            })
          }
          expect(outcomes).toEqual(cases.map(([name]) => ({ name, status: 400, jsonBody: true })))

          expect(yield* poolNumbers).toEqual(before)
          expect((yield* get("/pool")).json.gateways).toEqual(gatewaysBefore)
          expect(yield* routesOf(stack)).toEqual(filesBefore)
          yield* expectConsistent(stack, org, "absent")
        })
      ))
  })

  describe("failed starts", () => {
    it.effect("503 when no gateway is free: nothing is created for the refused org", () =>
      withStack((stack) =>
        Effect.gen(function*() {
          const before = yield* poolNumbers
          const orgs = Array.from({ length: before.free }, newOrg)
          const stopAll = Effect.forEach(orgs, stopQuietly, { discard: true })
          yield* Effect.gen(function*() {
            for (const org of orgs) {
              expect((yield* post("/gateway/start", { organization_id: org })).status).toBe(200)
            }
            expect(yield* poolNumbers).toEqual({ total: before.total, free: 0, allocated: before.total })

            const refused = newOrg()
            const response = yield* post("/gateway/start", { organization_id: refused })
            expect(response.status).toBe(503)
            expect(response.json.message).toMatch(/no gateway/i)
            yield* expectConsistent(stack, refused, "absent")
            expect(yield* poolNumbers).toEqual({ total: before.total, free: 0, allocated: before.total })
          }).pipe(Effect.ensuring(stopAll))
          expect(yield* poolNumbers).toEqual(before)
        })
      ))

    const failedHandshakes = [
      {
        answer: "502 with step, message, allocation_id and rollback when the handshake answers 500",
        handshake: "fail",
        status: 502,
        body: { message: expect.stringContaining("HTTP 500") },
        // The gateway refused the handshake: nothing to release.
        rollback: expected.rollback(undoOrderOf(stepsBefore("handshake"))),
        event: "handshake:failed"
      },
      {
        answer: "504 with step and timeout_ms when the handshake never answers",
        handshake: "hang",
        status: 504,
        body: { timeout_ms: STEP_TIMEOUT_MS },
        // The handshake reached the gateway (it never answered): it is released once routing is gone.
        rollback: expected.rollback(undoOrder),
        event: "handshake:timed_out"
      }
    ] as const
    for (const failed of failedHandshakes) {
      it.effect(failed.answer, () =>
        withStack((stack) =>
          Effect.gen(function*() {
            const org = newOrg()
            const before = yield* poolNumbers
            yield* setAllGateways(stack, { handshake: failed.handshake })
            const response = yield* post("/gateway/start", { organization_id: org })
            expect(response.status).toBe(failed.status)
            expect(response.json).toMatchObject({
              step: "handshake",
              ...failed.body,
              allocation_id: expect.stringMatching(uuidPattern)
            })
            expect(reportOf(response.json.rollback)).toEqual(failed.rollback)
            expect(yield* poolNumbers).toEqual(before)
            yield* expectConsistent(stack, org, "absent")

            // The journal behind GET /allocations shows the failure and the same rollback.
            const allocation = yield* get(`/allocations/${response.json.allocation_id}`)
            expect(allocation.status).toBe(200)
            expect(allocation.json.state).toBe("rolled_back")
            expect(allocation.json.organization_id).toBe(org)
            expect(rowsOf(allocation.json.steps)).toContain(failed.event)
            expect(reportOf(allocation.json.rollback)).toEqual(reportOf(response.json.rollback))
            expect((yield* get(`/gateway/${org}`)).status).toBe(404)
          })
        ))
    }

    it.effect("twelve failed starts in a row leave GET /pool's free unchanged and no route left at nginx", () =>
      withStack((stack) =>
        Effect.gen(function*() {
          const before = yield* poolNumbers
          const filesBefore = yield* routesOf(stack)
          yield* setAllGateways(stack, { handshake: "fail" })
          const orgs = Array.from({ length: 12 }, newOrg)
          for (const org of orgs) {
            const response = yield* post("/gateway/start", { organization_id: org })
            expect({ org, status: response.status, step: response.json?.step }).toEqual({
              org,
              status: 502,
              step: "handshake"
            })
            const numbers = yield* poolNumbers
            expect(numbers).toEqual(before)
            expect(numbers.free + numbers.allocated).toBe(numbers.total)
          }
          expect(yield* routesOf(stack)).toEqual(filesBefore)
          for (const org of orgs) yield* expectConsistent(stack, org, "absent")
        })
      ))
  })

  describe("pool", () => {
    it.effect("GET /pool: numbers, free + allocated = total, one row per gateway", () =>
      withStack((stack) =>
        Effect.gen(function*() {
          const response = yield* get("/pool")
          expect(response.status).toBe(200)
          const { allocated, free, gateways, total } = response.json
          expect([typeof total, typeof free, typeof allocated]).toEqual(["number", "number", "number"])
          expect(free + allocated).toBe(total)
          expect(total).toBe(stack.gateways.length)
          expect(gateways).toHaveLength(total)
          expect(gateways.map((g: { name: string }) => g.name).sort()).toEqual(stack.gateways.map((g) => g.name).sort())

          // With one org started, allocated counts it.
          const org = newOrg()
          yield* Effect.gen(function*() {
            expect((yield* post("/gateway/start", { organization_id: org })).status).toBe(200)
            const during = yield* poolNumbers
            expect(during).toEqual({ total, free: free - 1, allocated: allocated + 1 })
            yield* stop(org)
          }).pipe(Effect.ensuring(stopQuietly(org)))
          expect(yield* poolNumbers).toEqual({ total, free, allocated })
        })
      ))

    it.effect("POST /pool/gateways 201, 409 for a taken name; DELETE 200, then 404", () =>
      Effect.gen(function*() {
        const before = yield* poolNumbers
        const name = `extra-${randomUUID().slice(0, 8)}`
        const added = yield* post("/pool/gateways", { name, upstream: "127.0.0.1:9" })
        expect(added.status).toBe(201)
        expect(added.json).toEqual({ gateway_id: expect.stringMatching(uuidPattern), name, upstream: "127.0.0.1:9" })
        const id: string = added.json.gateway_id
        yield* Effect.gen(function*() {
          expect(yield* poolNumbers).toEqual({ ...before, total: before.total + 1, free: before.free + 1 })

          const duplicate = yield* post("/pool/gateways", { name, upstream: "127.0.0.1:10" })
          expect(duplicate.status).toBe(409)
          expect((yield* get("/pool")).json.gateways.filter((g: { name: string }) => g.name === name)).toEqual([
            {
              gateway_id: id,
              name,
              upstream: "127.0.0.1:9",
              allocation_id: null,
              state: "active",
              health: "unknown",
              unreleased_allocation_id: null,
              quarantined_until: null,
              last_failure: null,
              held_by_edges: []
            }
          ])

          // Hostnames and bracketed IPv6 are upstreams too.
          const host = yield* post("/pool/gateways", { name: `${name}-h`, upstream: "gw.internal:8080" })
          expect(host.status).toBe(201)
          expect((yield* del(`/pool/gateways/${host.json.gateway_id}`)).status).toBe(200)
          const v6 = yield* post("/pool/gateways", { name: `${name}-6`, upstream: "[::1]:8080" })
          expect(v6.status).toBe(201)
          expect((yield* del(`/pool/gateways/${v6.json.gateway_id}`)).status).toBe(200)
        }).pipe(Effect.ensuring(Effect.ignore(del(`/pool/gateways/${id}`))))

        expect(yield* poolNumbers).toEqual(before)
        const again = yield* del(`/pool/gateways/${id}`)
        expect(again.status).toBe(404)
        expect((yield* del(`/pool/gateways/${randomUUID()}`)).status).toBe(404)
      }))

    it.effect("DELETE /pool/gateways/{id} 200 removes, 409 while the gateway is allocated", () =>
      withStack((stack) =>
        Effect.gen(function*() {
          const org = newOrg()
          const started = yield* post("/gateway/start", { organization_id: org })
          expect(started.status).toBe(200)
          const before = yield* poolNumbers
          yield* Effect.gen(function*() {
            const refused = yield* del(`/pool/gateways/${started.json.gateway_id}`)
            expect(refused.status).toBe(409)
            expect(yield* poolNumbers).toEqual(before)
            yield* expectConsistent(stack, org, "active")
          }).pipe(Effect.ensuring(stopQuietly(org)))

          // A freed gateway can be removed (and is put back for the other tests).
          const gateway = (yield* get("/pool")).json.gateways.find(
            (g: { gateway_id: string }) => g.gateway_id === started.json.gateway_id
          )
          const removed = yield* del(`/pool/gateways/${gateway.gateway_id}`)
          expect(removed.status).toBe(200)
          expect(removed.json).toEqual({ gateway_id: gateway.gateway_id, removed: true })
          expect((yield* poolNumbers).total).toBe(before.total - 1)
          const readded = yield* post("/pool/gateways", { name: gateway.name, upstream: gateway.upstream })
          expect(readded.status).toBe(201)
          expect((yield* poolNumbers).total).toBe(before.total)
        })
      ))
  })
})
