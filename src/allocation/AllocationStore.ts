import { SqlClient, type SqlConnection, SqlError, type Statement } from "@effect/sql"
import { Data, Effect, Option, type ParseResult, Schema } from "effect"
import { DatabaseError, sqlState } from "../db/errors.ts"
import {
  Allocation,
  type AllocationState,
  Claim,
  type FinalState,
  LiveAllocation,
  LiveState
} from "../domain/allocation.ts"
import { NoGatewayAvailable } from "../domain/errors.ts"
import type { AllocationId, GatewayId, OrganizationId } from "../domain/ids.ts"
import { journalInsert, type JournalRecord } from "../journal/Journal.ts"
import { markHealthyUpdate } from "../pool/GatewayStore.ts"

export interface AllocationFilter {
  readonly state?: AllocationState | undefined
  readonly organizationId?: OrganizationId | undefined
  readonly limit: number
}

// Rows are selected under the domain's field names and decoded with the domain's schemas. Which
// states are live is said once, in Postgres (`gateway_allocator_is_live`, the same list as
// LiveState: a test checks they agree); a transitional state is a live one other than `active`.
const allocationColumns = `id as "allocationId", organization_id as "organizationId", gateway_id as "gatewayId",
  upstream, generation, state, runner, error, trace_id as "traceId", created_at as "createdAt", updated_at as "updatedAt", finished_at as "finishedAt"`

const decodeAll = <A, I>(schema: Schema.Schema<A, I>) => Schema.decodeUnknown(Schema.Array(schema))
const decodeFirst = <A, I>(schema: Schema.Schema<A, I>) => {
  const decode = Schema.decodeUnknown(schema)
  return (rows: ReadonlyArray<unknown>) => rows.length === 0 ? Effect.succeed(Option.none<A>()) : Effect.map(decode(rows[0]), Option.some)
}
const Flag = Schema.Struct({ value: Schema.Boolean })
/** A stop's takeover row: the org's live allocation's state, and its columns when the stop took it (null otherwise). */
const Takeover = Schema.Struct({ liveState: LiveState, allocationId: Schema.NullOr(Schema.String) })
/** Whether the live allocation's row names the runner, and whether Postgres sees that runner's lease held. */
const Ownership = Schema.Struct({ namesRunner: Schema.Boolean, leaseAlive: Schema.Boolean })

type Row = SqlConnection.Row
const databaseError = (cause: SqlError.SqlError | ParseResult.ParseError) => new DatabaseError({ cause })

/**
 * The allocations in Postgres: claiming a gateway (`proc_organizations_start_gateway`, `FOR UPDATE
 * SKIP LOCKED`) and giving it back (`proc_organizations_gateways_stop`, compare-and-set), the
 * states an allocation moves through and who owns it (the fence every step and undo checks), the
 * takeovers (a stop, a recovery), the holds that let drift repair act without owning, and reads.
 */
