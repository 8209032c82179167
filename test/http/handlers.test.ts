// The HTTP handlers IN MEMORY: the real HttpApi (HttpAppLive: auth, handlers, error mapping) served
// by NodeHttpServer.layerTest over the allocation core (makeServices) wired to the in-memory outside
// systems of test/support/TestLayers.ts, and driven through the typed HttpApiClient. This suite
// proves the handlers' mapping: domain results and errors to response bodies, error tags and
// statuses, with faults injected at will and no outside process. test/integration/http.test.ts
// proves the same API over a real socket against the real stack (Postgres, nginx, PowerDNS,
// sample gateways), driven with fetch.
//
// Every test builds its own world (fresh TestWorld, two free gateways, fresh server), so faults
// and allocations never leak between tests. The tests run on real time (`it.live`): step and undo
// timeouts must really fire.
import { HttpApiClient, HttpClient, HttpClientRequest, type HttpClientResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel } from "effect"
import { randomUUID } from "node:crypto"
import type { AllocationId, GatewayId, GatewayName, OrganizationId, Upstream } from "../../src/domain/ids.ts"
import { undoOrder } from "../../src/domain/steps.ts"
import { Api } from "../../src/http/Api.ts"
import {
  Conflict,
  NoGatewayAvailableResponse as NoGatewayAvailable,
  NotFound,
  StepFailedResponse as StepFailed,
  StepTimedOutResponse as StepTimedOut,
  Unauthorized
} from "../../src/http/errors.ts"
import { HttpAppLive } from "../../src/http/server.ts"
import { expected, reportOf, rowsOf, stepsBefore, undoOrderOf } from "../support/journal.ts"
import { configFrom } from "../support/stack.ts"
import { clearFaults, setFault, TestWorld } from "../support/TestLayers.ts"
import { testServices, testUpstreams } from "../support/testServices.ts"

const API_TOKEN = "handlers-in-memory-token"

const baseEnv = {
  STEP_TIMEOUT_MS: "1000",
  UNDO_TIMEOUT_MS: "500",
  SHUTDOWN_GRACE_MS: "300",
  RECONCILE_INTERVAL_MS: "3600000",
  // One gateway per start: these cases are about the mapping of one attempt (retries: test/unit/gateways.test.ts).
  START_ATTEMPTS: "1",
  API_TOKEN
}

/** The short limits of the hanging-step test: real time, so they are kept small. */
const HANG_TIMEOUT_MS = 300

/** The pool of `testServices`: gw-1 and gw-2. */
const GATEWAYS = testUpstreams(2).map((upstream, i) => ({ name: `gw-${i + 1}`, upstream }))

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

const newOrg = () => randomUUID() as OrganizationId

// ---------------------------------------------------------------------------------------------
// The world: services, served API, typed client
// ---------------------------------------------------------------------------------------------

/**
 * A fresh in-memory world per test: testServices (GATEWAYS in the pool) configured by baseEnv,
 * HttpAppLive served by NodeHttpServer.layerTest (which also provides an HttpClient already
 * pointed at the server). Request logs are kept out of the test output.
 */
const InMemoryApi = (env: Readonly<Record<string, string>> = {}) => {
  const config = { ...baseEnv, ...env }
  return HttpAppLive.pipe(
    Layer.provideMerge(NodeHttpServer.layerTest),
    Layer.provideMerge(testServices({ gateways: GATEWAYS.length, env: config })),
    Layer.provide(configFrom(config)),
    Layer.provide(Logger.minimumLogLevel(LogLevel.Error))
  )
}

/**
 * The typed client of `Api`, sending `token` as the bearer token (none when null), and recording
 * the HTTP status of every response it receives (`lastStatus`), so the tests check the status
 * the handler's error maps to as well as the decoded error.
 *
 * No `baseUrl`: layerTest's HttpClient already prefixes every request with the test server's
 * address (HttpApiClient's `baseUrl` would be prefixed in front of that one).
 */
const makeClient = (token: string | null) =>
  Effect.gen(function*() {
    const statuses: Array<number> = []
    const api = yield* HttpApiClient.make(Api, {
      transformClient: (client) =>
        (token === null ? client : HttpClient.mapRequest(client, HttpClientRequest.bearerToken(token))).pipe(
          HttpClient.tap((response) => Effect.sync(() => statuses.push(response.status)))
        )
    })
    return { api, lastStatus: () => statuses.at(-1) }
  })

