import { SqlClient, type SqlError } from "@effect/sql"
import { Data, Effect, Option, Predicate } from "effect"
import { NoGatewayAvailable } from "../domain/errors.ts"
import type { AllocationId, GatewayId, GatewayName, OrganizationId, Upstream } from "../domain/ids.ts"

/** Postgres did not answer or refused the statement. */
export class PoolError extends Data.TaggedError("PoolError")<{ readonly cause: SqlError.SqlError }> {
  override get message() {
    return `database: ${this.cause.message}${causeDetail(this.cause.cause)}`
  }
}

export class GatewayNameTaken extends Data.TaggedError("GatewayNameTaken")<{ readonly name: string }> {}
export class GatewayNotFound extends Data.TaggedError("GatewayNotFound")<{ readonly gatewayId: GatewayId }> {}
export class GatewayAllocated extends Data.TaggedError("GatewayAllocated")<{ readonly gatewayId: GatewayId }> {}

export type LiveState = "starting" | "active" | "stopping" | "rolling_back"
export type AllocationState = LiveState | "released" | "rolled_back"

export interface Claim {
  readonly allocationId: AllocationId
  readonly gatewayId: GatewayId
  readonly upstream: Upstream
  readonly state: AllocationState
  /** The org already had a live allocation: nothing was claimed. */
  readonly reused: boolean
}

export interface Allocation {
  readonly allocationId: AllocationId
  readonly organizationId: OrganizationId
  /** Null only in history, once the gateway was removed from the pool. */
  readonly gatewayId: GatewayId | null
  readonly upstream: Upstream
  readonly state: AllocationState
  readonly runner: string
  readonly error: unknown
  readonly createdAt: Date
  readonly updatedAt: Date
  readonly finishedAt: Date | null
}

export interface Gateway {
  readonly gatewayId: GatewayId
  readonly name: GatewayName
  readonly upstream: Upstream
  readonly allocationId: AllocationId | null
}

export interface PoolStats {
  readonly total: number
  readonly free: number
  readonly allocated: number
}

const causeDetail = (cause: unknown) =>
  Predicate.hasProperty(cause, "message") && typeof cause.message === "string" ? ` (${cause.message})` : ""

const sqlState = (error: SqlError.SqlError): string | undefined =>
  Predicate.hasProperty(error.cause, "code") && typeof error.cause.code === "string" ? error.cause.code : undefined

interface AllocationRow {
  readonly id: string
  readonly organization_id: string
  readonly gateway_id: string | null
  readonly upstream: string
  readonly state: AllocationState
  readonly runner: string
  readonly error: unknown
  readonly created_at: Date
  readonly updated_at: Date
  readonly finished_at: Date | null
}

const toAllocation = (row: AllocationRow): Allocation => ({
  allocationId: row.id as AllocationId,
  organizationId: row.organization_id as OrganizationId,
  gatewayId: row.gateway_id as GatewayId | null,
  upstream: row.upstream as Upstream,
  state: row.state,
  runner: row.runner,
  error: row.error,
  createdAt: row.created_at,
  updatedAt: row.updated_at,
  finishedAt: row.finished_at
})

/**
 * The gateway pool in Postgres: claiming and releasing gateways, allocation states, and the
 * pool's own administration. Claims go through `proc_organizations_start_gateway`
 * (`FOR UPDATE SKIP LOCKED`), releases through `proc_organizations_gateways_stop` (compare-and-set).
 */
