import { SqlClient, type SqlError } from "@effect/sql"
import { Data, Effect, Option, type ParseResult, Schema } from "effect"
import { DatabaseError } from "../db/errors.ts"
import { Gateway, type GatewayState, PendingRelease, QUARANTINE_CAP_MS } from "../domain/gateway.ts"
import { type AllocationId, GatewayId, type GatewayName, type Upstream } from "../domain/ids.ts"

export class GatewayNameTaken extends Data.TaggedError("GatewayNameTaken")<{ readonly name: string }> {}
/** The upstream is in the pool already (under another name): one gateway process, one org. */
export class GatewayUpstreamTaken extends Data.TaggedError("GatewayUpstreamTaken")<{ readonly upstream: string }> {}
export class GatewayNotFound extends Data.TaggedError("GatewayNotFound")<{ readonly gatewayId: GatewayId }> {}
export class GatewayAllocated extends Data.TaggedError("GatewayAllocated")<{ readonly gatewayId: GatewayId }> {}

export const PoolStats = Schema.Struct({
  total: Schema.Number,
  free: Schema.Number,
  allocated: Schema.Number,
  /** Free gateways that may be handed out now: not in quarantine, not draining, no release pending, no edge owing a removal. */
  available: Schema.Number,
  quarantined: Schema.Number,
  draining: Schema.Number,
  /** Free gateways whose release failed: held back until a retry succeeds. */
  unreleased: Schema.Number,
  /** Free gateways some edge may still route to (it owes their org's removal): held back until it acknowledged. */
  held: Schema.Number
})
export type PoolStats = typeof PoolStats.Type

// Rows are selected under the domain's field names and decoded with the domain's schemas; each
// decoder is made once.
const gatewayColumns = `id as "gatewayId", name, upstream, allocation_id as "allocationId", state, health,
  quarantined_until as "quarantinedUntil", consecutive_failures as "consecutiveFailures", last_failure as "lastFailure",
  unreleased_allocation_id as "unreleasedAllocationId"`
const decodeGateways = Schema.decodeUnknown(Schema.Array(Gateway))
const decodeStats = Schema.decodeUnknown(PoolStats)
const decodeQuarantined = Schema.decodeUnknown(
  Schema.Array(Schema.Struct({ consecutiveFailures: Schema.Number, quarantinedUntil: Schema.DateFromSelf }))
)
const decodeRotationEnd = Schema.decodeUnknown(Schema.Array(Schema.Struct({ rotationEnd: Schema.NullOr(GatewayId) })))
const decodePendingReleases = Schema.decodeUnknown(Schema.Array(PendingRelease))
const decodeCount = Schema.decodeUnknown(Schema.Array(Schema.Struct({ value: Schema.Number })))
const decodeRemoval = Schema.decodeUnknown(Schema.Array(Schema.Struct({ outcome: Schema.Literal("deleted", "allocated", "missing") })))

const databaseError = (cause: SqlError.SqlError | ParseResult.ParseError) => new DatabaseError({ cause })

/**
 * The gateway answered: out of quarantine, healthy; after a successful start (`served`) its backoff
 * starts over too. A gateway already so is not written. A statement of its own (markHealthy), or
 * carried by a start's activation (AllocationStore.activate).
 */
export const markHealthyUpdate = (sql: SqlClient.SqlClient, gatewayId: GatewayId, served: boolean) =>
  sql`
    update gateways
       set health = 'healthy', quarantined_until = null,
           consecutive_failures = case when ${served} then 0 else consecutive_failures end
     where id = ${gatewayId}
       and (health <> 'healthy' or quarantined_until is not null or (${served} and consecutive_failures > 0))`

/**
 * The gateways in Postgres: the pool's administration (add, drain, remove, list, counts), their
 * health (quarantine with backoff, healthy again, the next ones a health pass asks) and the
 * releases they still owe. Which gateway a claim takes, and freeing it, are the allocations' (see
 * AllocationStore): a gateway is free exactly when no live allocation holds it.
 */
