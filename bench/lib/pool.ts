// The pool the run allocates from: maxRoutes + 300 gateways, a few through the API (timed), the
// rest by one SQL insert, each a sample gateway of its own (gateways.ts).
import * as Reactivity from "@effect/experimental/Reactivity"
import { PgClient } from "@effect/sql-pg"
import { Effect } from "effect"
import { expectStatus } from "./api.ts"
import type { BenchContext } from "./context.ts"
import type { PoolSetup } from "./results.ts"
import { forEachConcurrent, now, round, summarize } from "./stats.ts"

/** Free gateways left at the largest level, so that its starts never find the pool empty. */
const POOL_HEADROOM = 300
/** Gateways added through `POST /pool/gateways` (timed); the rest go in by SQL, for speed. */
const VIA_API = 64

export const poolSize = (maxRoutes: number): number => maxRoutes + POOL_HEADROOM

export const fillPool = async (ctx: BenchContext): Promise<PoolSetup> => {
  const { api } = ctx.fleet.require("filling the pool")
  const upstreams = ctx.outside.poolUpstreams
  const size = upstreams.length
  ctx.run.log(`pool: ${VIA_API} gateways through POST /pool/gateways, ${size - VIA_API} by SQL`)
  const latencies: Array<number> = []
  const viaApi = upstreams.slice(0, VIA_API).map((upstream, i) => ({ upstream, name: `bench-api-${String(i).padStart(3, "0")}` }))
  await forEachConcurrent(viaApi, 8, async ({ upstream, name }) => {
    const answer = expectStatus(
      await api.addGateway(name, upstream),
      201,
      "POST /pool/gateways"
    )
    latencies.push(answer.ms)
  })
  const sqlStart = now()
  const viaSql = upstreams.slice(VIA_API)
  const numbers = viaSql.map((_, k) => VIA_API + k)
  await Effect.runPromise(
    Effect.scoped(
      Effect.gen(function*() {
        const sql = yield* PgClient.make({ url: ctx.stack.databaseUrl, maxConnections: 1 })
        yield* sql.unsafe(
          `insert into gateways (name, upstream)
           select 'bench-gw-' || lpad(g::text, 5, '0'), u from unnest($1::int[], $2::text[]) as t(g, u)`,
          [numbers, viaSql]
        )
        // Now rather than by autovacuum in the middle of the raw measurements.
        yield* sql.unsafe("vacuum analyze gateways")
      })
    ).pipe(Effect.provide(Reactivity.layer))
  )
  const pool = expectStatus(await api.pool(), 200, "GET /pool").body
  if (pool.total !== size) throw new Error(`pool has ${pool.total} gateways, expected ${size}`)
  return {
    viaApi: VIA_API,
    apiLatency: summarize(latencies),
    viaSql: size - VIA_API,
    sqlMs: round(now() - sqlStart),
    total: pool.total,
    free: pool.free
  }
}
