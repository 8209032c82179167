// The edges API IN MEMORY: the real HttpApi (HttpAppLive: auth, handlers, error mapping) served by
// NodeHttpServer.layerTest over the allocation core wired to the in-memory outside systems, the
// edge registry among them (test/support/edgesTest.ts: the local edge registered as "local").
// Every endpoint and every error status; bad input changes nothing; an edge's secret is in its
// config file and nowhere else: no JSON answer, no log line, no span attribute (the platform
// records every response header on the request's span), exported through the real OpenTelemetry
// SDK into memory. Requests are raw (layerTest's HttpClient) so each answer's text is checked.
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Effect, Layer, Redacted } from "effect"
import { randomUUID } from "node:crypto"
import type { AllocationId, EdgeId, OrganizationId } from "../../src/domain/ids.ts"
import { EdgeRegistry } from "../../src/edges/EdgeRegistry.ts"
import { HttpAppLive } from "../../src/http/server.ts"
import { layerTracer, ResourceLive } from "../../src/telemetry/Tracing.ts"
import { TEST_LOCAL_EDGE } from "../support/edgesTest.ts"
import type { ApiResponse } from "../support/http.ts"
import { configFrom } from "../support/stack.ts"
import type { TestWorld } from "../support/TestLayers.ts"
import { testServices } from "../support/testServices.ts"
import { captureLogs } from "../telemetry/harness.ts"

const API_TOKEN = "edges-in-memory-token"

const baseEnv = { RECONCILE_INTERVAL_MS: "3600000", GATEWAY_HEALTH_INTERVAL_MS: "3600000", START_ATTEMPTS: "1", API_TOKEN }

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** An edge on the private network, as an operator registers it. */
const EDGE = { name: "edge-a", route_api_url: "http://10.0.0.5:8089", probe_url: "http://10.0.0.5:8080" }

/** An answer as test/support/http.ts gives one (its JSON as `any`, read by the assertions), with its headers. */
interface Answer extends Omit<ApiResponse, "contentType"> {
  readonly headers: Readonly<Record<string, string>>
}

/**
 * A fresh in-memory world (two free gateways) serving HttpAppLive on layerTest, its spans exported
 * into `exporter` and its log lines (Debug and above) into `logs`.
 */
const withApi = <A, E>(
  body: (world: { readonly exporter: InMemorySpanExporter; readonly logs: ReadonlyArray<Record<string, unknown>> }) => Effect.Effect<
    A,
    E,
    HttpClient.HttpClient | EdgeRegistry | TestWorld
  >,
  env: Readonly<Record<string, string>> = {}
) => {
  const config = { ...baseEnv, ...env }
  const exporter = new InMemorySpanExporter()
  const logs = captureLogs()
  return body({ exporter, logs: logs.lines }).pipe(
    Effect.provide(
      HttpAppLive.pipe(
        Layer.provideMerge(NodeHttpServer.layerTest),
        Layer.provideMerge(testServices({ env: config })),
        Layer.provide(configFrom(config)),
        Layer.provide(layerTracer(new SimpleSpanProcessor(exporter)).pipe(Layer.provide(ResourceLive))),
        Layer.provide(logs.layer)
      )
    )
  )
}

/** One request; `token: null` sends none. */
const send = (method: "GET" | "POST" | "PATCH" | "DELETE", path: string, options: { readonly body?: unknown; readonly token?: string | null } = {}) =>
  Effect.gen(function*() {
    const http = yield* HttpClient.HttpClient
    const token = options.token === undefined ? API_TOKEN : options.token
    let request = HttpClientRequest.make(method)(path)
    if (token !== null) request = HttpClientRequest.bearerToken(request, token)
    if (options.body !== undefined) request = HttpClientRequest.bodyUnsafeJson(request, options.body)
    const response = yield* http.execute(request)
    const text = yield* response.text
    let json: unknown = undefined
    try {
      json = JSON.parse(text)
    } catch {
      json = undefined
    }
    const answer: Answer = { status: response.status, headers: response.headers, text, json }
    return answer
  })

const listEdges = Effect.map(send("GET", "/edges"), (answer) => answer.json.edges as ReadonlyArray<Record<string, unknown>>)

