// What `GET /routes` costs at 10,000 and 100,000 routes (a measurement, printed, not asserted
// beyond what the listing must say): it walks the route zone's keys under the zone's lock, so
// while it runs every worker's route lookup waits. Real nginx with the Lua module, 4 workers.
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { readFileSync } from "node:fs"
import path from "node:path"
import { type AllocationId, Generation, type OrganizationId, type Upstream } from "../../src/domain/ids.ts"
import type { Route } from "../../src/nginx/Nginx.ts"
import { EDGE_FILE, PROBE_PATH, PROBE_SECRET_HEADER } from "../../src/nginx/config.ts"
import { InstalledNginx, localEdge, RealNginx, RealNginxLive } from "../support/nginx.ts"
import { rawGet } from "../support/probes.ts"

const DOMAIN = "domain.local"
const CHUNK = 10_000

const percentile = (values: ReadonlyArray<number>, p: number) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length - 1) * p))] ?? 0
}

const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const startedAt = performance.now()
    const value = yield* effect
    return { value, ms: performance.now() - startedAt }
  })

layer(RealNginxLive({ workers: 4 }), { excludeTestServices: true, timeout: 600_000 })("GET /routes at scale (real nginx, a measurement)", (it) => {
  it.effect("lists 10,000 and 100,000 routes; prints how long the listing takes and how long lookups wait meanwhile", () =>
    Effect.gen(function*() {
      const nginx = yield* localEdge
      const handle = yield* RealNginx
      const secret = (JSON.parse(readFileSync(path.join(handle.confDir, EDGE_FILE), "utf8")) as { probeSecret: string }).probeSecret
      const headers = { [PROBE_SECRET_HEADER]: secret }
      const probeOrg = randomUUID()
      const probe = timed(rawGet({ port: handle.listenPort, path: PROBE_PATH, headers: { host: `org-${probeOrg}.${DOMAIN}`, ...headers } }))
      const figures: Array<string> = []
      let total = 0
      for (const target of [10_000, 100_000]) {
        while (total < target) {
          const bootId = (yield* Effect.flatMap(nginx.tableState, Effect.orDieWith(() => "no table"))).bootId
          const chunk: Array<Route> = Array.from({ length: CHUNK }, (_, i) => ({
            organizationId: randomUUID() as OrganizationId,
            allocationId: randomUUID() as AllocationId,
            upstream: `127.${(total + i) >> 16 & 255}.${(total + i) >> 8 & 255}.${(total + i) & 255}:9001` as Upstream,
            generation: Generation.make(1_000_000 + total + i)
          }))
          yield* nginx.restoreAll(bootId, chunk)
          total += CHUNK
        }
        const raw = []
        for (let i = 0; i < 5; i++) {
          raw.push(yield* timed(rawGet({ port: handle.routeApiPort, path: "/routes", headers, timeoutMs: 60_000 })))
        }
        const listed = []
        for (let i = 0; i < 3; i++) listed.push(yield* timed(nginx.listRoutes))
        expect(listed[0]?.value.length).toBe(target)
        // Lookups (the probe location reads the same zone) from fresh connections: idle, then
        // while listings run back to back.
        const idle = []
        for (let i = 0; i < 200; i++) idle.push((yield* probe).ms)
        // The listings run in another process: reading 10 MiB here would stall this process's own
        // probes and count as nginx's.
        const busy: Array<number> = []
        const lister = yield* listInAnotherProcess(handle.routeApiPort, secret, 3)
        while (!lister.done()) busy.push((yield* probe).ms)
        const bytes = raw[0]?.value.body.length ?? 0
        figures.push(
          `${target} routes: GET /routes ${median(raw.map((r) => r.ms)).toFixed(1)} ms median (${(bytes / 1024 / 1024).toFixed(1)} MiB), ` +
            `Nginx.listRoutes (with decoding) ${median(listed.map((r) => r.ms)).toFixed(1)} ms median; ` +
            `a lookup idle p50 ${percentile(idle, 0.5).toFixed(2)} / max ${Math.max(...idle).toFixed(2)} ms, ` +
            `during listings p50 ${percentile(busy, 0.5).toFixed(2)} / p99 ${percentile(busy, 0.99).toFixed(2)} / max ${Math.max(...busy).toFixed(2)} ms (${busy.length} lookups)`
        )
      }
      const zones = yield* rawGet({ port: handle.routeApiPort, path: "/zones", headers })
      figures.push(`zones at 100,000 routes (name capacity free): ${zones.body.trim().replace(/\n/g, "; ")}`)
      console.log(`GET /routes measurement:\n  ${figures.join("\n  ")}`)
    }).pipe(Effect.provide(InstalledNginx({ NGINX_ROUTING: "lua", DOMAIN }))))
})

const median = (values: ReadonlyArray<number>) => percentile(values, 0.5)

/** `GET /routes` `times` times in a row from a child node process; `done()` once it exited. */
const listInAnotherProcess = (port: number, secret: string, times: number) =>
  Effect.sync(() => {
    const script = `(async () => { for (let i = 0; i < ${times}; i++) await (await fetch("http://127.0.0.1:${port}/routes", ` +
      `{ headers: { "${PROBE_SECRET_HEADER}": "${secret}" } })).text() })()`
    const child = spawn(process.execPath, ["-e", script], { stdio: "ignore" })
    let exited = false
    child.once("exit", () => {
      exited = true
    })
    return { done: () => exited }
  })
