import { SqlClient } from "@effect/sql"
import { expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import path from "node:path"
import { DatabaseLive } from "../../src/db/Database.ts"
import { configFrom } from "../support/stack.ts"

// An embedded Postgres with the real migrations and 10,000 gateways: the queries on the start
// path must stay index-backed at that size.
const Database = Layer.unwrapEffect(
  Effect.sync(() =>
    DatabaseLive.pipe(Layer.provide(configFrom({ DATA_DIR: mkdtempSync(path.join(tmpdir(), "ga-db-")) })))
  )
)

const plan = (query: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe<{ "QUERY PLAN": string }>(`explain ${query}`)).pipe(
    Effect.map((rows) => rows.map((row) => row["QUERY PLAN"]).join("\n"))
  )

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
      yield* sql`analyze gateways`
      yield* sql`analyze allocations`
      const claim = yield* plan(
        `select * from gateways g where g.allocation_id is null and g.state = 'active' and g.unreleased_allocation_id is null
           and (g.quarantined_until is null or g.quarantined_until <= now())
         order by g.last_allocated_at nulls first, g.created_at, g.id limit 1 for update skip locked`
      )
      expect(claim).toContain("Index Scan using gateways_available")
      const live = yield* plan(
        "select * from allocations a where a.organization_id = '3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b' and a.state in ('starting', 'active', 'stopping', 'rolling_back')"
      )
      expect(live).toContain("allocations_one_live_per_org")
      expect(claim + live).not.toContain("Seq Scan")
      const recoverable = yield* plan(
        "select * from allocations a where a.state in ('starting', 'stopping', 'rolling_back') order by a.updated_at"
      )
      expect(recoverable).toContain("allocations_live_by_state")
      // GET /allocations (the console polls it): newest first, of everything or of one org.
      const newest = yield* plan("select * from allocations order by created_at desc, id desc limit 50")
      expect(newest).toContain("allocations_newest")
      const ofOrg = yield* plan(
        "select * from allocations where organization_id = '3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b' order by created_at desc, id desc limit 50"
      )
      expect(ofOrg).toContain("allocations_by_org")
      expect(newest + ofOrg).not.toContain("Seq Scan")
    }))
})
