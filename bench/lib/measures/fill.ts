// Fills: new orgs started through the API at c=64 until the target count, the deadline or 200
// errors; and, when the time budget runs out first, the rest created directly, as the service would
// leave them (reported as such).
import * as Reactivity from "@effect/experimental/Reactivity"
import { PgClient } from "@effect/sql-pg"
import { Effect } from "effect"
import { randomUUID } from "node:crypto"
import { rename, writeFile } from "node:fs/promises"
import path from "node:path"
import { type AllocationId, Generation, type OrganizationId, type Upstream } from "../../../src/domain/ids.ts"
import { renderRoute, routeFileName } from "../../../src/nginx/config.ts"
import { type BenchContext, checkAbort, cpuNow, routeTable } from "../context.ts"
import { cpuDelta } from "../cpu.ts"
import { nginxReload } from "../outside.ts"
import type { FillFigures } from "../results.ts"
import { routeApi } from "../routeTable.ts"
import { forEachConcurrent, now, round, runWorkers } from "../stats.ts"

export const FILL_CONCURRENCY = 64
/** A fill that fails this often is broken, not slow: it stops and the run reports the errors. */
export const MAX_FILL_ERRORS = 200
/** Records per PowerDNS PATCH when creating allocations directly. */
const DNS_CHUNK = 500

export const fillTo = async (ctx: BenchContext, target: number, deadline: number): Promise<FillFigures> => {
  const { api, server } = ctx.fleet.require("a fill")
  const { allocations, run } = ctx
  const from = allocations.size
  run.log(`filling to ${target} active allocations at c=${FILL_CONCURRENCY} (from ${from})`)
  let inFlight = 0
  let errors = 0
  let lastReport = now()
  const cpuBefore = cpuNow(ctx)
  const start = now()
  await runWorkers(
    FILL_CONCURRENCY,
    () => !run.signal.aborted && allocations.size + inFlight < target && now() < deadline && errors < MAX_FILL_ERRORS,
    async () => {
      inFlight += 1
      try {
        const answer = await allocations.start(api, randomUUID())
        if (answer.status !== 200) {
          errors += 1
          ctx.errors.answer("fill", answer)
        }
      } catch (error) {
        errors += 1
        ctx.errors.exception("fill", error)
      } finally {
        inFlight -= 1
      }
      if (now() - lastReport > 10_000) {
        lastReport = now()
        run.log(`  ... ${allocations.size} active, ${Math.round((allocations.size - from) / ((now() - start) / 1000))} starts/s`)
      }
    }
  )
  checkAbort(run)
  const ms = now() - start
  const figures: FillFigures = {
    mode: server.mode,
    from,
    target,
    reached: allocations.size,
    concurrency: FILL_CONCURRENCY,
    ms: round(ms),
    startsPerSecond: round((allocations.size - from) / (ms / 1000)),
    errors,
    gaveUp: allocations.size < target,
    cpuSeconds: cpuDelta(cpuBefore, cpuNow(ctx))
  }
  run.log(`  reached ${allocations.size} in ${(ms / 1000).toFixed(1)} s (${figures.startsPerSecond} starts/s, ${errors} errors)`)
  return figures
}

/**
 * Creates `count` active allocations directly, as the service would leave them: rows in
 * Postgres (allocation + gateway claimed), the DNS records (one PATCH per 500), then the routes:
 * the route table in one bulk request (lua), or the route files and one reload. Used only when
 * the API fill runs out of the time budget, and reported.
 */
export const createDirectly = async (ctx: BenchContext, count: number): Promise<{ count: number; ms: number }> => {
  const { server } = ctx.fleet.require("creating allocations directly")
  const { domain, nginx, pdns } = ctx.outside
  ctx.run.log(`  creating the remaining ${count} active allocations directly (SQL, route files, PowerDNS)`)
  const start = now()
  const rows = await Effect.runPromise(
    Effect.scoped(
      Effect.gen(function*() {
        const sql = yield* PgClient.make({ url: ctx.stack.databaseUrl, maxConnections: 1 })
        return yield* sql<{ allocation_id: string; organization_id: string; upstream: string; generation: string }>`
          with picked as (
            select id, upstream, gen_random_uuid() as allocation_id, gen_random_uuid() as organization_id
              from gateways where allocation_id is null
             order by created_at, id limit ${count} for update skip locked
          ), inserted as (
            insert into allocations (id, organization_id, gateway_id, upstream, state, runner)
            select allocation_id, organization_id, id, upstream, 'active', 'bench-synthetic' from picked
            returning id, organization_id, gateway_id, upstream, generation
          )
          update gateways g set allocation_id = inserted.id from inserted where g.id = inserted.gateway_id
          returning inserted.id as allocation_id, inserted.organization_id, inserted.upstream, inserted.generation`
      })
    ).pipe(Effect.provide(Reactivity.layer))
  )
  // Rows first: a reconcile pass in between sees live allocations missing their routes (and
  // restores them), never orphan files.
  for (let i = 0; i < rows.length; i += DNS_CHUNK) {
    checkAbort(ctx.run)
    const chunk = rows.slice(i, i + DNS_CHUNK)
    const response = await fetch(
      `${pdns.apiUrl}/api/v1/servers/${encodeURIComponent(pdns.serverId)}/zones/${encodeURIComponent(pdns.zone)}`,
      {
        method: "PATCH",
        headers: { "x-api-key": pdns.apiKey, "content-type": "application/json" },
        body: JSON.stringify({
          rrsets: chunk.map((row) => ({
            name: `org-${row.organization_id}.${domain}.`,
            type: "A",
            ttl: 60,
            changetype: "REPLACE",
            records: [{ content: ctx.stack.env.DNS_RECORD_IP ?? "127.0.0.1", disabled: false }]
          }))
        }),
        signal: AbortSignal.timeout(120_000)
      }
    )
    await response.arrayBuffer()
    if (response.status !== 204) throw new Error(`PowerDNS bulk PATCH answered HTTP ${response.status}`)
  }
  if (server.mode === "lua") {
    // The route table: one bulk request, as the service does after an nginx restart.
    const table = routeTable(ctx)
    const boot = /^boot (\S+)/.exec((await routeApi(table, "GET", "/boot")).body)?.[1] ?? ""
    const lines = rows.map((row) => `${row.organization_id} ${row.upstream} ${row.allocation_id} ${row.generation}\n`).join("")
    const pushed = await routeApi(table, "POST", `/routes?boot=${boot}`, lines)
    if (pushed.status !== 200) throw new Error(`route API bulk push answered ${pushed.status}: ${pushed.body}`)
  } else {
    const routesDir = path.join(nginx.confDir, "routes")
    await forEachConcurrent(rows, 16, async (row) => {
      const file = path.join(routesDir, routeFileName(row.organization_id as OrganizationId))
      await writeFile(`${file}.bench.tmp`, renderRoute({
        organizationId: row.organization_id as OrganizationId,
        allocationId: row.allocation_id as AllocationId,
        upstream: row.upstream as Upstream,
        generation: Generation.make(Number(row.generation)),
        domain
      }))
      await rename(`${file}.bench.tmp`, file)
    })
    await nginxReload(nginx)
  }
  ctx.allocations.addCreatedDirectly(rows.map((row) => row.organization_id))
  return { count: rows.length, ms: round(now() - start) }
}