export class GatewayStore extends Effect.Service<GatewayStore>()("GatewayStore", {
  effect: Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient

    const stats = Effect.fn("GatewayStore.stats")(function*() {
      const rows = yield* sql`
        select count(*)::int as total,
               (count(*) filter (where allocation_id is null))::int as free,
               (count(*) filter (where allocation_id is not null))::int as allocated,
               (select count(*) from gateways_claimable)::int as available,
               (count(*) filter (where quarantined_until > now()))::int as quarantined,
               (count(*) filter (where state = 'draining'))::int as draining,
               (count(*) filter (where unreleased_allocation_id is not null))::int as unreleased,
               (select count(distinct o.gateway_id) from edge_removals_owed o
                  join gateways h on h.id = o.gateway_id where h.allocation_id is null)::int as held
          from gateways`
      return yield* decodeStats(rows[0])
    }, Effect.mapError(databaseError))

    const addGateway = Effect.fn("GatewayStore.addGateway")(function*(name: GatewayName, upstream: Upstream) {
      const rows = yield* sql`
        insert into gateways (name, upstream) values (${name}, ${upstream})
        on conflict do nothing
        returning ${sql.literal(gatewayColumns)}`.pipe(Effect.flatMap(decodeGateways), Effect.mapError(databaseError))
      const added = rows[0]
      if (added !== undefined) return added
      const named = yield* sql`select 1 from gateways where name = ${name}`.pipe(Effect.mapError(databaseError))
      return yield* named.length > 0 ? new GatewayNameTaken({ name }) : new GatewayUpstreamTaken({ upstream })
    })

    /** Drains a gateway (not handed out again; it keeps its org) or makes it active again. */
    const setGatewayState = Effect.fn("GatewayStore.setGatewayState")(function*(gatewayId: GatewayId, state: GatewayState) {
      const rows = yield* sql`
        update gateways set state = ${state} where id = ${gatewayId}
        returning ${sql.literal(gatewayColumns)}`.pipe(Effect.flatMap(decodeGateways), Effect.mapError(databaseError))
      const updated = rows[0]
      if (updated === undefined) return yield* new GatewayNotFound({ gatewayId })
      return updated
    })

    /** Removes a free gateway. An allocated one stays (409): stop its org first. */
    const removeGateway = Effect.fn("GatewayStore.removeGateway")(function*(gatewayId: GatewayId) {
      const [result] = yield* sql`
        with target as (select id, allocation_id from gateways where id = ${gatewayId} for update),
             deleted as (
               delete from gateways g using target t
                where g.id = t.id and t.allocation_id is null
               returning g.id)
        select case
                 when exists (select 1 from deleted) then 'deleted'
                 when exists (select 1 from target) then 'allocated'
                 else 'missing'
               end as outcome`.pipe(Effect.flatMap(decodeRemoval), Effect.mapError(databaseError))
      if (result?.outcome === "missing") return yield* new GatewayNotFound({ gatewayId })
      if (result?.outcome === "allocated") return yield* new GatewayAllocated({ gatewayId })
    })

    const listGateways = Effect.fn("GatewayStore.listGateways")(function*() {
      return yield* decodeGateways(yield* sql`select ${sql.literal(gatewayColumns)} from gateways order by created_at, id`)
    }, Effect.mapError(databaseError))

    /**
     * Sets the gateway aside: not handed out for `baseMs`, doubled for each failure in a row
     * before this one, capped at QUARANTINE_CAP_MS. Returns the failures in a row and the end.
     */
    const quarantine = Effect.fn("GatewayStore.quarantine")(function*(gatewayId: GatewayId, reason: string, baseMs: number) {
      const rows = yield* sql`
        update gateways
           set quarantined_until = now() + make_interval(secs => least(${baseMs} * power(2, consecutive_failures), ${QUARANTINE_CAP_MS}) / 1000.0),
               consecutive_failures = consecutive_failures + 1,
               health = 'unhealthy', last_failure = ${reason.slice(0, 500)}, last_failure_at = now()
         where id = ${gatewayId}
        returning consecutive_failures as "consecutiveFailures", quarantined_until as "quarantinedUntil"`
      return Option.fromNullable((yield* decodeQuarantined(rows))[0])
    }, Effect.mapError(databaseError))

    /**
     * The gateway answered: out of quarantine, healthy. After a successful start (`served`) its
     * backoff starts over too; a health check alone does not reset it.
     */
    const markHealthy = Effect.fn("GatewayStore.markHealthy")(function*(gatewayId: GatewayId, served: boolean) {
      yield* markHealthyUpdate(sql, gatewayId, served)
    }, Effect.mapError(databaseError))

    /**
     * The free gateways one health pass asks (see GatewayHealth): the next `batch` a claim would
     * take (`gateways_claim_order`, the view the claim itself reads), every one whose quarantine has run out, and the next `batch` by id after
     * `after` (a rotation over the rest). `rotationEnd`: where the next rotation starts; none when
     * this one reached the end.
     */
    const healthCandidates = Effect.fn("GatewayStore.healthCandidates")(function*(batch: number, after: Option.Option<GatewayId>) {
      const from = Option.getOrNull(after)
      const rows = yield* sql`
        with on_deck as (select c.id from gateways_claim_order c limit ${batch}),
        due as (
          select g.id from gateways g where g.allocation_id is null and g.quarantined_until <= now()),
        rotation as (
          select g.id from gateways g
           where g.allocation_id is null and (${from}::uuid is null or g.id > ${from}::uuid)
           order by g.id limit ${batch})
        select ${sql.literal(gatewayColumns)},
               (select case when count(*) = ${batch} then max(r.id::text) end from rotation r) as "rotationEnd"
          from gateways
         where id in (select id from on_deck union select id from due union select id from rotation)
         order by created_at, id`
      const candidates = yield* decodeGateways(rows)
      const end = (yield* decodeRotationEnd(rows))[0]
      return { candidates, rotationEnd: Option.fromNullable(end?.rotationEnd) }
    }, Effect.mapError(databaseError))

    /** Free gateways whose release failed, with the allocation each has still to release. */
    const pendingReleases = Effect.fn("GatewayStore.pendingReleases")(function*() {
      return yield* decodePendingReleases(
        yield* sql`
          select g.id as "gatewayId", g.name, g.upstream, g.release_failures as "releaseFailures",
                 a.id as "allocationId", a.organization_id as "organizationId"
            from gateways g join allocations a on a.id = g.unreleased_allocation_id
           where g.unreleased_allocation_id is not null
           order by g.id`
      )
    }, Effect.mapError(databaseError))

    /**
     * The gateway released the allocation at last: back in rotation. Compare-and-set on the
     * allocation, so a retry that confirms an old release never clears a newer mark.
     */
    const releaseConfirmed = Effect.fn("GatewayStore.releaseConfirmed")(function*(gatewayId: GatewayId, allocationId: AllocationId) {
      const rows = yield* sql`
        update gateways set unreleased_allocation_id = null, release_failures = 0
         where id = ${gatewayId} and unreleased_allocation_id = ${allocationId}
        returning id`
      return rows.length > 0
    }, Effect.mapError(databaseError))

    /** A retried release failed again: counted (failures in a row), and said in `last_failure`. */
    const releaseRetryFailed = Effect.fn("GatewayStore.releaseRetryFailed")(function*(
      gatewayId: GatewayId,
      allocationId: AllocationId,
      reason: string
    ) {
      const rows = yield* sql`
        update gateways
           set release_failures = release_failures + 1, last_failure = ${`release: ${reason}`.slice(0, 500)}, last_failure_at = now()
         where id = ${gatewayId} and unreleased_allocation_id = ${allocationId}
        returning release_failures as value`
      return Option.map(Option.fromNullable((yield* decodeCount(rows))[0]), (row) => row.value)
    }, Effect.mapError(databaseError))

    return {
      stats,
      addGateway,
      setGatewayState,
      removeGateway,
      listGateways,
      quarantine,
      markHealthy,
      healthCandidates,
      pendingReleases,
      releaseConfirmed,
      releaseRetryFailed
    }
  })
}) {}