/** The edge's secret, as the replicas read it. */
const secretOf = (edgeId: string) =>
  Effect.flatMap(EdgeRegistry, (edges) => edges.endpoints()).pipe(
    Effect.map((endpoints) => Redacted.value(endpoints.find((endpoint) => endpoint.edgeId === edgeId)?.secret ?? Redacted.make("(no edge)")))
  )

const addEdge = (edge: typeof EDGE = EDGE) =>
  Effect.gen(function*() {
    const added = yield* send("POST", "/edges", { body: edge })
    expect(added.status).toBe(201)
    return added.json as { readonly edge_id: EdgeId }
  })

describe("edges API in memory", () => {
  it.live("GET /edges: the local edge, registered at start-up, never reached yet; no secret in the answer", () =>
    withApi(() =>
      Effect.gen(function*() {
        const answer = yield* send("GET", "/edges")
        expect(answer.status).toBe(200)
        expect(answer.json).toEqual({
          edges: [{
            edge_id: TEST_LOCAL_EDGE.edgeId,
            name: "local",
            route_api_url: TEST_LOCAL_EDGE.routeApiUrl,
            probe_url: TEST_LOCAL_EDGE.probeUrl,
            local: true,
            state: "unreachable",
            boot_id: null,
            acked_generation: 0,
            acked_at: null,
            last_seen: null,
            last_error: null,
            route_count: 0,
            held_gateways: 0
          }]
        })
        expect(answer.text).not.toContain(Redacted.value(TEST_LOCAL_EDGE.secret))
        expect(answer.text).not.toContain("secret")
      })
    ))

  it.live("GET /edges: each edge's status (ready, behind, unreachable, draining) as the registry's marks make it", () =>
    withApi(() =>
      Effect.gen(function*() {
        const edges = yield* EdgeRegistry
        const { edge_id } = yield* addEdge()
        const edgeId = edge_id
        const state = () => Effect.map(listEdges, (all) => all.find((edge) => edge["edge_id"] === edgeId)?.["state"])
        expect(yield* state()).toBe("unreachable")
        // Reached, not caught up yet: behind.
        yield* edges.markSeen(edgeId, { bootId: "boot-7", routeCount: 3 })
        expect(yield* state()).toBe("behind")
        const [endpoint] = (yield* edges.endpoints()).filter((e) => e.edgeId === edgeId)
        expect(yield* edges.markCaughtUp(edgeId, { fromMark: endpoint?.behindMark ?? -1, bootId: "boot-7", routeCount: 4 })).toBe(true)
        yield* edges.acknowledge(edgeId, 42)
        expect((yield* listEdges).find((edge) => edge["edge_id"] === edgeId)).toMatchObject({
          state: "ready",
          boot_id: "boot-7",
          route_count: 4,
          acked_generation: 42,
          acked_at: expect.any(String),
          last_seen: expect.any(String),
          last_error: null
        })
        yield* edges.markBehind(edgeId, "route write refused: HTTP 500")
        expect((yield* listEdges).find((edge) => edge["edge_id"] === edgeId)).toMatchObject({
          state: "behind",
          last_error: "route write refused: HTTP 500"
        })
        expect((yield* send("PATCH", `/edges/${edgeId}`, { body: { state: "draining" } })).json.state).toBe("draining")
      })
    ))

  it.live("POST /edges: 201 the edge (addresses in their one spelling, unreachable until reached), listed after the local one", () =>
    withApi(() =>
      Effect.gen(function*() {
        const added = yield* send("POST", "/edges", {
          body: { name: "edge-a", route_api_url: "http://10.0.0.5:8089/", probe_url: "http://[FD00::5]:8080" }
        })
        expect(added.status).toBe(201)
        expect(added.json).toEqual({
          edge_id: expect.stringMatching(uuidPattern),
          name: "edge-a",
          route_api_url: "http://10.0.0.5:8089",
          probe_url: "http://[fd00::5]:8080",
          local: false,
          state: "unreachable",
          boot_id: null,
          acked_generation: 0,
          acked_at: null,
          last_seen: null,
          last_error: null,
          route_count: 0,
          held_gateways: 0
        })
        expect(added.text).not.toContain(yield* secretOf(added.json.edge_id))
        expect((yield* listEdges).map((edge) => [edge["name"], edge["local"]])).toEqual([["local", true], ["edge-a", false]])
      })
    ))

  it.live("POST /edges: 400 for a bad name or address, saying why; nothing is registered", () =>
    withApi(() =>
      Effect.gen(function*() {
        const refused: ReadonlyArray<readonly [Record<string, unknown>, string]> = [
          [{ ...EDGE, name: "Edge A" }, "an edge name is 1-63 lowercase letters"],
          [{ ...EDGE, name: "-edge" }, "an edge name is 1-63 lowercase letters"],
          [{ ...EDGE, route_api_url: "https://10.0.0.5:8089" }, "route_api_url must be http://"],
          [{ ...EDGE, route_api_url: "http://edge.internal:8089" }, "route_api_url must use an IP address, not a name"],
          [{ ...EDGE, probe_url: "http://10.0.0.5" }, "probe_url must name its port"],
          [{ ...EDGE, probe_url: "http://10.0.0.5:8080/probe" }, "probe_url must be http://{IP}:{port} with nothing after the port"],
          [{ ...EDGE, probe_url: "http://user:pw@10.0.0.5:8080" }, "probe_url must not carry credentials"],
          [{ ...EDGE, route_api_url: "10.0.0.5:8089" }, "route_api_url"],
          [{ ...EDGE, probe_url: "http://10.0.0.5:8089/" }, "route_api_url and probe_url must be different addresses"],
          [{ name: "edge-a", route_api_url: EDGE.route_api_url }, "probe_url"]
        ]
        for (const [body, why] of refused) {
          const answer = yield* send("POST", "/edges", { body })
          expect({ body, status: answer.status }).toEqual({ body, status: 400 })
          expect(answer.text).toContain(why)
        }
        expect((yield* listEdges).map((edge) => edge["name"])).toEqual(["local"])
      })
    ))

  it.live("POST /edges: 409 for a taken name or route API address (in any spelling); nothing changes", () =>
    withApi(() =>
      Effect.gen(function*() {
        yield* addEdge()
        const sameName = yield* send("POST", "/edges", { body: { ...EDGE, route_api_url: "http://10.0.0.6:8089", probe_url: "http://10.0.0.6:8080" } })
        expect(sameName.status).toBe(409)
        expect(sameName.json).toMatchObject({ _tag: "Conflict", message: "an edge named edge-a exists" })
        const local = yield* send("POST", "/edges", { body: { ...EDGE, name: "local", route_api_url: "http://10.0.0.7:8089" } })
        expect(local.status).toBe(409)
        const sameAddress = yield* send("POST", "/edges", { body: { ...EDGE, name: "edge-b", route_api_url: "http://10.0.0.5:8089/" } })
        expect(sameAddress.status).toBe(409)
        expect(sameAddress.json.message).toContain("http://10.0.0.5:8089")
        expect((yield* listEdges).map((edge) => edge["name"])).toEqual(["local", "edge-a"])
      })
    ))

  it.live("POST /edges: 409 in reload mode, which keeps its one local edge", () =>
    withApi(() =>
      Effect.gen(function*() {
        const answer = yield* send("POST", "/edges", { body: EDGE })
        expect(answer.status).toBe(409)
        expect(answer.json).toMatchObject({ _tag: "Conflict" })
        expect(answer.json.message).toContain("reload mode keeps its one local edge")
        expect((yield* listEdges).map((edge) => edge["name"])).toEqual(["local"])
      }), { NGINX_ROUTING: "reload" }))

  it.live("PATCH /edges/{id}: 200 draining, then active again; 400 for a bad state or id; 404 for an unknown edge", () =>
    withApi(() =>
      Effect.gen(function*() {
        const { edge_id } = yield* addEdge()
        const drained = yield* send("PATCH", `/edges/${edge_id}`, { body: { state: "draining" } })
        expect(drained.status).toBe(200)
        expect(drained.json).toMatchObject({ edge_id, name: "edge-a", state: "draining" })
        expect(drained.text).not.toContain(yield* secretOf(edge_id))
        const active = yield* send("PATCH", `/edges/${edge_id}`, { body: { state: "active" } })
        expect(active.status).toBe(200)
        expect(active.json.state).toBe("unreachable")
        // The local edge drains too (its readiness answers 503 then).
        expect((yield* send("PATCH", `/edges/${TEST_LOCAL_EDGE.edgeId}`, { body: { state: "draining" } })).json.state).toBe("draining")

        expect((yield* send("PATCH", `/edges/${edge_id}`, { body: { state: "paused" } })).status).toBe(400)
        expect((yield* send("PATCH", `/edges/${edge_id}`, { body: {} })).status).toBe(400)
        expect((yield* send("PATCH", "/edges/not-a-uuid", { body: { state: "draining" } })).status).toBe(400)
        const missing = yield* send("PATCH", `/edges/${randomUUID()}`, { body: { state: "draining" } })
        expect(missing.status).toBe(404)
        expect(missing.json._tag).toBe("NotFound")
        expect((yield* listEdges).map((edge) => [edge["name"], edge["state"]])).toEqual([["local", "draining"], ["edge-a", "unreachable"]])
      })
    ))

  it.live("DELETE /edges/{id}: 200 with the removals it owed, whose gateways return to the pool; 404 after; 409 for the local edge; 400 for a bad id", () =>
    withApi(() =>
      Effect.gen(function*() {
        const edges = yield* EdgeRegistry
        const { edge_id } = yield* addEdge()
        const other = yield* addEdge({ name: "edge-b", route_api_url: "http://10.0.0.6:8089", probe_url: "http://10.0.0.6:8080" })

        // An org's stop that edge-a did not acknowledge (it was down): it owes the route's removal.
        const org = randomUUID() as OrganizationId
        const started = yield* send("POST", "/gateway/start", { body: { organization_id: org } })
        expect(started.status).toBe(200)
        const allocationId = started.json.allocation_id as AllocationId
        const gatewayId = started.json.gateway_id as string
        yield* edges.owe(edge_id, { allocationId, generation: 1 }, "edge down")
        yield* edges.owe(other.edge_id, { allocationId, generation: 1 }, "edge down")
        expect((yield* send("POST", "/gateway/stop", { body: { organization_id: org } })).status).toBe(200)

        const held = yield* send("GET", "/pool")
        expect(held.status).toBe(200)
        expect(held.json.gateways.map((g: Record<string, unknown>) => [g["gateway_id"], g["held_by_edges"]]))
          .toEqual(expect.arrayContaining([[gatewayId, ["edge-a", "edge-b"]]]))
        expect(held.json.gateways.filter((g: Record<string, unknown>) => g["gateway_id"] !== gatewayId).map((g: Record<string, unknown>) => g["held_by_edges"]))
          .toEqual([[]])
        expect((yield* listEdges).map((edge) => [edge["name"], edge["held_gateways"]])).toEqual([["local", 0], ["edge-a", 1], ["edge-b", 1]])

        const removed = yield* send("DELETE", `/edges/${edge_id}`)
        expect(removed.status).toBe(200)
        expect(removed.json).toEqual({ edge_id, removals_dropped: 1 })
        const after = yield* send("GET", "/pool")
        expect(after.json.gateways.find((g: Record<string, unknown>) => g["gateway_id"] === gatewayId)?.held_by_edges).toEqual(["edge-b"])
        expect((yield* listEdges).map((edge) => edge["name"])).toEqual(["local", "edge-b"])

        const again = yield* send("DELETE", `/edges/${edge_id}`)
        expect(again.status).toBe(404)
        expect(again.json._tag).toBe("NotFound")
        const local = yield* send("DELETE", `/edges/${TEST_LOCAL_EDGE.edgeId}`)
        expect(local.status).toBe(409)
        expect(local.json).toMatchObject({ _tag: "Conflict", message: expect.stringContaining("local edge") })
        expect((yield* send("DELETE", "/edges/not-a-uuid")).status).toBe(400)

        // edge-b owed nothing else: none dropped but this one.
        expect((yield* send("DELETE", `/edges/${other.edge_id}`)).json).toEqual({ edge_id: other.edge_id, removals_dropped: 1 })
        expect((yield* send("GET", "/pool")).json.gateways.every((g: Record<string, unknown>) => (g["held_by_edges"] as Array<string>).length === 0))
          .toBe(true)
        expect((yield* listEdges).map((edge) => edge["name"])).toEqual(["local"])
      })
    ))

  it.live("GET /edges/{id}/config: 200 text/plain, no-store, the edge's listen addresses, its secret and the private networks; 404; 409 for the local edge", () =>
    withApi(() =>
      Effect.gen(function*() {
        const { edge_id } = yield* addEdge()
        const secret = yield* secretOf(edge_id)
        expect(secret).toMatch(/^[0-9a-f]{48}$/)

        const config = yield* send("GET", `/edges/${edge_id}/config`)
        expect(config.status).toBe(200)
        expect(config.headers["content-type"]).toBe("text/plain; charset=utf-8")
        expect(config.headers["cache-control"]).toBe("no-store")
        expect(config.text).toContain("listen 10.0.0.5:8080;")
        expect(config.text).toContain("listen 10.0.0.5:8089;")
        expect(config.text).toContain(secret)
        expect(config.text).toContain("allow 10.0.0.0/8;")
        expect(config.text).toContain("org-(?<gateway_allocator_org>")
        expect(config.text).toContain("domain\\.local$")
        expect(config.text).toContain("lua_shared_dict")
        expect(config.text).toContain(" 64m;")

        const missing = yield* send("GET", `/edges/${randomUUID()}/config`)
        expect(missing.status).toBe(404)
        expect(missing.text).not.toContain(secret)
        const local = yield* send("GET", `/edges/${TEST_LOCAL_EDGE.edgeId}/config`)
        expect(local.status).toBe(409)
        expect(local.json.message).toContain("NGINX_CONF_DIR")
        expect(local.text).not.toContain(Redacted.value(TEST_LOCAL_EDGE.secret))
        expect((yield* send("GET", "/edges/not-a-uuid/config")).status).toBe(400)
      }), { NGINX_ROUTE_TABLE_SIZE: "64m", DOMAIN: "domain.local" }))

  it.live("the secret is in no JSON answer, no log line and no span attribute of any edges call", () =>
    withApi(({ exporter, logs }) =>
      Effect.gen(function*() {
        const { edge_id } = yield* addEdge()
        const secret = yield* secretOf(edge_id)
        const answers = [
          yield* send("GET", "/edges"),
          yield* send("PATCH", `/edges/${edge_id}`, { body: { state: "draining" } }),
          yield* send("GET", "/pool"),
          yield* send("GET", `/edges/${edge_id}/config`),
          yield* send("DELETE", `/edges/${edge_id}`)
        ]
        expect(answers.map((answer) => answer.status)).toEqual([200, 200, 200, 200, 200])
        for (const answer of answers.filter((answer) => answer.json !== undefined)) expect(answer.text).not.toContain(secret)

        const spans = exporter.getFinishedSpans()
        const served = spans.filter((span) => span.name === "http.server GET" && span.attributes["url.path"] === `/edges/${edge_id}/config`)
        expect(served).toHaveLength(1)
        // The platform records the response headers on the request's span: these, and nothing with the secret.
        expect(served[0]?.attributes).toMatchObject({
          "http.response.status_code": 200,
          "http.response.header.cache-control": "no-store"
        })
        expect(spans.some((span) => span.name === "EdgesApi.config")).toBe(true)
        const recorded = JSON.stringify(spans.map((span) => ({ name: span.name, attributes: span.attributes, events: span.events })))
        expect(recorded).not.toContain(secret)
        expect(logs.length).toBeGreaterThan(0)
        expect(JSON.stringify(logs)).not.toContain(secret)
      })
    ))

  it.live("401 without a token or with a wrong one, on every edges endpoint; nothing changes", () =>
    withApi(() =>
      Effect.gen(function*() {
        const { edge_id } = yield* addEdge()
        for (const token of [null, "wrong-token-but-long-enough"]) {
          const refused = [
            yield* send("GET", "/edges", { token }),
            yield* send("POST", "/edges", { token, body: { ...EDGE, name: "edge-b", route_api_url: "http://10.0.0.6:8089" } }),
            yield* send("PATCH", `/edges/${edge_id}`, { token, body: { state: "draining" } }),
            yield* send("DELETE", `/edges/${edge_id}`, { token }),
            yield* send("GET", `/edges/${edge_id}/config`, { token })
          ]
          expect({ token, statuses: refused.map((answer) => answer.status) }).toEqual({ token, statuses: [401, 401, 401, 401, 401] })
          expect(refused.every((answer) => answer.json?._tag === "Unauthorized")).toBe(true)
        }
        expect((yield* listEdges).map((edge) => [edge["name"], edge["state"]])).toEqual([["local", "unreachable"], ["edge-a", "unreachable"]])
      })
    ))
})
