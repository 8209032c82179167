import { SqlClient, type SqlError } from "@effect/sql"
import { expect, layer } from "@effect/vitest"
import { Deferred, Effect, Fiber, Layer, Predicate } from "effect"
import { randomUUID } from "node:crypto"
import { DatabaseLive } from "../../src/db/Database.ts"
import { AllocationState, LiveState, TransitionalState } from "../../src/domain/allocation.ts"
import { configWithDataDir } from "../support/stack.ts"

// The schema's shared definitions (database/0009): the live states, defined once by
// gateway_allocator_is_live and agreeing with the domain and with every index that lists them;
// and the claim order, gateways_claim_order over gateways_claimable, which the claim takes its
// gateway through, locking (FOR UPDATE SKIP LOCKED) as it goes.
const Database = Layer.unwrapEffect(
  Effect.sync(() =>
    DatabaseLive.pipe(Layer.provide(configWithDataDir("ga-shared-")))
  )
)

const quoted = (values: ReadonlyArray<string>) => values.map((value) => `'${value}'`).join(", ")

/** For each state: whether the index's predicate holds, and whether the state is live. */
const indexedStates = (index: string, states: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const [row] = yield* sql<{ readonly predicate: string | null }>`
      select pg_get_expr(x.indpred, x.indrelid) as predicate from pg_index x where x.indexrelid = ${index}::regclass`
    if (row?.predicate == null) return yield* Effect.dieMessage(`${index} has no predicate`)
    // The predicate names the column `state`: evaluated over each state in turn.
    const rows = yield* sql.unsafe<{ readonly state: string; readonly indexed: boolean }>(
      `select t.state, coalesce((${row.predicate}), false) as indexed from unnest(array[${quoted(states)}]) as t(state)`
    )
    return Object.fromEntries(rows.map((r) => [r.state, r.indexed]))
  })

interface Claimed {
  readonly allocationId: string
  readonly gatewayId: string
  readonly reused: boolean
}

const claim = (organizationId: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<Claimed>`
      select allocation_id as "allocationId", gateway_id as "gatewayId", reused
        from proc_organizations_start_gateway(${randomUUID()}, ${organizationId}, 'test-runner', ${null})`).pipe(
    Effect.map((rows) => rows[0] as Claimed),
    // Never waits on a row another claim holds: skipped, not waited for.
    Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => "the claim waited" as const })
  )

const sqlState = (error: SqlError.SqlError | string) =>
  typeof error !== "string" && Predicate.hasProperty(error.cause, "code") ? error.cause.code : undefined

