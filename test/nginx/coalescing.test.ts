import { expect, layer } from "@effect/vitest"
import { Effect, Metric } from "effect"
import { randomUUID } from "node:crypto"
import { rmSync, writeFileSync } from "node:fs"
import path from "node:path"
import { type AllocationId, Generation, type OrganizationId, type Upstream } from "../../src/domain/ids.ts"
import { Nginx } from "../../src/nginx/Nginx.ts"
import { nginxReloadBatchSize, nginxReloadsTotal } from "../../src/telemetry/Metrics.ts"
import { InstalledNginx, RealNginx, RealNginxLive } from "../support/nginx.ts"

const NginxFor = (mode: "coalesce" | "each") => InstalledNginx({ NGINX_ROUTING: "reload", NGINX_RELOAD_MODE: mode })

const route = () => ({
  organizationId: randomUUID() as OrganizationId,
  allocationId: randomUUID() as AllocationId,
  upstream: "127.0.0.1:9" as Upstream,
  generation: Generation.make(1)
})

/** What a start does at nginx: write its route, reload, and wait until nginx serves it. */
const publish = (r: ReturnType<typeof route>) =>
  Effect.flatMap(Nginx, (nginx) =>
    nginx.writeRoute(r).pipe(Effect.zipRight(nginx.awaitServed(r))))

const batchCount = Effect.map(Metric.value(nginxReloadBatchSize), (state) => state.count)
const reloadCount = Effect.map(
  Metric.value(nginxReloadsTotal.pipe(Metric.tagged("outcome", "ok"))),
  (state) => Number(state.count)
)

layer(RealNginxLive(), { excludeTestServices: true, timeout: 60_000 })("nginx reloads (real nginx)", (it) => {
  it.effect("coalesce: 24 concurrent publishes share a few reloads, and every route is live", () =>
    Effect.gen(function*() {
      const routes = Array.from({ length: 24 }, route)
      const before = yield* batchCount
      yield* Effect.all(routes.map(publish), { concurrency: "unbounded" })
      const reloads = (yield* batchCount) - before
      expect(reloads).toBeGreaterThanOrEqual(1)
      expect(reloads).toBeLessThan(routes.length / 2)
      const nginx = yield* Nginx
      for (const r of routes) expect(yield* nginx.probeRoute(r.organizationId)).toBe(r.allocationId)
    }).pipe(Effect.provide(NginxFor("coalesce"))))

  it.effect("coalesce: a reload nginx refuses fails every member of its batch, and nginx keeps its config", () =>
    Effect.gen(function*() {
      const handle = yield* RealNginx
      const nginx = yield* Nginx
      const live = route()
      yield* publish(live)
      const broken = path.join(handle.confDir, "broken.conf")
      writeFileSync(broken, "this is not nginx syntax\n")
      const results = yield* Effect.all(Array.from({ length: 6 }, route).map((r) => publish(r).pipe(Effect.either)), {
        concurrency: "unbounded"
      })
      rmSync(broken)
      for (const result of results) {
        expect(result._tag).toBe("Left")
        if (result._tag === "Left") expect(result.left).toMatchObject({ _tag: "NginxError", operation: "reload" })
      }
      // The last good configuration still serves the earlier route.
      expect(yield* nginx.probeRoute(live.organizationId)).toBe(live.allocationId)
    }).pipe(Effect.provide(NginxFor("coalesce"))))

  it.effect("once a route is confirmed added or removed, no fresh connection sees the old configuration", () =>
    Effect.gen(function*() {
      const nginx = yield* Nginx
      for (let round = 0; round < 3; round++) {
        const r = route()
        yield* publish(r)
        // Workers of the previous generation accept for ~100 ms after a reload; by now none may.
        const afterAdd = yield* Effect.forEach(Array.from({ length: 40 }), () => nginx.probeRoute(r.organizationId))
        expect(afterAdd.every((served) => served === r.allocationId)).toBe(true)
        yield* nginx.removeRoute(r)
        yield* nginx.awaitWithdrawn(r)
        const afterRemove = yield* Effect.forEach(Array.from({ length: 40 }), () => nginx.probeRoute(r.organizationId))
        expect(afterRemove.every((served) => served === null)).toBe(true)
      }
    }).pipe(Effect.provide(NginxFor("coalesce"))))

  it.effect("routes removed while others are published and reloaded: every reload succeeds", () =>
    Effect.gen(function*() {
      const nginx = yield* Nginx
      const leaving = Array.from({ length: 16 }, route)
      yield* Effect.all(leaving.map(publish), { concurrency: "unbounded" })
      const unpublish = (r: ReturnType<typeof route>) =>
        nginx.removeRoute(r).pipe(Effect.zipRight(nginx.awaitWithdrawn(r)))
      const arriving = Array.from({ length: 16 }, route)
      // A file removed while the master re-parses would make nginx refuse the whole configuration.
      yield* Effect.all([...leaving.map(unpublish), ...arriving.map(publish)], { concurrency: "unbounded" })
      for (const r of leaving) expect(yield* nginx.probeRoute(r.organizationId)).toBe(null)
      for (const r of arriving) expect(yield* nginx.probeRoute(r.organizationId)).toBe(r.allocationId)
    }).pipe(Effect.provide(NginxFor("coalesce"))))

  it.effect("each: one reload per publish", () =>
    Effect.gen(function*() {
      const routes = Array.from({ length: 6 }, route)
      const before = yield* reloadCount
      yield* Effect.all(routes.map(publish), { concurrency: "unbounded" })
      expect((yield* reloadCount) - before).toBe(routes.length)
      const nginx = yield* Nginx
      for (const r of routes) expect(yield* nginx.probeRoute(r.organizationId)).toBe(r.allocationId)
    }).pipe(Effect.provide(NginxFor("each"))))
})