export class GatewayPool extends Effect.Service<GatewayPool>()("GatewayPool", {
  effect: Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const poolError = (cause: SqlError.SqlError) => new PoolError({ cause })

    const claim = Effect.fn("GatewayPool.claim")(function*(
      allocationId: AllocationId,
      organizationId: OrganizationId,
      runner: string
    ) {
      const rows = yield* sql<{
        allocation_id: string
        gateway_id: string
        upstream: string
        state: AllocationState
        reused: boolean
      }>`select * from proc_organizations_start_gateway(${allocationId}, ${organizationId}, ${runner})`.pipe(
        Effect.mapError((error): NoGatewayAvailable | PoolError =>
          sqlState(error) === "GA001" ? new NoGatewayAvailable() : poolError(error)
        )
      )
      const row = rows[0]!
      return {
        allocationId: row.allocation_id as AllocationId,
        gatewayId: row.gateway_id as GatewayId,
        upstream: row.upstream as Upstream,
        state: row.state,
        reused: row.reused
      } satisfies Claim
    })

    /** Returns the gateway to the pool. False when there was nothing (left) to release. */
    const release = Effect.fn("GatewayPool.release")(function*(
      allocationId: AllocationId,
      finalState: "released" | "rolled_back"
    ) {
      const rows = yield* sql<{ released: boolean }>`
        select proc_organizations_gateways_stop(${allocationId}, ${finalState}) as released`.pipe(
        Effect.mapError(poolError)
      )
      return rows[0]?.released === true
    })

    /** Moves a live allocation between live states; false when it was not in `from`. */
    const transition = Effect.fn("GatewayPool.transition")(function*(
      allocationId: AllocationId,
      from: ReadonlyArray<LiveState>,
      to: LiveState,
      error?: unknown
    ) {
      const rows = yield* sql<{ id: string }>`
        update allocations
           set state = ${to}, updated_at = now(),
               error = coalesce(${error === undefined ? null : JSON.stringify(error)}::jsonb, error)
         where id = ${allocationId} and state in ${sql.in(from)}
        returning id`.pipe(Effect.mapError(poolError))
      return rows.length > 0
    })

    const findLive = Effect.fn("GatewayPool.findLive")(function*(organizationId: OrganizationId) {
      const rows = yield* sql<AllocationRow>`
        select * from allocations
         where organization_id = ${organizationId}
           and state in ('starting', 'active', 'stopping', 'rolling_back')`.pipe(Effect.mapError(poolError))
      return Option.map(Option.fromNullable(rows[0]), toAllocation)
    })

    const getAllocation = Effect.fn("GatewayPool.getAllocation")(function*(allocationId: AllocationId) {
      const rows = yield* sql<AllocationRow>`select * from allocations where id = ${allocationId}`.pipe(
        Effect.mapError(poolError)
      )
      return Option.map(Option.fromNullable(rows[0]), toAllocation)
    })

    const stats = Effect.fn("GatewayPool.stats")(function*() {
      const rows = yield* sql<{ total: number; free: number }>`
        select count(*)::int as total, (count(*) filter (where allocation_id is null))::int as free
          from gateways`.pipe(Effect.mapError(poolError))
      const { free, total } = rows[0]!
      return { total, free, allocated: total - free } satisfies PoolStats
    })

    const addGateway = Effect.fn("GatewayPool.addGateway")(function*(name: GatewayName, upstream: Upstream) {
      const rows = yield* sql<{ id: string }>`
        insert into gateways (name, upstream) values (${name}, ${upstream})
        on conflict (name) do nothing
        returning id`.pipe(Effect.mapError(poolError))
      if (rows.length === 0) return yield* new GatewayNameTaken({ name })
      return { gatewayId: rows[0]!.id as GatewayId, name, upstream, allocationId: null } satisfies Gateway
    })

    /** Removes a free gateway. An allocated one stays (409): stop its org first. */
    const removeGateway = Effect.fn("GatewayPool.removeGateway")(function*(gatewayId: GatewayId) {
      const rows = yield* sql<{ outcome: "deleted" | "allocated" | "missing" }>`
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
      const outcome = rows[0]!.outcome
      if (outcome === "missing") return yield* new GatewayNotFound({ gatewayId })
      if (outcome === "allocated") return yield* new GatewayAllocated({ gatewayId })
    })

    const listGateways = Effect.fn("GatewayPool.listGateways")(function*() {
      const rows = yield* sql<{ id: string; name: string; upstream: string; allocation_id: string | null }>`
        select id, name, upstream, allocation_id from gateways order by created_at, id`.pipe(
        Effect.mapError(poolError)
      )
      return rows.map((row): Gateway => ({
        gatewayId: row.id as GatewayId,
        name: row.name as GatewayName,
        upstream: row.upstream as Upstream,
        allocationId: row.allocation_id as AllocationId | null
      }))
    })

    /**
     * Allocations left mid-pipeline: in a transitional state and run by a dead runner (its
     * advisory lock is gone), by this runner (the caller skips those it is still working on), or
     * untouched past the deadline, whoever runs them.
     */
    const recoverable = Effect.fn("GatewayPool.recoverable")(function*(runner: string, deadlineMs: number) {
      const rows = yield* sql<AllocationRow>`
        select * from allocations a
         where a.state in ('starting', 'stopping', 'rolling_back')
           and (a.runner = ${runner}
                or not gateway_allocator_runner_alive(a.runner)
                or a.updated_at < now() - make_interval(secs => ${deadlineMs / 1000}))
         order by a.updated_at`.pipe(Effect.mapError(poolError))
      return rows.map(toAllocation)
    })

    /**
     * Takes over an allocation from its previous runner (compare-and-set on the runner), so one
     * recovery works on it at a time. A start becomes `rolling_back`; a stop stays `stopping`.
     */
    const adopt = Effect.fn("GatewayPool.adopt")(function*(allocation: Allocation, runner: string) {
      const rows = yield* sql<AllocationRow>`
        update allocations
           set runner = ${runner}, updated_at = now(),
               state = case when state = 'starting' then 'rolling_back' else state end
         where id = ${allocation.allocationId} and runner = ${allocation.runner}
           and state in ('starting', 'stopping', 'rolling_back')
        returning *`.pipe(Effect.mapError(poolError))
      return Option.map(Option.fromNullable(rows[0]), toAllocation)
    })

    /** Every allocation that holds its org and gateway. */
    const liveAllocations = Effect.fn("GatewayPool.liveAllocations")(function*() {
      const rows = yield* sql<AllocationRow>`
        select * from allocations where state in ('starting', 'active', 'stopping', 'rolling_back')`.pipe(
        Effect.mapError(poolError)
      )
      return rows.map(toAllocation)
    })

    /**
     * Runs `effect` only if no other process runs the same named job (a session advisory lock on
     * a reserved connection, released before the connection goes back to the pool).
     */
    const exclusively = <A, E, R>(job: string, effect: Effect.Effect<A, E, R>) =>
      Effect.scoped(
        Effect.gen(function*() {
          const key = `gateway-allocator:job:${job}`
          const connection = yield* sql.reserve.pipe(Effect.mapError(poolError))
          const [row] = yield* connection.execute(
            "select pg_try_advisory_lock(hashtextextended($1, 0)) as locked",
            [key],
            undefined
          ).pipe(Effect.mapError(poolError))
          if (row?.locked !== true) return Option.none<A>()
          return yield* effect.pipe(
            Effect.map(Option.some),
            Effect.ensuring(
              connection.execute("select pg_advisory_unlock(hashtextextended($1, 0))", [key], undefined).pipe(
                Effect.ignore
              )
            )
          )
        })
      )

    return {
      claim,
      release,
      transition,
      findLive,
      getAllocation,
      stats,
      addGateway,
      removeGateway,
      listGateways,
      recoverable,
      adopt,
      liveAllocations,
      exclusively
    }
  })
}) {}