export class AllocationStore extends Effect.Service<AllocationStore>()("AllocationStore", {
  effect: Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient

    /**
     * `statement`, with journal rows inserted and `alongside` writes made by the same statement
     * (data-modifying CTEs: made whatever the statement finds), one round trip. Should it fail,
     * the rows are lost with a warning, as a failed journal write is (the journal never fails
     * the work; the statement's failure does).
     */
    const withWritesAlongside = (
      journal: ReadonlyArray<JournalRecord>,
      statement: Statement.Statement<Row>,
      alongside: ReadonlyArray<Statement.Fragment> = []
    ) => {
      const writes = journal.length === 0 ? alongside : [journalInsert(sql, journal), ...alongside]
      if (writes.length === 0) return statement
      const ctes = sql.join(",\n", false)(writes.map((write, i) => sql`${sql.literal(`alongside_${i}`)} as (${write})`))
      return sql<Row>`with ${ctes}\n${statement}`.pipe(
        Effect.tapError((error) => journal.length === 0 ? Effect.void : Effect.logWarning("journal write failed", error))
      )
    }

    const claim = Effect.fn("AllocationStore.claim")(function*(
      allocationId: AllocationId,
      organizationId: OrganizationId,
      runner: string
    ) {
      // This span is in the start's trace: the allocation records it, so the console can link to it.
      const traceId = yield* Effect.currentSpan.pipe(Effect.map((span) => span.traceId), Effect.orElseSucceed(() => null))
      const rows = yield* sql`
        select allocation_id as "allocationId", gateway_id as "gatewayId", upstream, generation, state, reused
          from proc_organizations_start_gateway(${allocationId}, ${organizationId}, ${runner}, ${traceId})`.pipe(
        Effect.mapError((error) => sqlState(error) === "GA001" ? new NoGatewayAvailable() : databaseError(error))
      )
      return yield* Schema.decodeUnknown(Claim)(rows[0]).pipe(Effect.mapError(databaseError))
    })

    /**
     * Returns the gateway to the pool, if `runner` still owns the allocation. False when there was
     * nothing (left) to release, or another runner owns it now. `releaseError`: the gateway's own
     * release failed (what went wrong), so it is freed but held back until a retry succeeds.
     */
    const release = Effect.fn("AllocationStore.release")(function*(
      allocationId: AllocationId,
      finalState: FinalState,
      runner: string,
      releaseError: Option.Option<string> = Option.none()
    ) {
      const rows = yield* sql`select proc_organizations_gateways_stop(${allocationId}, ${finalState}, ${runner}, ${
        Option.getOrNull(releaseError)
      }) as value`
      return (yield* decodeAll(Flag)(rows)).some((row) => row.value)
    }, Effect.mapError(databaseError))

    /**
     * Moves a live allocation its runner owns between live states; false when it was not in
     * `from`, or another runner owns it.
     */
    const transition = Effect.fn("AllocationStore.transition")(function*(
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
    }, Effect.mapError(databaseError))

    /**
     * A start's commit point: its allocation, still `starting` and this runner's, becomes
     * `active` (false when it was not); with it, in one statement, the last step's journal rows
     * and the gateway marked healthy (it served a start: its backoff starts over), both made
     * whatever the allocation's row says. One statement, one outcome: should the gateway's update
     * fail (a lock it waited on timed out, say), the activation fails with it and the start rolls
     * back, where the health mark alone used to be logged and let go.
     */
    const activate = Effect.fn("AllocationStore.activate")(function*(
      allocationId: AllocationId,
      runner: string,
      gatewayId: GatewayId,
      journal: ReadonlyArray<JournalRecord>
    ) {
      const update = sql`
        update allocations set state = 'active', updated_at = now()
         where id = ${allocationId} and runner = ${runner} and state = 'starting'
        returning id`
      const rows = yield* withWritesAlongside(journal, update, [markHealthyUpdate(sql, gatewayId, true)])
      return rows.length > 0
    }, Effect.mapError(databaseError))

    /**
     * Whether the live allocation's row names `runner`, and whether its lease is held in Postgres
     * right now: the fence checked before every side effect (the runner's own view of its lease
     * may lag). `journal`: rows written by the same statement (a step's opening row rides with
     * its fence, one round trip), whatever the fence says.
     */
    const owns = Effect.fn("AllocationStore.owns")(function*(
      allocationId: AllocationId,
      runner: string,
      journal: ReadonlyArray<JournalRecord> = []
    ) {
      const fence = sql`
        select exists (select 1 from allocations where id = ${allocationId} and runner = ${runner}
                          and gateway_allocator_is_live(state)) as "namesRunner",
               gateway_allocator_runner_alive(${runner}) as "leaseAlive"`
      const rows = yield* withWritesAlongside(journal, fence)
      return yield* Schema.decodeUnknown(Ownership)(rows[0])
    }, Effect.mapError(databaseError))

    /**
     * A stop takes the org's live allocation over (compare-and-set), in one statement: an active
     * one, or one left `stopping` by this runner or by a dead one. None: the org has no live
     * allocation; `taken` none: it has one (in `state`) that another live runner is moving.
     */
    const takeForStop = Effect.fn("AllocationStore.takeForStop")(function*(organizationId: OrganizationId, runner: string) {
      const rows = yield* sql`
        with live as (
          select id as live_id, state as live_state from allocations
           where organization_id = ${organizationId} and gateway_allocator_is_live(state)
        ), taken as (
          update allocations
             set state = 'stopping', runner = ${runner}, updated_at = now()
            from live
           where id = live_id
             and (state = 'active'
                  or (state = 'stopping' and (runner = ${runner} or not gateway_allocator_runner_alive(runner))))
          returning ${sql.literal(allocationColumns)}
        )
        select live_state as "liveState", taken.* from live left join taken on true`
      const [row] = rows
      if (row === undefined) return Option.none()
      const { liveState, allocationId } = yield* Schema.decodeUnknown(Takeover)(row)
      const taken = allocationId === null ? Option.none() : Option.some(yield* Schema.decodeUnknown(LiveAllocation)(row))
      return Option.some({ state: liveState, taken })
    }, Effect.mapError(databaseError))

    /** Runs `effect` in one transaction; the transaction's own failures (begin, commit) are DatabaseErrors. */
    const inTransaction = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, Exclude<E, SqlError.SqlError> | DatabaseError, R> =>
      sql.withTransaction(effect).pipe(
        Effect.catchIf(
          (error): error is SqlError.SqlError => error instanceof SqlError.SqlError,
          (error) => Effect.fail(databaseError(error))
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
    ): Effect.Effect<Option.Option<A>, E | DatabaseError, R> =>
      inTransaction(
        Effect.gen(function*() {
          const rows = yield* sql`select id from allocations where id = ${allocationId} and state = 'active' for share`.pipe(
            Effect.mapError(databaseError)
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
    ): Effect.Effect<A, E | DatabaseError, R> =>
      inTransaction(
        Effect.gen(function*() {
          const rows = yield* sql`select ${sql.literal(allocationColumns)} from allocations where state = 'active' for share`.pipe(
            Effect.flatMap(decodeAll(LiveAllocation)),
            Effect.mapError(databaseError)
          )
          return yield* effect(rows)
        })
      )

    const findLive = Effect.fn("AllocationStore.findLive")(function*(organizationId: OrganizationId) {
      const rows = yield* sql`
        select ${sql.literal(allocationColumns)} from allocations
         where organization_id = ${organizationId} and gateway_allocator_is_live(state)`
      return yield* decodeFirst(LiveAllocation)(rows)
    }, Effect.mapError(databaseError))

    const getAllocation = Effect.fn("AllocationStore.getAllocation")(function*(allocationId: AllocationId) {
      const rows = yield* sql`select ${sql.literal(allocationColumns)} from allocations where id = ${allocationId}`
      return yield* decodeFirst(Allocation)(rows)
    }, Effect.mapError(databaseError))

    /**
     * Allocations left mid-pipeline: in a transitional state and run by a dead runner (its
     * advisory lock is gone), by this runner (the caller skips those it is still working on), or
     * untouched past the deadline, whoever runs them.
     */
    const recoverable = Effect.fn("AllocationStore.recoverable")(function*(runner: string, deadlineMs: number) {
      const rows = yield* sql`
        select ${sql.literal(allocationColumns)} from allocations a
         where gateway_allocator_is_live(a.state) and a.state <> 'active'
           and (a.runner = ${runner}
                or not gateway_allocator_runner_alive(a.runner)
                or a.updated_at < now() - make_interval(secs => ${deadlineMs / 1000}))
         order by a.updated_at`
      return yield* decodeAll(LiveAllocation)(rows)
    }, Effect.mapError(databaseError))

    /**
     * Takes over an allocation from its previous runner (compare-and-set on the runner), so one
     * recovery works on it at a time. A start becomes `rolling_back`; a stop stays `stopping`.
     */
    const adopt = Effect.fn("AllocationStore.adopt")(function*(allocation: LiveAllocation, runner: string) {
      const rows = yield* sql`
        update allocations
           set runner = ${runner}, updated_at = now(),
               state = case when state = 'starting' then 'rolling_back' else state end
         where id = ${allocation.allocationId} and runner = ${allocation.runner}
           and gateway_allocator_is_live(state) and state <> 'active'
        returning ${sql.literal(allocationColumns)}`
      return yield* decodeFirst(LiveAllocation)(rows)
    }, Effect.mapError(databaseError))

    /** Allocations, newest first, of one state and one org when given (the console, `GET /allocations`). */
    const listAllocations = Effect.fn("AllocationStore.listAllocations")(function*(filter: AllocationFilter) {
      const rows = yield* sql`
        select ${sql.literal(allocationColumns)} from allocations
         where ${sql.and([
        ...(filter.state === undefined ? [] : [sql`state = ${filter.state}`]),
        ...(filter.organizationId === undefined ? [] : [sql`organization_id = ${filter.organizationId}`])
      ])}
         order by created_at desc, id desc
         limit ${filter.limit}`
      return yield* decodeAll(Allocation)(rows)
    }, Effect.mapError(databaseError))

    /** Every allocation that holds its org and gateway. */
    const liveAllocations = Effect.fn("AllocationStore.liveAllocations")(function*() {
      const rows = yield* sql`select ${sql.literal(allocationColumns)} from allocations where gateway_allocator_is_live(state)`
      return yield* decodeAll(LiveAllocation)(rows)
    }, Effect.mapError(databaseError))

    /**
     * Runs `effect` while the org has no live allocation and none can be claimed: the org's
     * slot in `allocations_one_live_per_org` is taken by a row inserted and never committed (a
     * claim's insert waits for this transaction, which always rolls back, so nobody ever sees
     * the row). None when the org has a live allocation. For what must not race a claim without
     * owning anything: drift repair deleting an orphan DNS record (a start that claimed between
     * a check and the delete would lose its record).
     */
    const whileUnclaimed = <A, E, R>(
      organizationId: OrganizationId,
      effect: Effect.Effect<A, E, R>
    ): Effect.Effect<Option.Option<A>, E | DatabaseError, R> => {
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
            Effect.mapError(databaseError)
          )
          return yield* new SlotReleased({ result: held ? Option.some(yield* effect) : Option.none() })
        })
      ).pipe(Effect.catchIf((error): error is SlotReleased => error instanceof SlotReleased, (released) => Effect.succeed(released.result)))
    }

    return {
      claim,
      release,
      transition,
      activate,
      owns,
      takeForStop,
      whileActive,
      withActiveAllocations,
      whileUnclaimed,
      findLive,
      getAllocation,
      listAllocations,
      liveAllocations,
      recoverable,
      adopt
    }
  })
}) {}