layer(Database, { excludeTestServices: true, timeout: 120_000 })("the schema's shared definitions", (it) => {
  it.effect("gateway_allocator_is_live holds for the domain's live states only, as the indexes that list them", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const states = [...AllocationState.members.flatMap((member) => member.literals), "unknown"]
      const live = yield* sql.unsafe<{ readonly state: string; readonly live: boolean }>(
        `select t.state, coalesce(gateway_allocator_is_live(t.state), false) as live from unnest(array[${quoted(states)}]) as t(state)`
      )
      const expected = Object.fromEntries(states.map((state) => [state, (LiveState.literals as ReadonlyArray<string>).includes(state)]))
      expect(Object.fromEntries(live.map((row) => [row.state, row.live]))).toEqual(expected)
      // The partial unique indexes of 0001 spell the list out: they must say the same.
      expect(yield* indexedStates("allocations_one_live_per_org", states)).toEqual(expected)
      expect(yield* indexedStates("allocations_one_live_per_gateway", states)).toEqual(expected)
      expect(yield* indexedStates("allocations_live_by_state", states)).toEqual(
        Object.fromEntries(states.map((state) => [state, (TransitionalState.literals as ReadonlyArray<string>).includes(state)]))
      )
      // The table accepts the domain's states, no more.
      const [check] = yield* sql<{ readonly definition: string }>`
        select pg_get_constraintdef(oid) as definition from pg_constraint where conname = 'allocations_state_check'`
      const accepted = [...(check?.definition ?? "").matchAll(/'([a-z_]+)'::text/g)].map((match) => match[1])
      expect(accepted.sort()).toEqual(states.filter((state) => state !== "unknown").sort())
      // No function spells the live states out but gateway_allocator_is_live; the claim and the
      // release ask it.
      const spelled = yield* sql<{ readonly name: string }>`
        select p.proname as name from pg_proc p
         where p.pronamespace = 'public'::regnamespace and p.proname <> 'gateway_allocator_is_live'
           and p.prosrc ~ 'rolling_back'`
      expect(spelled).toEqual([])
      const asking = yield* sql<{ readonly name: string }>`
        select p.proname as name from pg_proc p
         where p.pronamespace = 'public'::regnamespace and p.prosrc ~ 'gateway_allocator_is_live'
         order by p.proname`
      expect(asking.map((row) => row.name)).toEqual(["proc_organizations_gateways_stop", "proc_organizations_start_gateway"])
    }))

  it.effect("a claim takes gateways in gateways_claim_order's order, skipping the ones other claims hold", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const org = () => randomUUID()
      // Claimable: old and new (never allocated, by age), rested (allocated two hours ago, its
      // quarantine over), used (allocated an hour ago). Not claimable: quarantined, draining,
      // unreleased (its release is pending), allocated.
      yield* sql`
        insert into gateways (name, upstream, created_at, last_allocated_at, state, quarantined_until) values
          ('co-new', 'co-new.test:9001', now() - interval '1 day', null, 'active', null),
          ('co-old', 'co-old.test:9001', now() - interval '2 days', null, 'active', null),
          ('co-used', 'co-used.test:9001', now() - interval '3 days', now() - interval '1 hour', 'active', null),
          ('co-rested', 'co-rested.test:9001', now() - interval '3 days', now() - interval '2 hours', 'active', now() - interval '1 minute'),
          ('co-quarantined', 'co-quarantined.test:9001', now() - interval '4 days', null, 'active', now() + interval '1 hour'),
          ('co-draining', 'co-draining.test:9001', now() - interval '4 days', null, 'draining', null),
          ('co-unreleased', 'co-unreleased.test:9001', now() - interval '4 days', null, 'active', null),
          ('co-allocated', 'co-allocated.test:9001', now() - interval '4 days', null, 'active', null)`
      yield* sql`
        insert into allocations (id, organization_id, gateway_id, upstream, state, runner, finished_at)
        select gen_random_uuid(), gen_random_uuid(), g.id, g.upstream,
               case g.name when 'co-allocated' then 'active' else 'released' end, 'old',
               case g.name when 'co-allocated' then null else now() end
          from gateways g where g.name in ('co-allocated', 'co-unreleased')`
      yield* sql`
        update gateways g set allocation_id = a.id from allocations a
         where a.gateway_id = g.id and g.name = 'co-allocated'`
      yield* sql`
        update gateways g set unreleased_allocation_id = a.id from allocations a
         where a.gateway_id = g.id and g.name = 'co-unreleased'`

      const names = yield* sql<{ readonly id: string; readonly name: string }>`select id, name from gateways`
      const named = (id: string) => names.find((row) => row.id === id)?.name
      const order = yield* sql<{ readonly name: string }>`select c.name from gateways_claim_order c`
      expect(order.map((row) => row.name)).toEqual(["co-old", "co-new", "co-rested", "co-used"])
      const [claimable] = yield* sql<{ readonly count: number }>`select count(*)::int as count from gateways_claimable`
      expect(claimable?.count).toBe(4)
      // The health pass asks the next ones a claim would take.
      const onDeck = yield* sql<{ readonly id: string }>`select c.id from gateways_claim_order c limit 2`
      expect(onDeck.map((row) => named(row.id))).toEqual(["co-old", "co-new"])

      // One claim holds co-old (its transaction is open); the others go on without waiting.
      const held = yield* Deferred.make<Claimed>()
      const finish = yield* Deferred.make<void>()
      const holder = yield* sql.withTransaction(
        Effect.gen(function*() {
          yield* Deferred.succeed(held, yield* claim(org()))
          yield* Deferred.await(finish)
          return yield* Effect.fail("rolled back" as const)
        })
      ).pipe(Effect.flip, Effect.fork)
      const first = yield* Deferred.await(held)
      expect(named(first.gatewayId)).toBe("co-old")
      const taken: Array<string | undefined> = []
      for (let i = 0; i < 3; i++) taken.push(named((yield* claim(org())).gatewayId))
      expect(taken).toEqual(["co-new", "co-rested", "co-used"])
      // Every claimable gateway is taken or held: no gateway, at once.
      const none = yield* claim(org()).pipe(Effect.flip)
      expect(sqlState(none)).toBe("GA001")

      // The holder rolls back: co-old is claimable again, and taken next.
      yield* Deferred.succeed(finish, undefined)
      expect(yield* Fiber.join(holder)).toBe("rolled back")
      const again = org()
      const last = yield* claim(again)
      expect({ gateway: named(last.gatewayId), reused: last.reused }).toEqual({ gateway: "co-old", reused: false })
      // The org's live allocation is found again (is_live), not a second gateway claimed.
      expect(yield* claim(again)).toEqual({ ...last, reused: true })
      const [left] = yield* sql<{ readonly count: number }>`select count(*)::int as count from gateways_claimable`
      expect(left?.count).toBe(0)
    }))
})
