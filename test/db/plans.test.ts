import { SqlClient } from "@effect/sql"
import { expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { DatabaseLive } from "../../src/db/Database.ts"
import { configWithDataDir } from "../support/stack.ts"

// An embedded Postgres with the real migrations, 10,000 gateways (2,000 of them allocated) and
// 20,000 finished allocations: the queries on the start path must stay index-backed at that size.
// They are written with the schema's shared definitions (database/0009): the claim order
// `gateways_claim_order`, the availability predicate `gateways_claimable`, the live states
// `gateway_allocator_is_live`. The claim's own statement is read from the procedure.
const Database = Layer.unwrapEffect(
  Effect.sync(() =>
    DatabaseLive.pipe(Layer.provide(configWithDataDir("ga-db-")))
  )
)

const org = "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"

const plan = (query: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe<{ "QUERY PLAN": string }>(`explain ${query}`)).pipe(
    Effect.map((rows) => rows.map((row) => row["QUERY PLAN"]).join("\n"))
  )

/**
 * The statement by which proc_organizations_start_gateway takes a gateway (its `... for update
 * skip locked`), as the procedure holds it now, without its `into` target.
 */
const claimStatement = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [definition] = yield* sql<{ readonly source: string }>`
    select pg_get_functiondef('proc_organizations_start_gateway(uuid, uuid, text, text)'::regprocedure) as source`
  const statement = /\bselect\b[^;]*?\bfor\s+update\s+skip\s+locked\b/i.exec(definition?.source ?? "")?.[0]
  if (statement === undefined) {
    return yield* Effect.dieMessage("proc_organizations_start_gateway has no `select ... for update skip locked` any more")
  }
  return statement.replace(/\binto\s+\w+(\s*,\s*\w+)*\s+(?=from\b)/i, "")
})

layer(Database, { excludeTestServices: true, timeout: 120_000 })("query plans at 10,000 gateways", (it) => {
  it.effect("claiming a free gateway, finding an org's allocation and listing allocations use their indexes", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`insert into gateways (name, upstream)
                 select 'bulk-' || g, 'gateway-' || g || '.test:9001' from generate_series(1, 10000) g`
      // History: 20,000 finished allocations, as a pool that has served a while has.
      yield* sql`insert into allocations (id, organization_id, gateway_id, upstream, state, runner, finished_at)
                 select gen_random_uuid(), gen_random_uuid(), null, '127.0.0.1:9001', 'released', 'old', now()
                 from generate_series(1, 20000)`
      yield* sql`analyze allocations`
      // Allocations a runner is moving (recovery), written with the live states or listing the
      // transitional ones. (Once many allocations are live, the planner may rather walk
      // allocations_one_live_per_gateway and filter, before 0009 too: an index scan over the live ones.)
      for (
        const transitional of [
          "gateway_allocator_is_live(a.state) and a.state <> 'active'",
          "a.state in ('starting', 'stopping', 'rolling_back')"
        ]
      ) {
        expect(yield* plan(`select * from allocations a where ${transitional} order by a.updated_at`)).toContain(
          "allocations_live_by_state"
        )
      }

      // 2,000 live allocations, 100 of them being stopped, each holding its gateway.
      yield* sql`insert into allocations (id, organization_id, gateway_id, upstream, state, runner)
                 select gen_random_uuid(), gen_random_uuid(), g.id, g.upstream,
                        case when row_number() over (order by g.id) <= 100 then 'stopping' else 'active' end, 'old'
                   from (select id, upstream from gateways order by name limit 2000) g`
      yield* sql`update gateways g set allocation_id = a.id, last_allocated_at = a.created_at
                   from allocations a where a.gateway_id = g.id`
      yield* sql`analyze gateways`
      yield* sql`analyze allocations`

      // The claim, as the procedure runs it: through the claim order, locking as it goes.
      const statement = yield* claimStatement
      expect(statement).toMatch(/\bfrom\s+gateways_claim_order\b/i)
      const claim = yield* plan(statement)
      expect(claim).toContain("LockRows")
      expect(claim).toContain("Index Scan using gateways_available")
      // The health pass's "next gateways a claim would take".
      const onDeck = yield* plan("select c.id from gateways_claim_order c limit 50")
      expect(onDeck).toContain("Index Scan using gateways_available")
      expect(claim + onDeck).not.toContain("Seq Scan")
      expect(claim + onDeck).not.toContain("Sort")

      // An org's live allocation, and a gateway's.
      const live = yield* plan(`select * from allocations a where a.organization_id = '${org}' and gateway_allocator_is_live(a.state)`)
      expect(live).toContain("allocations_one_live_per_org")
      const ofGateway = yield* plan(
        "select * from allocations a where a.gateway_id = '7c6b5a49-3828-4716-a5b4-c3d2e1f0a9b8' and gateway_allocator_is_live(a.state)"
      )
      expect(ofGateway).toContain("allocations_one_live_per_gateway")
      expect(live + ofGateway).not.toContain("Seq Scan")

      // GET /allocations (the console polls it): newest first, of everything or of one org.
      const newest = yield* plan("select * from allocations order by created_at desc, id desc limit 50")
      expect(newest).toContain("allocations_newest")
      const ofOrg = yield* plan(
        `select * from allocations where organization_id = '${org}' order by created_at desc, id desc limit 50`
      )
      expect(ofOrg).toContain("allocations_by_org")
      expect(newest + ofOrg).not.toContain("Seq Scan")
    }))
})
