// NGINX_ROUTING=lua against a real nginx with the Lua module and 4 workers, through the service's
// own Nginx layer: a route is live on every worker when its write returns, with no reload;
// the table fences late writes and removals by generation and allocation; a full table is an
// error, never an eviction; a restart empties the table (503 until the routes are pushed back).
import { expect, layer } from "@effect/vitest"
import { type Context, Effect, Metric } from "effect"
import { randomUUID } from "node:crypto"
import { readFileSync } from "node:fs"
import * as http from "node:http"
import * as net from "node:net"
import path from "node:path"
import type { NginxHandle } from "../../src/dev/NginxProcess.ts"
import { type AllocationId, Generation, type OrganizationId, type Upstream } from "../../src/domain/ids.ts"
import { Nginx, type Route } from "../../src/nginx/Nginx.ts"
import { EDGE_FILE, PROBE_PATH, PROBE_SECRET_HEADER } from "../../src/nginx/config.ts"
import { nginxReloadsTotal } from "../../src/telemetry/Metrics.ts"
import { InstalledNginx, RealNginx, RealNginxLive } from "../support/nginx.ts"
import { rawGet } from "../support/probes.ts"

const WORKERS = 4
const DOMAIN = "domain.local"

/** The service's Nginx layer in lua mode over the real nginx, installed. */
const LuaNginx = (overrides: Readonly<Record<string, string>> = {}) => InstalledNginx({ NGINX_ROUTING: "lua", DOMAIN, ...overrides })

let generations = 1000
const route = (organizationId = randomUUID() as OrganizationId): Route => ({
  organizationId,
  allocationId: randomUUID() as AllocationId,
  upstream: "127.0.0.1:9" as Upstream,
  generation: Generation.make(generations++)
})

const reloads = Effect.map(Metric.value(nginxReloadsTotal.pipe(Metric.tagged("outcome", "ok"))), (s) => Number(s.count))

