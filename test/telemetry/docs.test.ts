// GET /openapi.json and GET /docs through the real HttpApi on a socket: no auth, every endpoint,
// every error status of the README's API table, a summary on every operation, a description on every
// response.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { fetchApi, ServedApi, TestServices } from "./harness.ts"

const Served = ServedApi.pipe(Layer.provideMerge(TestServices()))

/** The README's API table: method, path (OpenAPI form), the statuses the contract names. */
const contract: ReadonlyArray<readonly [string, string, ReadonlyArray<number>]> = [
  ["post", "/gateway/start", [200, 400, 401, 502, 503, 504]],
  ["post", "/gateway/stop", [200, 400, 401, 404]],
  ["get", "/gateway/{organization_id}", [200, 400, 401, 404]],
  ["get", "/allocations", [200, 400, 401]],
  ["get", "/allocations/{allocation_id}", [200, 400, 401, 404]],
  ["get", "/pool", [200, 401]],
  ["post", "/pool/gateways", [201, 400, 401, 409]],
  ["patch", "/pool/gateways/{gateway_id}", [200, 400, 401, 404]],
  ["delete", "/pool/gateways/{gateway_id}", [200, 401, 404, 409]],
  ["get", "/edges", [200, 401]],
  ["post", "/edges", [201, 400, 401, 409]],
  ["patch", "/edges/{edge_id}", [200, 400, 401, 404]],
  ["delete", "/edges/{edge_id}", [200, 400, 401, 404, 409]],
  ["get", "/edges/{edge_id}/config", [200, 400, 401, 404, 409]],
  ["get", "/healthz", [200]],
  ["get", "/readyz", [200, 503]],
  ["get", "/metrics", [200]]
]

describe("API docs", () => {
  it.live("GET /openapi.json (no auth) lists every endpoint and every error status of the contract", () =>
    Effect.gen(function*() {
      const response = yield* fetchApi("/openapi.json")
      expect(response.status).toBe(200)
      expect(response.contentType).toMatch(/^application\/json/)
      const spec = JSON.parse(response.text)
      expect(spec.openapi).toMatch(/^3\./)
      expect(spec.info.title).toBe("gateway-allocator")

      const operations = Object.entries(spec.paths as Record<string, Record<string, any>>).flatMap(([path, methods]) =>
        Object.keys(methods).map((method) => `${method} ${path}`)
      )
      expect(operations.sort()).toEqual(contract.map(([method, path]) => `${method} ${path}`).sort())

      for (const [method, path, statuses] of contract) {
        const operation = spec.paths[path][method]
        const name = `${method} ${path}`
        expect(operation.summary, name).toEqual(expect.any(String))
        const documented = Object.keys(operation.responses).map(Number)
        for (const status of statuses) expect(documented, `${name} documents ${status}`).toContain(status)
        for (const [status, described] of Object.entries(operation.responses as Record<string, any>)) {
          expect(described.description, `${name} ${status}`).toMatch(/\w/)
        }
        // Auth: everything under /gateway, /pool, /allocations and /edges needs the bearer token, the rest none.
        const needsAuth = /^\/(gateway|pool|allocations|edges)/.test(path)
        expect(operation.security.length > 0, `${name} security`).toBe(needsAuth)
      }
      // The error bodies of failed starts name the step and carry the rollback report.
      const start = spec.paths["/gateway/start"].post.responses
      expect(start["502"].description).toMatch(/step failed/i)
      expect(start["504"].description).toMatch(/in time/i)
      expect(start["503"].description).toMatch(/no gateway/i)
      expect(spec.paths["/gateway/stop"].post.responses["404"].description).toMatch(/no active allocation/i)
      expect(spec.paths["/pool/gateways"].post.responses["409"].description).toMatch(/name exists/i)
      expect(spec.paths["/pool/gateways/{gateway_id}"].delete.responses["409"].description).toMatch(/allocated/i)
      expect(spec.paths["/metrics"].get.responses["200"].content).toHaveProperty(["text/plain; version=0.0.4; charset=utf-8"])
    }).pipe(Effect.provide(Served)))

  it.live("GET /docs (no auth) is a reference page built from that document, its assets served by the service", () =>
    Effect.gen(function*() {
      const response = yield* fetchApi("/docs")
      expect(response.status).toBe(200)
      expect(response.contentType).toMatch(/^text\/html/)
      expect(response.text).toContain("SwaggerUIBundle")
      expect(response.text).toContain("/gateway/start")
      // No script or stylesheet from elsewhere: each is a path of this service, and it answers.
      const assets = [...response.text.matchAll(/<(?:script|link)[^>]+(?:src|href)="([^"]+)"/g)].map((match) => match[1])
      expect(assets).toEqual(["/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js"])
      const script = yield* fetchApi("/docs/swagger-ui-bundle.js")
      expect(script.status).toBe(200)
      expect(script.contentType).toMatch(/javascript/)
      expect(script.text).toContain("SwaggerUIBundle")
      const css = yield* fetchApi("/docs/swagger-ui.css")
      expect(css.status).toBe(200)
      expect(css.contentType).toMatch(/^text\/css/)
    }).pipe(Effect.provide(Served)))

  it.live("the API itself still wants the token", () =>
    Effect.gen(function*() {
      expect((yield* fetchApi("/pool")).status).toBe(401)
      expect((yield* fetchApi("/healthz")).status).toBe(200)
    }).pipe(Effect.provide(Served)))
})
