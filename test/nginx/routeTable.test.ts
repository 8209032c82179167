// NGINX_ROUTING=lua against a real nginx with the Lua module and 4 workers, through the service's
// own Nginx layer: a route is live on every worker when its write returns, with no reload;
// the table fences late writes and removals by generation and allocation; a full table is an
// error, never an eviction; a restart empties the table (503 until the routes are pushed back).
import { expect, layer } from "@effect/vitest"
import { Effect, Metric, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { readFileSync } from "node:fs"
import * as http from "node:http"
import * as net from "node:net"
import path from "node:path"
import type { NginxHandle } from "../../src/dev/NginxProcess.ts"
import { type AllocationId, Generation, type OrganizationId, type Upstream } from "../../src/domain/ids.ts"
import { type EdgeRoutes, Nginx, type Route } from "../../src/nginx/Nginx.ts"
import { EDGE_FILE, PROBE_PATH, PROBE_SECRET_HEADER } from "../../src/nginx/config.ts"
import { nginxReloadsTotal } from "../../src/telemetry/Metrics.ts"
import { InstalledNginx, localEdge, RealNginx, RealNginxLive } from "../support/nginx.ts"
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
      const nginx = yield* localEdge
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
      const nginx = yield* localEdge
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
        { organizationId: org, upstream: next.upstream, allocationId: next.allocationId, generation: next.generation }
      ])
    }).pipe(Effect.provide(LuaNginx())))

  it.effect("installing the same file again (a service restart, another replica) does not reload nginx", () =>
    Effect.gen(function*() {
      const nginx = yield* localEdge
      const handle = yield* RealNginx
      const r = route()
      yield* nginx.writeRoute(r)
      const before = yield* probeEveryWorker(handle, r.organizationId)
      yield* Effect.flatMap(Nginx, (service) => service.install)
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
      const nginx = yield* localEdge
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
      const nginx = yield* localEdge
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

      // A full route table takes nothing from a removal: its lock and its fence have zones of
      // their own, and marking the table ready replaces a value it holds already.
      const [first, second] = written
      if (first === undefined || second === undefined) return yield* Effect.dieMessage("no routes written")
      expect(yield* nginx.removeRoute(first)).toBe("removed")
      expect(yield* nginx.removeRoute(route())).toBe("absent")
      expect(yield* nginx.removeRoute({ ...route(second.organizationId), generation: Generation.make(1) })).toBe("other")
      expect((yield* nginx.writeRoute(first).pipe(Effect.flip)).noEffect).toBe(true)
      yield* nginx.writeRoute(route())
      expect((yield* nginx.writeRoute(route()).pipe(Effect.flip)).reason).toContain("route table is full")
      yield* nginx.restoreAll((yield* stateOf(nginx)).bootId, [])
      expect((yield* stateOf(nginx)).ready).toBe(true)
    }).pipe(Effect.provide(LuaNginx({ NGINX_ROUTE_TABLE_SIZE: "128k" }))))
})