layer(RealNginxLive({ workers: WORKERS }), { excludeTestServices: true, timeout: 60_000 })("lua route table (real nginx, 4 workers)", (it) => {
  it.effect("a route written is served by every worker on the next fresh connection; removed, it is gone everywhere; no reload", () =>
    Effect.gen(function*() {
      const nginx = yield* Nginx
      const handle = yield* RealNginx
      const reloadsBefore = yield* reloads
      for (let round = 0; round < 5; round++) {
        const r = route()
        yield* nginx.writeRoute(r)
        const added = yield* probeEveryWorker(handle, r.organizationId)
        expect(added.workers).toBeGreaterThanOrEqual(WORKERS)
        expect(added.answers).toEqual(new Set([r.allocationId]))
        expect(yield* nginx.removeRoute(r)).toBe("removed")
        const removed = yield* probeEveryWorker(handle, r.organizationId)
        expect(removed.workers).toBeGreaterThanOrEqual(WORKERS)
        expect(removed.answers).toEqual(new Set([""]))
      }
      expect((yield* reloads) - reloadsBefore).toBe(0)
    }).pipe(Effect.provide(LuaNginx())))

  it.effect("fencing: an older generation is refused, a removal for another allocation changes nothing, a tombstone refuses a late write", () =>
    Effect.gen(function*() {
      const nginx = yield* Nginx
      const org = randomUUID() as OrganizationId
      const older = route(org)
      const newer = route(org)
      yield* nginx.writeRoute(newer)
      const refused = yield* nginx.writeRoute(older).pipe(Effect.flip)
      expect(refused).toMatchObject({ operation: "write", noEffect: true })
      expect(refused.reason).toContain(newer.allocationId)
      expect(yield* nginx.probeRoute(org)).toBe(newer.allocationId)
      // The same write again is not a change.
      yield* nginx.writeRoute(newer)

      expect(yield* nginx.removeRoute(older)).toBe("other")
      expect(yield* nginx.probeRoute(org)).toBe(newer.allocationId)

      expect(yield* nginx.removeRoute(newer)).toBe("removed")
      expect(yield* nginx.removeRoute(newer)).toBe("absent")
      // A zombie's late write of the removed allocation, or of an older one: refused.
      expect((yield* nginx.writeRoute(newer).pipe(Effect.flip)).noEffect).toBe(true)
      expect((yield* nginx.writeRoute(older).pipe(Effect.flip)).noEffect).toBe(true)
      expect(yield* nginx.probeRoute(org)).toBe(null)
      // A removal that finds nothing still leaves a tombstone: a restore racing it cannot bring it back.
      const neverWritten = route(randomUUID() as OrganizationId)
      expect(yield* nginx.removeRoute(neverWritten)).toBe("absent")
      expect((yield* nginx.writeRoute(neverWritten).pipe(Effect.flip)).noEffect).toBe(true)
      // A removal that finds an older allocation's route leaves it, and still fences its own.
      const stale = route(randomUUID() as OrganizationId)
      const removedFirst = route(stale.organizationId)
      yield* nginx.writeRoute(stale)
      expect(yield* nginx.removeRoute(removedFirst)).toBe("other")
      expect((yield* nginx.writeRoute(removedFirst).pipe(Effect.flip)).noEffect).toBe(true)
      expect(yield* nginx.probeRoute(stale.organizationId)).toBe(stale.allocationId)
      // The org's next allocation (a greater generation) is accepted.
      const next = route(org)
      yield* nginx.writeRoute(next)
      expect(yield* nginx.probeRoute(org)).toBe(next.allocationId)
      expect((yield* nginx.listRoutes).filter((r) => r.organizationId === org)).toEqual([
        { organizationId: org, allocationId: next.allocationId, generation: next.generation }
      ])
    }).pipe(Effect.provide(LuaNginx())))

  it.effect("installing the same file again (a service restart, another replica) does not reload nginx", () =>
    Effect.gen(function*() {
      const nginx = yield* Nginx
      const handle = yield* RealNginx
      const r = route()
      yield* nginx.writeRoute(r)
      const before = yield* probeEveryWorker(handle, r.organizationId)
      yield* nginx.install
      const after = yield* probeEveryWorker(handle, r.organizationId)
      // The same workers (no new generation), still serving the route.
      expect(after.pids).toEqual(before.pids)
      expect(after.answers).toEqual(new Set([r.allocationId]))
    }).pipe(Effect.provide(LuaNginx())))

  it.effect("the route API answers only with the edge secret", () =>
    Effect.gen(function*() {
      const handle = yield* RealNginx
      for (const headers of [{}, { "x-gateway-allocator-probe": "0".repeat(48) }]) {
        const answer = yield* rawGet({ port: handle.routeApiPort, path: "/routes", headers })
        expect(answer.status).toBe(401)
      }
    }).pipe(Effect.provide(LuaNginx())))

  it.effect("a restart empties the table: 503 for every org (not 404) until the routes are pushed back for this boot", () =>
    Effect.gen(function*() {
      const nginx = yield* Nginx
      const handle = yield* RealNginx
      const kept = route()
      yield* nginx.restoreAll((yield* stateOf(nginx)).bootId, [])
      yield* nginx.writeRoute(kept)
      const before = yield* stateOf(nginx)
      expect(before.ready).toBe(true)
      expect((yield* get(handle, randomUUID())).status).toBe(404)

      yield* handle.stop
      yield* handle.start
      const after = yield* stateOf(nginx)
      expect(after.bootId).not.toBe(before.bootId)
      expect(after.ready).toBe(false)
      expect((yield* get(handle, kept.organizationId)).status).toBe(503)
      expect((yield* get(handle, randomUUID())).status).toBe(503)
      // A restore for another boot (nginx restarted again meanwhile) puts nothing.
      expect((yield* nginx.restoreAll(before.bootId, [kept]).pipe(Effect.flip)).operation).toBe("table")
      expect(yield* nginx.probeRoute(kept.organizationId)).toBe(null)

      yield* nginx.restoreAll(after.bootId, [kept])
      expect((yield* stateOf(nginx)).ready).toBe(true)
      expect(yield* nginx.probeRoute(kept.organizationId)).toBe(kept.allocationId)
      expect((yield* get(handle, randomUUID())).status).toBe(404)
    }).pipe(Effect.provide(LuaNginx())))
})

