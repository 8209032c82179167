import { SqlClient, SqlError } from "@effect/sql"
import { Data, Effect, Option, type ParseResult, Schema } from "effect"
import { tryLock, namedLock } from "../db/advisoryLock.ts"
import { PoolError, sqlState } from "../db/errors.ts"
import {
  Allocation,
  type AllocationState,
  Claim,
  type FinalState,
  LiveAllocation,
  LiveState,
  TransitionalState
} from "../domain/allocation.ts"
import { NoGatewayAvailable } from "../domain/errors.ts"
import { Gateway, type GatewayState, PendingRelease, QUARANTINE_CAP_MS } from "../domain/gateway.ts"
import { type AllocationId, GatewayId, type GatewayName, type OrganizationId, type Upstream } from "../domain/ids.ts"

export class GatewayNameTaken extends Data.TaggedError("GatewayNameTaken")<{ readonly name: string }> {}
/** The upstream is in the pool already (under another name): one gateway process, one org. */
export class GatewayUpstreamTaken extends Data.TaggedError("GatewayUpstreamTaken")<{ readonly upstream: string }> {}
export class GatewayNotFound extends Data.TaggedError("GatewayNotFound")<{ readonly gatewayId: GatewayId }> {}
export class GatewayAllocated extends Data.TaggedError("GatewayAllocated")<{ readonly gatewayId: GatewayId }> {}

export const PoolStats = Schema.Struct({
  total: Schema.Number,
  free: Schema.Number,
  allocated: Schema.Number,
  /** Free gateways that may be handed out now: not in quarantine, not draining, no release pending. */
  available: Schema.Number,
  quarantined: Schema.Number,
  draining: Schema.Number,
  /** Free gateways whose release failed: held back until a retry succeeds. */
  unreleased: Schema.Number
})
export type PoolStats = typeof PoolStats.Type

export interface AllocationFilter {
  readonly state?: AllocationState | undefined
  readonly organizationId?: OrganizationId | undefined
  readonly limit: number
}

const Quarantined = Schema.Struct({ consecutiveFailures: Schema.Number, quarantinedUntil: Schema.DateFromSelf })

// Rows are selected under the domain's field names and decoded with the domain's schemas.
const allocationColumns = `id as "allocationId", organization_id as "organizationId", gateway_id as "gatewayId",
  upstream, generation, state, runner, error, trace_id as "traceId", created_at as "createdAt", updated_at as "updatedAt", finished_at as "finishedAt"`
const gatewayColumns = `id as "gatewayId", name, upstream, allocation_id as "allocationId", state, health,
  quarantined_until as "quarantinedUntil", consecutive_failures as "consecutiveFailures", last_failure as "lastFailure",
  unreleased_allocation_id as "unreleasedAllocationId"`

const decodeAll = <A, I>(schema: Schema.Schema<A, I>) => Schema.decodeUnknown(Schema.Array(schema))
const decodeFirst = <A, I>(schema: Schema.Schema<A, I>) => (rows: ReadonlyArray<unknown>) =>
  rows.length === 0 ? Effect.succeed(Option.none<A>()) : Effect.map(Schema.decodeUnknown(schema)(rows[0]), Option.some)
const Flag = Schema.Struct({ value: Schema.Boolean })
/** Whether the live allocation's row names the runner, and whether Postgres sees that runner's lease held. */
const Ownership = Schema.Struct({ namesRunner: Schema.Boolean, leaseAlive: Schema.Boolean })
const RotationEnd = Schema.Struct({ rotationEnd: Schema.NullOr(GatewayId) })

/**
 * The gateway pool in Postgres: claiming and releasing gateways, allocation states, and the
 * pool's own administration. Claims go through `proc_organizations_start_gateway`
 * (`FOR UPDATE SKIP LOCKED`), releases through `proc_organizations_gateways_stop` (compare-and-set).
 */