layer(RealNginxLive({ workers: WORKERS }), { excludeTestServices: true, timeout: 120_000 })("lua route table, a small one under churn (real nginx)", (it) => {
  it.effect("churned far past its size (thousands of orgs started and stopped), the table still takes routes and lists exactly the live ones", () =>
    Effect.gen(function*() {
      const nginx = yield* localEdge
      const handle = yield* RealNginx
      const capacity = (yield* zones(handle)).routes
      // Live throughout: the churn must neither crowd them out nor bring anything back.
      const kept = Array.from({ length: 50 }, () => route())
      yield* Effect.forEach(kept, (r) => nginx.writeRoute(r), { discard: true })
      // A 128k table holds ~460 routes; with a fence per removal kept 10 minutes in it (the old
      // design) it was full of fences after ~925 start/stop cycles.
      const cycles = 3000
      yield* Effect.forEach(
        Array.from({ length: cycles }),
        () => {
          const r = route()
          return nginx.writeRoute(r).pipe(Effect.zipRight(nginx.removeRoute(r)), Effect.flatMap((found) => found === "removed" ? Effect.void : Effect.dieMessage(found)))
        },
        { concurrency: 8, discard: true }
      )
      const after = yield* zones(handle)
      // The routes' zone holds only the kept routes (and the boot marks); the fences hold the churn.
      expect(after.routesFree).toBeGreaterThan(capacity.free - 60 * 256 - 4096)
      expect(after.fencesUsed).toBeGreaterThan(cycles * 64)
      const added = Array.from({ length: 300 }, () => route())
      yield* Effect.forEach(added, (r) => nginx.writeRoute(r), { concurrency: 8, discard: true })
      const listed = yield* nginx.listRoutes
      const key = (r: { readonly organizationId: string; readonly upstream: string; readonly allocationId: string; readonly generation: number }) =>
        `${r.organizationId} ${r.upstream} ${r.allocationId} ${r.generation}`
      expect(listed.map(key).sort()).toEqual([...kept, ...added].map(key).sort())
      expect((yield* rawGet({ port: handle.routeApiPort, path: "/routes", headers: yield* secretHeader(handle) })).body.split("\n").length)
        .toBe(1 + kept.length + added.length + 1)
    }).pipe(Effect.provide(LuaNginx({ NGINX_ROUTE_TABLE_SIZE: "128k" }))), { timeout: 120_000 })

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

const stateOf = (nginx: EdgeRoutes) =>
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

/** The header that opens the route API: the edge's secret. */
const secretHeader = (handle: NginxHandle) =>
  Effect.sync(() => ({
    [PROBE_SECRET_HEADER]: (JSON.parse(readFileSync(path.join(handle.confDir, EDGE_FILE), "utf8")) as { probeSecret: string }).probeSecret
  }))

/** One route API request, as anyone holding the secret can make it (a forger, in these tests). */
const routeApi = (handle: NginxHandle, method: string, pathAndQuery: string, body?: string) =>
  Effect.flatMap(secretHeader(handle), (headers) =>
    Effect.promise(async () => {
      const response = await fetch(`http://127.0.0.1:${handle.routeApiPort}${pathAndQuery}`, {
        method,
        headers,
        ...(body === undefined ? {} : { body }),
        signal: AbortSignal.timeout(10_000)
      })
      return { status: response.status, body: await response.text() }
    }))

/** Each zone's capacity and free bytes (`GET /zones`). */
const zones = (handle: NginxHandle) =>
  Effect.map(routeApi(handle, "GET", "/zones"), (answer) => {
    const of = (zone: string) => {
      const [, capacity = "0", free = "0"] = answer.body.split("\n").find((line) => line.startsWith(`${zone} `))?.split(" ") ?? []
      return { capacity: Number(capacity), free: Number(free) }
    }
    const routes = of("routes")
    const fences = of("fences")
    return { routes, routesFree: routes.free, fencesUsed: fences.capacity - fences.free, fences }
  })

/** The org's fence: its generation and the milliseconds it has left; none when it has none. */
const fenceOf = (handle: NginxHandle, org: string) =>
  Effect.map(routeApi(handle, "GET", `/fences/${org}`), (answer) => {
    if (answer.status === 404) return undefined
    const [generation = "", left = ""] = answer.body.trim().split(" ")
    return { generation: Number(generation), leftMs: Number(left) }
  })

layer(RealNginxLive({ workers: WORKERS }), { excludeTestServices: true, timeout: 60_000 })("lua route table: fences (real nginx)", (it) => {
  // STEP_TIMEOUT_MS 1000 and one outside call (500 ms): a removal fences late writes for 1.5 s.
  const Fast = LuaNginx({ STEP_TIMEOUT_MS: "1000", UNDO_TIMEOUT_MS: "1000" })

  it.effect("a removal fences late writes of its allocation (and older ones) for STEP_TIMEOUT_MS plus one outside call, then the fence is gone", () =>
    Effect.gen(function*() {
      const nginx = yield* localEdge
      const handle = yield* RealNginx
      const org = randomUUID() as OrganizationId
      const older = route(org)
      const removed = route(org)
      yield* nginx.writeRoute(removed)
      expect(yield* nginx.removeRoute(removed)).toBe("removed")
      const fence = yield* fenceOf(handle, org)
      expect(fence?.generation).toBe(removed.generation)
      expect(fence?.leftMs).toBeGreaterThan(1000)
      expect(fence?.leftMs).toBeLessThanOrEqual(1500)
      // Late writes within the bound: refused.
      for (const late of [removed, older, { ...removed, upstream: "127.0.0.1:10" as Upstream }]) {
        const refused = yield* nginx.writeRoute(late).pipe(Effect.flip)
        expect(refused).toMatchObject({ operation: "write", noEffect: true })
        expect(refused.reason).toContain(`removed generation ${removed.generation}`)
      }
      // A restore is fenced the same way: it can never undo a removal.
      expect((yield* nginx.writeRoute(removed, { restore: true }).pipe(Effect.flip)).noEffect).toBe(true)
      expect(yield* nginx.probeRoute(org)).toBe(null)
      // The wait is what is tested: the fence lapses on nginx's own clock, past its 1.5 s bound.
      yield* Effect.sleep("1600 millis")
      expect(yield* fenceOf(handle, org)).toBeUndefined()
      // The org's next allocation is accepted either way.
      const next = route(org)
      yield* nginx.writeRoute(next)
      expect(yield* nginx.probeRoute(org)).toBe(next.allocationId)
    }).pipe(Effect.provide(Fast)))

  it.effect("a write that reaches nginx after its deadline is refused: no write outlives the fences", () =>
    Effect.gen(function*() {
      const handle = yield* RealNginx
      const r = route()
      const past = Date.now() - 1
      const late = yield* routeApi(handle, "PUT", `/routes/${r.organizationId}?upstream=${r.upstream}&allocation=${r.allocationId}&generation=${r.generation}&until=${past}`)
      expect(late.status).toBe(409)
      expect(late.body).toContain("expired")
      expect((yield* routeApi(handle, "GET", `/routes/${r.organizationId}`)).status).toBe(404)
      const onTime = yield* routeApi(handle, "PUT", `/routes/${r.organizationId}?upstream=${r.upstream}&allocation=${r.allocationId}&generation=${r.generation}&until=${Date.now() + 5000}`)
      expect(onTime.status).toBe(200)
    }).pipe(Effect.provide(Fast)))

  it.effect("a fence kept longer keeps its time: an older allocation's late removal neither shortens nor lowers it", () =>
    Effect.gen(function*() {
      const nginx = yield* localEdge
      const handle = yield* RealNginx
      const org = randomUUID() as OrganizationId
      const older = route(org)
      const newer = route(org)
      const forged = yield* routeApi(handle, "DELETE", `/routes/${org}?allocation=${newer.allocationId}&generation=${newer.generation}&fence_ms=60000`)
      expect(forged.status).toBe(200)
      expect(yield* nginx.removeRoute(older)).toBe("absent")
      const fence = yield* fenceOf(handle, org)
      expect(fence?.generation).toBe(newer.generation)
      expect(fence?.leftMs).toBeGreaterThan(50_000)
      // Never longer than the table's longest fence (10 minutes), whatever a removal asks.
      const other = randomUUID()
      yield* routeApi(handle, "DELETE", `/routes/${other}?allocation=${newer.allocationId}&generation=1&fence_ms=99999999`)
      expect((yield* fenceOf(handle, other))?.leftMs).toBeLessThanOrEqual(600_000)
    }).pipe(Effect.provide(Fast)))

  it.effect("a restore replaces a forged or stale entry (another upstream, a greater generation, another allocation); a step's write does not", () =>
    Effect.gen(function*() {
      const nginx = yield* localEdge
      const handle = yield* RealNginx
      const live = route()
      const org = live.organizationId
      yield* nginx.writeRoute(live)
      // Someone with the edge secret points the org elsewhere, under its own allocation id.
      const forged = yield* routeApi(handle, "PUT", `/routes/${org}?upstream=127.0.0.1:9999&allocation=${live.allocationId}&generation=999999999`)
      expect(forged.body).toContain("stored")
      expect((yield* nginx.writeRoute(live).pipe(Effect.flip)).noEffect).toBe(true)
      yield* nginx.writeRoute(live, { restore: true })
      expect((yield* nginx.listRoutes).filter((r) => r.organizationId === org)).toEqual([live])
      // The same write again changes nothing.
      yield* nginx.writeRoute(live, { restore: true })
      // Another allocation's id with a greater generation: replaced too.
      yield* routeApi(handle, "PUT", `/routes/${org}?upstream=127.0.0.1:9999&allocation=${randomUUID()}&generation=999999999`)
      yield* nginx.writeRoute(live, { restore: true })
      expect((yield* nginx.listRoutes).filter((r) => r.organizationId === org)).toEqual([live])
      // The same allocation and generation with another upstream: the allocation's own write puts its upstream back.
      yield* routeApi(handle, "PUT", `/routes/${org}?upstream=127.0.0.1:9998&allocation=${live.allocationId}&generation=${live.generation}`)
      yield* nginx.writeRoute(live)
      expect((yield* nginx.listRoutes).filter((r) => r.organizationId === org)).toEqual([live])
      expect(yield* nginx.probeRoute(org)).toBe(live.allocationId)
    }).pipe(Effect.provide(Fast)))

  it.effect("an nginx restart empties the fences; this process pushes back the ones it wrote as soon as it sees the new boot id", () =>
    Effect.gen(function*() {
      const nginx = yield* localEdge
      const handle = yield* RealNginx
      const r = route()
      yield* nginx.writeRoute(r)
      expect(yield* nginx.removeRoute(r)).toBe("removed")
      yield* stateOf(nginx)
      yield* handle.stop
      yield* handle.start
      expect(yield* fenceOf(handle, r.organizationId)).toBeUndefined()
      yield* stateOf(nginx)
      const fence = yield* fenceOf(handle, r.organizationId)
      expect(fence?.generation).toBe(r.generation)
      expect(fence?.leftMs).toBeLessThanOrEqual(1500)
      expect((yield* nginx.writeRoute(r).pipe(Effect.flip)).reason).toContain(`removed generation ${r.generation}`)
    }).pipe(Effect.provide(Fast)))
})

layer(RealNginxLive({ workers: WORKERS }), { excludeTestServices: true, timeout: 60_000 })("lua route table, a small fence zone (real nginx)", (it) => {
  it.effect("a removal whose fence has no room fails and removes nothing; retried once fences expired, it succeeds", () =>
    Effect.gen(function*() {
      const nginx = yield* localEdge
      const handle = yield* RealNginx
      const r = route()
      yield* nginx.writeRoute(r)
      // Other orgs' removals fill the fence zone, each fence kept 4 s.
      let filled = 0
      for (;;) {
        const answers = yield* Effect.forEach(
          Array.from({ length: 32 }),
          () => routeApi(handle, "DELETE", `/routes/${randomUUID()}?allocation=${randomUUID()}&generation=1&fence_ms=4000`),
          { concurrency: 16 }
        )
        filled += answers.filter((answer) => answer.status === 200).length
        if (answers.some((answer) => answer.status === 507)) break
        expect(filled).toBeLessThan(5000)
      }
      expect(filled).toBeGreaterThan(500)
      const error = yield* nginx.removeRoute(r).pipe(Effect.flip)
      expect(error).toMatchObject({ operation: "remove", noEffect: true })
      expect(error.reason).toContain("no room for the removal's fence")
      // Nothing removed: the route is still served, and no fence pretends otherwise.
      expect(yield* nginx.probeRoute(r.organizationId)).toBe(r.allocationId)
      expect(yield* fenceOf(handle, r.organizationId)).toBeUndefined()
      // Retried (as the reconciler does) once the other fences have expired: removed, and fenced.
      const retried = yield* nginx.removeRoute(r).pipe(
        Effect.retry({ schedule: Schedule.spaced("250 millis"), times: 40 })
      )
      expect(retried).toBe("removed")
      expect(yield* nginx.probeRoute(r.organizationId)).toBe(null)
      expect((yield* fenceOf(handle, r.organizationId))?.generation).toBe(r.generation)
      expect((yield* nginx.writeRoute(r).pipe(Effect.flip)).noEffect).toBe(true)
    }).pipe(Effect.provide(LuaNginx({ NGINX_FENCE_TABLE_SIZE: "128k" }))), { timeout: 60_000 })
})