layer(RealNginxLive({ workers: WORKERS }), { excludeTestServices: true, timeout: 60_000 })("lua route table, a small one (real nginx)", (it) => {
  it.effect("a full table refuses the write (an error, noEffect) and evicts nothing", () =>
    Effect.gen(function*() {
      const nginx = yield* Nginx
      const written: Array<Route> = []
      for (;;) {
        const r = route()
        const result = yield* nginx.writeRoute(r).pipe(Effect.either)
        if (result._tag === "Left") {
          expect(result.left).toMatchObject({ operation: "write", noEffect: true })
          expect(result.left.reason).toContain("route table is full")
          break
        }
        written.push(r)
        expect(written.length).toBeLessThan(5000)
      }
      expect(written.length).toBeGreaterThan(100)
      // Every route written before is still there and served.
      const listed = new Set((yield* nginx.listRoutes).map((r) => r.allocationId))
      expect(written.filter((r) => !listed.has(r.allocationId))).toEqual([])
      for (const r of written.slice(0, 20)) expect(yield* nginx.probeRoute(r.organizationId)).toBe(r.allocationId)
    }).pipe(Effect.provide(LuaNginx({ NGINX_ROUTE_TABLE_SIZE: "128k" }))))
})

layer(RealNginxLive({ workers: WORKERS, luaModule: false }), { excludeTestServices: true, timeout: 60_000 })("lua mode on an nginx without the Lua module", (it) => {
  it.effect("install fails, naming the package to install and NGINX_ROUTING=reload", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.provide(Effect.void, LuaNginx()))
      expect(error).toMatchObject({ _tag: "NginxError", operation: "install" })
      expect(error.message).toContain("libnginx-mod-http-lua")
      expect(error.message).toContain("NGINX_ROUTING=reload")
    }))
})

/** A TCP server on the route API's port before the service installs: Postgres's way (a binary error, then close) or another HTTP server. */
const occupy = (port: number, kind: "postgres" | "http") =>
  Effect.acquireRelease(
    Effect.async<net.Server, Error>((resume) => {
      const server = kind === "http"
        ? http.createServer((_request, response) => response.writeHead(404).end("not found"))
        : net.createServer((socket) => socket.write(Buffer.from([0x45, 0, 0, 0, 8, 0x53, 0x46, 0]), () => socket.destroy()))
      server.once("error", (error) => resume(Effect.fail(error)))
      server.listen(port, "127.0.0.1", () => resume(Effect.succeed(server)))
    }),
    (server) =>
      Effect.async<void>((resume) => {
        if (server instanceof http.Server) server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  )

layer(RealNginxLive({ workers: 1 }), { excludeTestServices: true, timeout: 60_000 })("lua mode with NGINX_ROUTE_API_LISTEN held by another process", (it) => {
  for (const kind of ["postgres", "http"] as const) {
    it.scoped(`install fails at start-up naming NGINX_ROUTE_API_LISTEN (held by ${kind === "postgres" ? "a Postgres-like server" : "an HTTP server"})`, () =>
      Effect.gen(function*() {
        const handle = yield* RealNginx
        yield* occupy(handle.routeApiPort, kind)
        const error = yield* Effect.flip(Effect.provide(Effect.void, LuaNginx()))
        expect(error).toMatchObject({ _tag: "NginxError", operation: "install" })
        expect(error.message).toContain(`NGINX_ROUTE_API_LISTEN (127.0.0.1:${handle.routeApiPort}) is held by another process`)
        expect(error.message).toMatch(kind === "http" ? /it answered HTTP 404: not found/ : /the connection failed with \w+/)
      }))
  }
})

const stateOf = (nginx: Context.Tag.Service<typeof Nginx>) =>
  Effect.flatMap(nginx.tableState, (state) => state._tag === "Some" ? Effect.succeed(state.value) : Effect.dieMessage("no table"))

/** A request through the org server block (not the probe): what nginx answers for the org. */
const get = (handle: NginxHandle, org: string) =>
  rawGet({ port: handle.listenPort, path: "/", headers: { host: `org-${org}.${DOMAIN}` } })

/**
 * Fresh connections to the probe until every worker has answered (at least 200): the workers that
 * answered and every allocation they named ("" for none).
 */
const probeEveryWorker = (handle: NginxHandle, org: string) =>
  Effect.gen(function*() {
    const secret = JSON.parse(readFileSync(path.join(handle.confDir, EDGE_FILE), "utf8")) as { probeSecret: string }
    const workers = new Set<string>()
    const answers = new Set<string>()
    for (let i = 0; i < 2000 && (i < 200 || workers.size < WORKERS); i++) {
      const answer = yield* rawGet({
        port: handle.listenPort,
        path: PROBE_PATH,
        headers: { host: `org-${org}.${DOMAIN}`, [PROBE_SECRET_HEADER]: secret.probeSecret }
      })
      const [allocation = "", pid = ""] = answer.body.split(" ")
      answers.add(allocation)
      workers.add(pid)
    }
    return { workers: workers.size, pids: workers, answers }
  })