type Client = Effect.Effect.Success<ReturnType<typeof makeClient>>

/** Runs `body` with an authorized typed client in a fresh in-memory world. */
const withApi = <A, E>(
  body: (client: Client) => Effect.Effect<A, E, TestWorld | HttpClient.HttpClient>,
  env: Readonly<Record<string, string>> = {}
) => Effect.flatMap(makeClient(API_TOKEN), body).pipe(Effect.provide(InMemoryApi(env)))

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

const poolCounts = ({ api }: Client) =>
  Effect.map(api.pool.get(), ({ allocated, free, total }) => ({ total, free, allocated }))

/** Starts the org and expects it to succeed. */
const start = ({ api }: Client, org: OrganizationId) => api.gateway.start({ payload: { organization_id: org } })

/** Starts the org and returns the typed client's error (the test fails if the start succeeds). */
const startError = ({ api }: Client, org: OrganizationId) =>
  api.gateway.start({ payload: { organization_id: org } }).pipe(Effect.flip)

// ---------------------------------------------------------------------------------------------

describe("HTTP handlers in memory (typed client over NodeHttpServer.layerTest)", () => {
  describe("start and status", () => {
    it.live("start: 200 with the org's gateway (org id lowercased, hostname org-{uuid}.domain.local); a second start is reused", () =>
      withApi((client) =>
        Effect.gen(function*() {
          const org = newOrg()

          // The typed client encodes organization_id through the API's own schema, which only
          // admits lowercase UUIDs; the upper-case form is sent raw through layerTest's HttpClient.
          const http = yield* HttpClient.HttpClient
          const raw: HttpClientResponse.HttpClientResponse = yield* http.execute(
            HttpClientRequest.post("/gateway/start").pipe(
              HttpClientRequest.bearerToken(API_TOKEN),
              HttpClientRequest.bodyUnsafeJson({ organization_id: org.toUpperCase() })
            )
          )
          expect(raw.status).toBe(200)
          const first = (yield* raw.json) as Record<string, unknown>
          expect(first).toEqual({
            organization_id: org,
            gateway_id: expect.stringMatching(uuidPattern),
            gateway_hostname: `org-${org}.domain.local`,
            allocation_id: expect.stringMatching(uuidPattern),
            reused: false
          })
          const pool = yield* client.api.pool.get()
          expect(pool.gateways.find((g) => g.gateway_id === first["gateway_id"])).toMatchObject({
            allocation_id: first["allocation_id"]
          })

          const again = yield* start(client, org)
          expect(client.lastStatus()).toBe(200)
          expect(again).toEqual({ ...first, reused: true })
          expect(yield* poolCounts(client)).toEqual({ total: 2, free: 1, allocated: 1 })
        })
      ))

    it.live("status: 200 active with the gateway's upstream after a start; NotFound (404) for an org with nothing", () =>
      withApi((client) =>
        Effect.gen(function*() {
          const org = newOrg()
          const started = yield* start(client, org)
          const upstream = (yield* client.api.pool.get()).gateways.find((g) => g.gateway_id === started.gateway_id)
            ?.upstream

          const status = yield* client.api.gateway.status({ path: { organization_id: org } })
          expect(client.lastStatus()).toBe(200)
          expect(status).toEqual({
            organization_id: org,
            gateway_id: started.gateway_id,
            gateway_hostname: `org-${org}.domain.local`,
            allocation_id: started.allocation_id,
            upstream,
            state: "active"
          })
          expect(GATEWAYS.map((g) => g.upstream)).toContain(status.upstream)

          const nobody = newOrg()
          const missing = yield* client.api.gateway.status({ path: { organization_id: nobody } }).pipe(Effect.flip)
          expect(client.lastStatus()).toBe(404)
          expect(missing).toBeInstanceOf(NotFound)
          expect(missing._tag).toBe("NotFound")
        })
      ))
  })

  describe("failed starts", () => {
    it.live("StepFailed (502) at handshake: allocation_id and the rollback nginx-reload, nginx-config, dns, allocate all done", () =>
      withApi((client) =>
        Effect.gen(function*() {
          yield* setFault("handshake.handshake", "fail")
          const org = newOrg()
          const error = yield* startError(client, org)
          expect(client.lastStatus()).toBe(502)
          expect(error).toBeInstanceOf(StepFailed)
          if (!(error instanceof StepFailed)) return
          expect(error.step).toBe("handshake")
          expect(error.message).toContain("HTTP 500")
          expect(error.allocation_id).toMatch(uuidPattern)
          expect(reportOf(error.rollback)).toEqual(expected.rollback(undoOrderOf(stepsBefore("handshake"))))

          // Nothing is left: the gateway is free again and the org has no live allocation.
          expect(yield* poolCounts(client)).toEqual({ total: 2, free: 2, allocated: 0 })
          const status = yield* client.api.gateway.status({ path: { organization_id: org } }).pipe(Effect.flip)
          expect(status._tag).toBe("NotFound")
        })
      ))

    it.live("StepTimedOut (504) with timeout_ms = STEP_TIMEOUT_MS when the handshake hangs", () =>
      withApi((client) =>
        Effect.gen(function*() {
          yield* setFault("handshake.handshake", "hang")
          const error = yield* startError(client, newOrg())
          expect(client.lastStatus()).toBe(504)
          expect(error).toBeInstanceOf(StepTimedOut)
          if (!(error instanceof StepTimedOut)) return
          expect(error.step).toBe("handshake")
          expect(error.timeout_ms).toBe(HANG_TIMEOUT_MS)
          expect(error.allocation_id).toMatch(uuidPattern)
          // The handshake may have reached the gateway: it is released once routing is gone.
          expect(reportOf(error.rollback)).toEqual(expected.rollback(undoOrder))
          expect(yield* poolCounts(client)).toEqual({ total: 2, free: 2, allocated: 0 })
        }), { STEP_TIMEOUT_MS: String(HANG_TIMEOUT_MS), UNDO_TIMEOUT_MS: String(HANG_TIMEOUT_MS) }))

    it.live("NoGatewayAvailable (503) once both gateways are taken by two orgs; nothing changes", () =>
      withApi((client) =>
        Effect.gen(function*() {
          yield* start(client, newOrg())
          yield* start(client, newOrg())
          expect(yield* poolCounts(client)).toEqual({ total: 2, free: 0, allocated: 2 })

          const refused = newOrg()
          const error = yield* startError(client, refused)
          expect(client.lastStatus()).toBe(503)
          expect(error).toBeInstanceOf(NoGatewayAvailable)
          expect(error._tag).toBe("NoGatewayAvailable")
          expect(error.message).toMatch(/no gateway/i)

          expect(yield* poolCounts(client)).toEqual({ total: 2, free: 0, allocated: 2 })
          const status = yield* client.api.gateway.status({ path: { organization_id: refused } }).pipe(Effect.flip)
          expect(status._tag).toBe("NotFound")
        })
      ))
  })

  describe("stop", () => {
    it.live("stop: 200 {organization_id, gateway_id, released: true}; stopping again is NotFound (404)", () =>
      withApi((client) =>
        Effect.gen(function*() {
          const org = newOrg()
          const started = yield* start(client, org)

          const stopped = yield* client.api.gateway.stop({ payload: { organization_id: org } })
          expect(client.lastStatus()).toBe(200)
          expect(stopped).toEqual({ organization_id: org, gateway_id: started.gateway_id, released: true, gateway_release: "done" })
          expect(yield* poolCounts(client)).toEqual({ total: 2, free: 2, allocated: 0 })

          const again = yield* client.api.gateway.stop({ payload: { organization_id: org } }).pipe(Effect.flip)
          expect(client.lastStatus()).toBe(404)
          expect(again).toBeInstanceOf(NotFound)
          expect(again._tag).toBe("NotFound")
          const status = yield* client.api.gateway.status({ path: { organization_id: org } }).pipe(Effect.flip)
          expect(status._tag).toBe("NotFound")
        })
      ))
  })

  describe("allocations", () => {
    it.live("GET /allocations/{id} of a failed start: the journal's steps and the rollback from the journal", () =>
      withApi((client) =>
        Effect.gen(function*() {
          yield* setFault("handshake.handshake", "fail")
          const org = newOrg()
          const error = yield* startError(client, org)
          if (!(error instanceof StepFailed) || error.allocation_id === undefined) {
            return expect.fail(`expected StepFailed with an allocation_id, got ${JSON.stringify(error)}`)
          }

          const allocation = yield* client.api.allocations.get({
            path: { allocation_id: error.allocation_id as AllocationId }
          })
          expect(client.lastStatus()).toBe(200)
          expect(allocation).toMatchObject({
            allocation_id: error.allocation_id,
            organization_id: org,
            gateway_hostname: `org-${org}.domain.local`,
            state: "rolled_back"
          })
          // The in-memory claim writes no row of its own (Postgres's writes allocate:completed).
          expect(rowsOf(allocation.steps)).toEqual([
            ...expected.forward(["dns", "nginx-config", "nginx-reload"]),
            "handshake:started",
            "handshake:failed",
            ...expected.undone(undoOrderOf(stepsBefore("handshake")))
          ])
          expect(allocation.steps.every((entry) => entry.actor === "request")).toBe(true)
          expect(allocation.steps.find((entry) => entry.event === "failed")?.detail).toContain("HTTP 500")
          // The rollback rebuilt from the journal is the one the failed start answered.
          expect(reportOf(allocation.rollback)).toEqual(reportOf(error.rollback))
          expect(reportOf(allocation.rollback)).toEqual(expected.rollback(undoOrderOf(stepsBefore("handshake"))))
        })
      ))

    it.live("GET /allocations: newest first, each with its journal; filtered by state and organization_id (any case); limit", () =>
      withApi((client) =>
        Effect.gen(function*() {
          const [first, failed, last] = [newOrg(), newOrg(), newOrg()]
          yield* start(client, first)
          yield* client.api.gateway.stop({ payload: { organization_id: first } })
          yield* setFault("handshake.handshake", "fail")
          yield* startError(client, failed)
          yield* clearFaults
          yield* start(client, last)
          const list = (urlParams: Parameters<Client["api"]["allocations"]["list"]>[0]["urlParams"]) =>
            Effect.map(client.api.allocations.list({ urlParams }), ({ allocations }) => allocations)

          const all = yield* list({ limit: 50 })
          expect(client.lastStatus()).toBe(200)
          expect(all.map((a) => [a.organization_id, a.state])).toEqual([
            [last, "active"],
            [failed, "rolled_back"],
            [first, "released"]
          ])
          // Each the same body as GET /allocations/{id}.
          const one = yield* client.api.allocations.get({ path: { allocation_id: all[1]?.allocation_id ?? ("" as AllocationId) } })
          expect(all[1]).toEqual(one)
          expect(reportOf(one.rollback)).toEqual(expected.rollback(undoOrderOf(stepsBefore("handshake"))))

          expect((yield* list({ state: "rolled_back", limit: 50 })).map((a) => a.organization_id)).toEqual([failed])
          expect((yield* list({ organization_id: first, limit: 50 })).map((a) => a.state)).toEqual(["released"])
          expect((yield* list({ state: "active", organization_id: first, limit: 50 }))).toEqual([])
          expect((yield* list({ limit: 2 })).map((a) => a.organization_id)).toEqual([last, failed])

          // Raw, as a browser sends it: an upper-case org id, no limit.
          const http = yield* HttpClient.HttpClient
          const raw = yield* http.execute(
            HttpClientRequest.get(`/allocations?organization_id=${failed.toUpperCase()}`).pipe(HttpClientRequest.bearerToken(API_TOKEN))
          )
          expect(raw.status).toBe(200)
          const body = (yield* raw.json) as { allocations: Array<{ organization_id: string }> }
          expect(body.allocations.map((a) => a.organization_id)).toEqual([failed])
        })
      ))

    it.live("GET /allocations: at most 50 without a limit, up to 500 with one", () =>
      withApi((client) =>
        Effect.gen(function*() {
          // PowerDNS refuses: a failed start that does not set its gateway aside, so every one claims.
          yield* setFault("dns.upsert", "fail")
          for (let i = 0; i < 51; i++) yield* startError(client, newOrg())
          expect((yield* client.api.allocations.list({ urlParams: { limit: 500 } })).allocations).toHaveLength(51)
          const http = yield* HttpClient.HttpClient
          const raw = yield* http.execute(HttpClientRequest.get("/allocations").pipe(HttpClientRequest.bearerToken(API_TOKEN)))
          expect(((yield* raw.json) as { allocations: Array<unknown> }).allocations).toHaveLength(50)
        })
      ))

    it.live("GET /allocations: a bad query is a 400 naming the parameter; no token is a 401", () =>
      withApi(() =>
        Effect.gen(function*() {
          const http = yield* HttpClient.HttpClient
          const get = (query: string, token: string | null = API_TOKEN) =>
            http.execute(
              HttpClientRequest.get(`/allocations?${query}`).pipe(
                token === null ? (request) => request : HttpClientRequest.bearerToken(token)
              )
            ).pipe(Effect.flatMap((response) => Effect.map(response.text, (text) => ({ status: response.status, text }))))
          for (
            const [query, named] of [
              ["state=finished", "state"],
              ["state=", "state"],
              ["organization_id=not-a-uuid", "organization_id"],
              ["limit=0", "limit"],
              ["limit=501", "limit"],
              ["limit=ten", "limit"],
              ["limit=2.5", "limit"]
            ]
          ) {
            const answer = yield* get(query)
            expect({ query, status: answer.status }).toEqual({ query, status: 400 })
            expect(answer.text).toContain(named)
          }
          for (const limit of ["1", "500"]) expect((yield* get(`limit=${limit}`)).status).toBe(200)
          expect((yield* get("state=active", null)).status).toBe(401)
          expect((yield* get("state=active", "wrong-token-but-long-enough")).status).toBe(401)
        })
      ))

    it.live("GET /allocations/{id} of an unknown id: NotFound (404)", () =>
      withApi((client) =>
        Effect.gen(function*() {
          const missing = yield* client.api.allocations.get({
            path: { allocation_id: randomUUID() as AllocationId }
          }).pipe(Effect.flip)
          expect(client.lastStatus()).toBe(404)
          expect(missing).toBeInstanceOf(NotFound)
        })
      ))
  })

  describe("pool", () => {
    it.live("GET /pool: counts {total, free, allocated} and one row per gateway, before and after a start", () =>
      withApi((client) =>
        Effect.gen(function*() {
          const before = yield* client.api.pool.get()
          expect(client.lastStatus()).toBe(200)
          expect(before).toEqual({
            total: 2,
            free: 2,
            allocated: 0,
            available: 2,
            quarantined: 0,
            draining: 0,
            unreleased: 0,
            held: 0,
            gateways: GATEWAYS.map(({ name, upstream }) => ({
              gateway_id: expect.stringMatching(uuidPattern),
              name,
              upstream,
              allocation_id: null,
              state: "active",
              health: "unknown",
              unreleased_allocation_id: null,
              quarantined_until: null,
              last_failure: null,
              held_by_edges: []
            }))
          })

          const org = newOrg()
          const started = yield* start(client, org)
          const after = yield* client.api.pool.get()
          expect({ total: after.total, free: after.free, allocated: after.allocated }).toEqual({
            total: 2,
            free: 1,
            allocated: 1
          })
          expect(after.gateways.filter((g) => g.allocation_id !== null)).toEqual([
            {
              gateway_id: started.gateway_id,
              name: expect.any(String),
              upstream: expect.any(String),
              allocation_id: started.allocation_id,
              state: "active",
              health: "healthy",
              unreleased_allocation_id: null,
              quarantined_until: null,
              last_failure: null,
              held_by_edges: []
            }
          ])
        })
      ))

    it.live("POST /pool/gateways: 201 with the new gateway, then Conflict (409) for a taken name", () =>
      withApi((client) =>
        Effect.gen(function*() {
          const added = yield* client.api.pool.addGateway({
            payload: { name: "gw-3" as GatewayName, upstream: "gw.internal:8080" as Upstream }
          })
          expect(client.lastStatus()).toBe(201)
          expect(added).toEqual({ gateway_id: expect.stringMatching(uuidPattern), name: "gw-3", upstream: "gw.internal:8080" })
          expect(yield* poolCounts(client)).toEqual({ total: 3, free: 3, allocated: 0 })

          const taken = yield* client.api.pool.addGateway({
            payload: { name: "gw-1" as GatewayName, upstream: "127.0.0.1:9999" as Upstream }
          }).pipe(Effect.flip)
          expect(client.lastStatus()).toBe(409)
          expect(taken).toBeInstanceOf(Conflict)
          expect(taken.message).toContain("gw-1")
          const pool = yield* client.api.pool.get()
          expect(pool.total).toBe(3)
          expect(pool.gateways.filter((g) => g.name === "gw-1").map((g) => g.upstream)).toEqual(["127.0.0.1:9001"])
        })
      ))

    it.live("DELETE /pool/gateways/{id}: Conflict (409) when allocated, NotFound (404) when unknown, 200 when free", () =>
      withApi((client) =>
        Effect.gen(function*() {
          const started = yield* start(client, newOrg())

          const allocated = yield* client.api.pool.removeGateway({ path: { gateway_id: started.gateway_id } })
            .pipe(Effect.flip)
          expect(client.lastStatus()).toBe(409)
          expect(allocated).toBeInstanceOf(Conflict)
          expect(yield* poolCounts(client)).toEqual({ total: 2, free: 1, allocated: 1 })

          const unknown = yield* client.api.pool.removeGateway({ path: { gateway_id: randomUUID() as GatewayId } })
            .pipe(Effect.flip)
          expect(client.lastStatus()).toBe(404)
          expect(unknown).toBeInstanceOf(NotFound)

          const free = (yield* client.api.pool.get()).gateways.find((g) => g.allocation_id === null)
          if (free === undefined) return expect.fail("expected a free gateway")
          const removed = yield* client.api.pool.removeGateway({ path: { gateway_id: free.gateway_id } })
          expect(client.lastStatus()).toBe(200)
          expect(removed).toEqual({ gateway_id: free.gateway_id, removed: true })
          const after = yield* client.api.pool.get()
          expect({ total: after.total, free: after.free, allocated: after.allocated }).toEqual({
            total: 1,
            free: 0,
            allocated: 1
          })
          expect(after.gateways.map((g) => g.gateway_id)).toEqual([started.gateway_id])
        })
      ))
  })

  describe("console", () => {
    it.live("GET /console and its two files: no auth, their content types, the Content-Security-Policy and nosniff; nothing else", () =>
      withApi(() =>
        Effect.gen(function*() {
          const http = yield* HttpClient.HttpClient
          const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
          for (
            const [path, type, content] of [
              ["/console", "text/html; charset=utf-8", "<script type=\"module\" src=\"/console/console.js\">"],
              ["/console/console.js", "text/javascript; charset=utf-8", "// @ts-check"],
              ["/console/console.css", "text/css; charset=utf-8", ".waterfall"]
            ]
          ) {
            const response = yield* http.execute(HttpClientRequest.get(path))
            expect({ path, status: response.status }).toEqual({ path, status: 200 })
            expect(response.headers["content-type"]).toBe(type)
            expect(response.headers["content-security-policy"]).toBe(csp)
            expect(response.headers["x-content-type-options"]).toBe("nosniff")
            expect(yield* response.text).toContain(content)
          }
          for (const path of ["/console/index.html", "/console/tsconfig.json", "/console/..%2Fpackage.json", "/console/../package.json"]) {
            const response = yield* http.execute(HttpClientRequest.get(path))
            expect({ path, status: response.status }).toEqual({ path, status: 404 })
          }
        })
      ))
  })

  describe("auth", () => {
    it.live("Unauthorized (401) without a token or with a wrong one, on every protected group; nothing changes", () =>
      withApi((authorized) =>
        Effect.gen(function*() {
          const org = newOrg()
          for (const token of [null, "wrong-token-but-long-enough", `${API_TOKEN}x`]) {
            const client = yield* makeClient(token)
            const refused = [
              yield* client.api.gateway.start({ payload: { organization_id: org } }).pipe(Effect.flip),
              yield* client.api.gateway.status({ path: { organization_id: org } }).pipe(Effect.flip),
              yield* client.api.gateway.stop({ payload: { organization_id: org } }).pipe(Effect.flip),
              yield* client.api.allocations.get({ path: { allocation_id: randomUUID() as AllocationId } })
                .pipe(Effect.flip),
              yield* client.api.allocations.list({ urlParams: { limit: 50 } }).pipe(Effect.flip),
              yield* client.api.pool.get().pipe(Effect.flip),
              yield* client.api.pool.addGateway({
                payload: { name: "never-added" as GatewayName, upstream: "127.0.0.1:9" as Upstream }
              }).pipe(Effect.flip),
              yield* client.api.pool.removeGateway({ path: { gateway_id: randomUUID() as GatewayId } }).pipe(Effect.flip)
            ]
            expect({ token, tags: refused.map((error) => error._tag) }).toEqual({
              token,
              tags: Array(refused.length).fill("Unauthorized")
            })
            expect(refused.every((error) => error instanceof Unauthorized)).toBe(true)
            expect(client.lastStatus()).toBe(401)
          }

          // Nothing happened behind the refused calls.
          expect(yield* poolCounts(authorized)).toEqual({ total: 2, free: 2, allocated: 0 })
          expect((yield* authorized.api.pool.get()).gateways.map((g) => g.name)).toEqual(["gw-1", "gw-2"])
          const status = yield* authorized.api.gateway.status({ path: { organization_id: org } }).pipe(Effect.flip)
          expect(status._tag).toBe("NotFound")
        })
      ))
  })
})