export class GatewayPool extends Effect.Service<GatewayPool>()("GatewayPool", {
  effect: Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const poolError = (cause: SqlError.SqlError | ParseResult.ParseError) => new PoolError({ cause })
    const live = sql.in(LiveState.literals)

    const claim = Effect.fn("GatewayPool.claim")(function*(
      allocationId: AllocationId,
      organizationId: OrganizationId,
      runner: string
    ) {
      // This span is in the start's trace: the allocation records it, so the console can link to it.
      const traceId = yield* Effect.currentSpan.pipe(Effect.map((span) => span.traceId), Effect.orElseSucceed(() => null))
      const rows = yield* sql`
        select allocation_id as "allocationId", gateway_id as "gatewayId", upstream, generation, state, reused
          from proc_organizations_start_gateway(${allocationId}, ${organizationId}, ${runner}, ${traceId})`.pipe(
        Effect.mapError((error) => sqlState(error) === "GA001" ? new NoGatewayAvailable() : poolError(error))
      )
      return yield* Schema.decodeUnknown(Claim)(rows[0]).pipe(Effect.mapError(poolError))
    })

    /**
     * Returns the gateway to the pool, if `runner` still owns the allocation. False when there was
     * nothing (left) to release, or another runner owns it now. `releaseError`: the gateway's own
     * release failed (what went wrong), so it is freed but held back until a retry succeeds.
     */
    const release = Effect.fn("GatewayPool.release")(function*(
      allocationId: AllocationId,
      finalState: FinalState,
      runner: string,
      releaseError: Option.Option<string> = Option.none()
    ) {
      const rows = yield* sql`select proc_organizations_gateways_stop(${allocationId}, ${finalState}, ${runner}, ${
        Option.getOrNull(releaseError)
      }) as value`
      return (yield* decodeAll(Flag)(rows)).some((row) => row.value)
    }, Effect.mapError(poolError))

    /**
     * Moves a live allocation its runner owns between live states; false when it was not in
     * `from`, or another runner owns it.
     */
    const transition = Effect.fn("GatewayPool.transition")(function*(
      allocationId: AllocationId,
      runner: string,
      from: ReadonlyArray<LiveState>,
      to: LiveState,
      error?: unknown
    ) {
      const rows = yield* sql`
        update allocations
           set state = ${to}, updated_at = now(),
               error = coalesce(${error === undefined ? null : JSON.stringify(error)}::jsonb, error)
         where id = ${allocationId} and runner = ${runner} and state in ${sql.in(from)}
        returning id`
      return rows.length > 0
    }, Effect.mapError(poolError))

    /**
     * Whether the live allocation's row names `runner`, and whether its lease is held in Postgres
     * right now: the fence checked before every side effect (the runner's own view of its lease
     * may lag).
     */
    const owns = Effect.fn("GatewayPool.owns")(function*(allocationId: AllocationId, runner: string) {
      const rows = yield* sql`
        select exists (select 1 from allocations where id = ${allocationId} and runner = ${runner}
                          and state in ${live}) as "namesRunner",
               gateway_allocator_runner_alive(${runner}) as "leaseAlive"`
      return yield* Schema.decodeUnknown(Ownership)(rows[0])
    }, Effect.mapError(poolError))

    /**
     * A stop takes the allocation over (compare-and-set): an active one, or one left `stopping`
     * by this runner or by a dead one. None when another live runner is moving it.
     */
    const takeForStop = Effect.fn("GatewayPool.takeForStop")(function*(allocationId: AllocationId, runner: string) {
      const rows = yield* sql`
        update allocations
           set state = 'stopping', runner = ${runner}, updated_at = now()
         where id = ${allocationId}
           and (state = 'active'
                or (state = 'stopping' and (runner = ${runner} or not gateway_allocator_runner_alive(runner))))
        returning ${sql.literal(allocationColumns)}`
      return yield* decodeFirst(LiveAllocation)(rows)
    }, Effect.mapError(poolError))

    /** Runs `effect` in one transaction; the transaction's own failures (begin, commit) are PoolErrors. */
    const inTransaction = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, Exclude<E, SqlError.SqlError> | PoolError, R> =>
      sql.withTransaction(effect).pipe(
        Effect.catchIf(
          (error): error is SqlError.SqlError => error instanceof SqlError.SqlError,
          (error) => Effect.fail(poolError(error))
        )
      )

    /**
     * Runs `effect` while the allocation is active, holding its row (`for share`) so that nothing
     * can take it down meanwhile: a stop's takeover waits for `effect` to end. None when it is not
     * active (any more). For what acts on an allocation without owning it: drift repair.
     */
    const whileActive = <A, E, R>(
      allocationId: AllocationId,
      effect: Effect.Effect<A, E, R>
    ): Effect.Effect<Option.Option<A>, E | PoolError, R> =>
      inTransaction(
        Effect.gen(function*() {
          const rows = yield* sql`select id from allocations where id = ${allocationId} and state = 'active' for share`.pipe(
            Effect.mapError(poolError)
          )
          return rows.length === 0 ? Option.none<A>() : Option.some(yield* effect)
        })
      )

    /**
     * Runs `effect` with every active allocation, holding their rows (`FOR SHARE`) until it ends:
     * no stop can take one of them down meanwhile, so what `effect` restores is still live.
     */
    const withActiveAllocations = <A, E, R>(
      effect: (allocations: ReadonlyArray<LiveAllocation>) => Effect.Effect<A, E, R>
    ): Effect.Effect<A, E | PoolError, R> =>
      inTransaction(
        Effect.gen(function*() {
          const rows = yield* sql`select ${sql.literal(allocationColumns)} from allocations where state = 'active' for share`.pipe(
            Effect.flatMap(decodeAll(LiveAllocation)),
            Effect.mapError(poolError)
          )
          return yield* effect(rows)
        })
      )

    const findLive = Effect.fn("GatewayPool.findLive")(function*(organizationId: OrganizationId) {
      const rows = yield* sql`
        select ${sql.literal(allocationColumns)} from allocations
         where organization_id = ${organizationId} and state in ${live}`
      return yield* decodeFirst(LiveAllocation)(rows)
    }, Effect.mapError(poolError))

    const getAllocation = Effect.fn("GatewayPool.getAllocation")(function*(allocationId: AllocationId) {
      const rows = yield* sql`select ${sql.literal(allocationColumns)} from allocations where id = ${allocationId}`
      return yield* decodeFirst(Allocation)(rows)
    }, Effect.mapError(poolError))

    const stats = Effect.fn("GatewayPool.stats")(function*() {
      const rows = yield* sql`
        select count(*)::int as total,
               (count(*) filter (where allocation_id is null))::int as free,
               (count(*) filter (where allocation_id is not null))::int as allocated,
               (count(*) filter (where allocation_id is null and state = 'active' and unreleased_allocation_id is null
                                   and (quarantined_until is null or quarantined_until <= now())))::int as available,
               (count(*) filter (where quarantined_until > now()))::int as quarantined,
               (count(*) filter (where state = 'draining'))::int as draining,
               (count(*) filter (where unreleased_allocation_id is not null))::int as unreleased
          from gateways`
      return yield* Schema.decodeUnknown(PoolStats)(rows[0])
    }, Effect.mapError(poolError))

    const addGateway = Effect.fn("GatewayPool.addGateway")(function*(name: GatewayName, upstream: Upstream) {
      const rows = yield* sql`
        insert into gateways (name, upstream) values (${name}, ${upstream})
        on conflict do nothing
        returning ${sql.literal(gatewayColumns)}`.pipe(Effect.mapError(poolError))
      const added = yield* decodeFirst(Gateway)(rows).pipe(Effect.mapError(poolError))
      if (Option.isSome(added)) return added.value
      const named = yield* sql`select 1 from gateways where name = ${name}`.pipe(Effect.mapError(poolError))
      return yield* named.length > 0 ? new GatewayNameTaken({ name }) : new GatewayUpstreamTaken({ upstream })
    })

    /**
     * Sets the gateway aside: not handed out for `baseMs`, doubled for each failure in a row
     * before this one, capped at QUARANTINE_CAP_MS. Returns the failures in a row and the end.
     */
    const quarantine = Effect.fn("GatewayPool.quarantine")(function*(gatewayId: GatewayId, reason: string, baseMs: number) {
      const rows = yield* sql`
        update gateways
           set quarantined_until = now() + make_interval(secs => least(${baseMs} * power(2, consecutive_failures), ${QUARANTINE_CAP_MS}) / 1000.0),
               consecutive_failures = consecutive_failures + 1,
               health = 'unhealthy', last_failure = ${reason.slice(0, 500)}, last_failure_at = now()
         where id = ${gatewayId}
        returning consecutive_failures as "consecutiveFailures", quarantined_until as "quarantinedUntil"`
      return yield* decodeFirst(Quarantined)(rows)
    }, Effect.mapError(poolError))

    /**
     * The gateway answered: out of quarantine, healthy. After a successful start (`served`) its
     * backoff starts over too; a health check alone does not reset it.
     */
    const markHealthy = Effect.fn("GatewayPool.markHealthy")(function*(gatewayId: GatewayId, served: boolean) {
      yield* sql`
        update gateways
           set health = 'healthy', quarantined_until = null,
               consecutive_failures = case when ${served} then 0 else consecutive_failures end
         where id = ${gatewayId}
           and (health <> 'healthy' or quarantined_until is not null or (${served} and consecutive_failures > 0))`
    }, Effect.mapError(poolError))

    /** Drains a gateway (not handed out again; it keeps its org) or makes it active again. */
    const setGatewayState = Effect.fn("GatewayPool.setGatewayState")(function*(gatewayId: GatewayId, state: GatewayState) {
      const rows = yield* sql`
        update gateways set state = ${state} where id = ${gatewayId}
        returning ${sql.literal(gatewayColumns)}`.pipe(Effect.mapError(poolError))
      const updated = yield* decodeFirst(Gateway)(rows).pipe(Effect.mapError(poolError))
      if (Option.isNone(updated)) return yield* new GatewayNotFound({ gatewayId })
      return updated.value
    })

    /** Removes a free gateway. An allocated one stays (409): stop its org first. */
    const removeGateway = Effect.fn("GatewayPool.removeGateway")(function*(gatewayId: GatewayId) {
      const rows = yield* sql`
        with target as (select id, allocation_id from gateways where id = ${gatewayId} for update),
             deleted as (
               delete from gateways g using target t
                where g.id = t.id and t.allocation_id is null
               returning g.id)
        select case
                 when exists (select 1 from deleted) then 'deleted'
                 when exists (select 1 from target) then 'allocated'
                 else 'missing'
               end as outcome`.pipe(Effect.mapError(poolError))
      const [result] = yield* decodeAll(Schema.Struct({ outcome: Schema.Literal("deleted", "allocated", "missing") }))(
        rows
      ).pipe(Effect.mapError(poolError))
      if (result?.outcome === "missing") return yield* new GatewayNotFound({ gatewayId })
      if (result?.outcome === "allocated") return yield* new GatewayAllocated({ gatewayId })
    })

    const listGateways = Effect.fn("GatewayPool.listGateways")(function*() {
      const rows = yield* sql`select ${sql.literal(gatewayColumns)} from gateways order by created_at, id`
      return yield* decodeAll(Gateway)(rows)
    }, Effect.mapError(poolError))

    /**
     * The free gateways one health pass asks (see GatewayHealth): the next `batch` a claim would
     * take (its order), every one whose quarantine has run out, and the next `batch` by id after
     * `after` (a rotation over the rest). `rotationEnd`: where the next rotation starts; none when
     * this one reached the end.
     */
    const healthCandidates = Effect.fn("GatewayPool.healthCandidates")(function*(batch: number, after: Option.Option<GatewayId>) {
      const from = Option.getOrNull(after)
      const rows = yield* sql`
        with on_deck as (
          select g.id from gateways g
           where g.allocation_id is null and g.state = 'active' and g.unreleased_allocation_id is null
             and (g.quarantined_until is null or g.quarantined_until <= now())
           order by g.last_allocated_at nulls first, g.created_at, g.id
           limit ${batch}),
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
      const candidates = yield* decodeAll(Gateway)(rows)
      const end = yield* decodeFirst(RotationEnd)(rows)
      return { candidates, rotationEnd: Option.flatMap(end, (row) => Option.fromNullable(row.rotationEnd)) }
    }, Effect.mapError(poolError))

    /** Whether Postgres answers (readiness). */
    const ping = Effect.fn("GatewayPool.ping")(function*() {
      yield* sql`select 1`
    }, Effect.mapError(poolError))

    /** Free gateways whose release failed, with the allocation each has still to release. */
    const pendingReleases = Effect.fn("GatewayPool.pendingReleases")(function*() {
      const rows = yield* sql`
        select g.id as "gatewayId", g.name, g.upstream, g.release_failures as "releaseFailures",
               a.id as "allocationId", a.organization_id as "organizationId"
          from gateways g join allocations a on a.id = g.unreleased_allocation_id
         where g.unreleased_allocation_id is not null
         order by g.id`
      return yield* decodeAll(PendingRelease)(rows)
    }, Effect.mapError(poolError))

    /**
     * The gateway released the allocation at last: back in rotation. Compare-and-set on the
     * allocation, so a retry that confirms an old release never clears a newer mark.
     */
    const releaseConfirmed = Effect.fn("GatewayPool.releaseConfirmed")(function*(gatewayId: GatewayId, allocationId: AllocationId) {
      const rows = yield* sql`
        update gateways set unreleased_allocation_id = null, release_failures = 0
         where id = ${gatewayId} and unreleased_allocation_id = ${allocationId}
        returning id`
      return rows.length > 0
    }, Effect.mapError(poolError))

    /** A retried release failed again: counted (failures in a row), and said in `last_failure`. */
    const releaseRetryFailed = Effect.fn("GatewayPool.releaseRetryFailed")(function*(
      gatewayId: GatewayId,
      allocationId: AllocationId,
      reason: string
    ) {
      const rows = yield* sql`
        update gateways
           set release_failures = release_failures + 1, last_failure = ${`release: ${reason}`.slice(0, 500)}, last_failure_at = now()
         where id = ${gatewayId} and unreleased_allocation_id = ${allocationId}
        returning release_failures as value`
      return Option.map(yield* decodeFirst(Schema.Struct({ value: Schema.Number }))(rows), (row) => row.value)
    }, Effect.mapError(poolError))

    /**
     * Allocations left mid-pipeline: in a transitional state and run by a dead runner (its
     * advisory lock is gone), by this runner (the caller skips those it is still working on), or
     * untouched past the deadline, whoever runs them.
     */
    const recoverable = Effect.fn("GatewayPool.recoverable")(function*(runner: string, deadlineMs: number) {
      const rows = yield* sql`
        select ${sql.literal(allocationColumns)} from allocations a
         where a.state in ${sql.in(TransitionalState.literals)}
           and (a.runner = ${runner}
                or not gateway_allocator_runner_alive(a.runner)
                or a.updated_at < now() - make_interval(secs => ${deadlineMs / 1000}))
         order by a.updated_at`
      return yield* decodeAll(LiveAllocation)(rows)
    }, Effect.mapError(poolError))

    /**
     * Takes over an allocation from its previous runner (compare-and-set on the runner), so one
     * recovery works on it at a time. A start becomes `rolling_back`; a stop stays `stopping`.
     */
    const adopt = Effect.fn("GatewayPool.adopt")(function*(allocation: LiveAllocation, runner: string) {
      const rows = yield* sql`
        update allocations
           set runner = ${runner}, updated_at = now(),
               state = case when state = 'starting' then 'rolling_back' else state end
         where id = ${allocation.allocationId} and runner = ${allocation.runner}
           and state in ${sql.in(TransitionalState.literals)}
        returning ${sql.literal(allocationColumns)}`
      return yield* decodeFirst(LiveAllocation)(rows)
    }, Effect.mapError(poolError))

    /** Allocations, newest first, of one state and one org when given (the console, `GET /allocations`). */
    const listAllocations = Effect.fn("GatewayPool.listAllocations")(function*(filter: AllocationFilter) {
      const rows = yield* sql`
        select ${sql.literal(allocationColumns)} from allocations
         where ${sql.and([
        ...(filter.state === undefined ? [] : [sql`state = ${filter.state}`]),
        ...(filter.organizationId === undefined ? [] : [sql`organization_id = ${filter.organizationId}`])
      ])}
         order by created_at desc, id desc
         limit ${filter.limit}`
      return yield* decodeAll(Allocation)(rows)
    }, Effect.mapError(poolError))

    /** Every allocation that holds its org and gateway. */
    const liveAllocations = Effect.fn("GatewayPool.liveAllocations")(function*() {
      const rows = yield* sql`select ${sql.literal(allocationColumns)} from allocations where state in ${live}`
      return yield* decodeAll(LiveAllocation)(rows)
    }, Effect.mapError(poolError))

    /** Runs `effect` only if no other process runs the same named job (none otherwise). */
    const exclusively = <A, E, R>(job: string, effect: Effect.Effect<A, E, R>) =>
      Effect.scoped(
        Effect.gen(function*() {
          const locked = yield* tryLock(namedLock(`job:${job}`)).pipe(
            Effect.mapError(poolError),
            Effect.provideService(SqlClient.SqlClient, sql)
          )
          return locked ? Option.some(yield* effect) : Option.none<A>()
        })
      )

    return {
      claim,
      release,
      transition,
      findLive,
      getAllocation,
      listAllocations,
      stats,
      addGateway,
      removeGateway,
      listGateways,
      healthCandidates,
      pendingReleases,
      ping,
      releaseConfirmed,
      releaseRetryFailed,
      quarantine,
      markHealthy,
      setGatewayState,
      recoverable,
      adopt,
      owns,
      takeForStop,
      whileActive,
      withActiveAllocations,
      liveAllocations,
      exclusively,
      /**
       * Runs `effect` while the org has no live allocation and none can be claimed: the org's
       * slot in `allocations_one_live_per_org` is taken by a row inserted and never committed (a
       * claim's insert waits for this transaction, which always rolls back, so nobody ever sees
       * the row). None when the org has a live allocation. For what must not race a claim without
       * owning anything: drift repair deleting an orphan DNS record (a start that claimed between
       * a check and the delete would lose its record).
       */
      whileUnclaimed: <A, E, R>(
        organizationId: OrganizationId,
        effect: Effect.Effect<A, E, R>
      ): Effect.Effect<Option.Option<A>, E | PoolError, R> => {
        /** Ends the transaction with its rollback, carrying the result out. */
        class SlotReleased extends Data.TaggedError("SlotReleased")<{ readonly result: Option.Option<A> }> {}
        return inTransaction(
          Effect.gen(function*() {
            const held = yield* sql`
              insert into allocations (id, organization_id, upstream, generation, state, runner)
              values (gen_random_uuid(), ${organizationId}, '', 0, 'stopping', 'drift-repair')`.pipe(
              Effect.as(true),
              // unique_violation: a live allocation holds the org (one committed meanwhile waited for).
              Effect.catchIf((error) => sqlState(error) === "23505", () => Effect.succeed(false)),
              Effect.mapError(poolError)
            )
            return yield* new SlotReleased({ result: held ? Option.some(yield* effect) : Option.none() })
          })
        ).pipe(Effect.catchIf((error): error is SlotReleased => error instanceof SlotReleased, (released) => Effect.succeed(released.result)))
      }
    }
  })
}) {}
