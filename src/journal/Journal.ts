import { SqlClient } from "@effect/sql"
import { Duration, Effect, Ref, Schema, type Scope } from "effect"
import { DatabaseError } from "../db/errors.ts"
import { AllocationId } from "../domain/ids.ts"
import { Actor, StepEvent, StepName } from "../domain/steps.ts"

export const JournalEntry = Schema.Struct({
  step: StepName,
  event: StepEvent,
  actor: Actor,
  detail: Schema.NullOr(Schema.String),
  durationMs: Schema.NullOr(Schema.Number),
  at: Schema.DateFromSelf
})
export type JournalEntry = typeof JournalEntry.Type

export const AllocationJournalEntry = Schema.Struct({ allocationId: AllocationId, ...JournalEntry.fields })
export type AllocationJournalEntry = typeof AllocationJournalEntry.Type

export interface JournalRecord {
  readonly allocationId: AllocationId
  readonly step: StepName
  readonly event: StepEvent
  readonly actor: Actor
  readonly detail?: string | undefined
  readonly durationMs?: number | undefined
}

/** A record as the `allocation_steps` columns take it. */
const journalColumns = (entry: JournalRecord) => ({
  allocation_id: entry.allocationId,
  step: entry.step,
  event: entry.event,
  actor: entry.actor,
  detail: entry.detail ?? null,
  duration_ms: entry.durationMs === undefined ? null : Math.round(entry.durationMs)
})

/**
 * The insert of journal records, as a statement: Journal.record runs it alone; a fence check or
 * an activation carries it in its own statement (see AllocationStore).
 */
export const journalInsert = (sql: SqlClient.SqlClient, entries: ReadonlyArray<JournalRecord>) =>
  sql`insert into allocation_steps ${sql.insert(entries.map(journalColumns))}`

/** A row as a writer takes it: the writer knows the allocation and who works on it. */
export type JournalRow = Omit<JournalRecord, "allocationId" | "actor">

/**
 * One worker's journal for one allocation (a start's attempt, a stop, a recovery). A step's or
 * undo's closing row waits (`later`) for the next write, and the next opening row is handed over
 * with it to the fence check's statement (`handOver`), so the journal costs a start and a stop no
 * round trip of its own; what still waits when the writer's scope closes is written then. Writes
 * never fail the work: a write of its own is bounded by UNDO_TIMEOUT_MS, rows handed over are
 * bounded with their statement, and a lost row is logged. The journal is what the API and the
 * console show, never what recovery reads (the reconciler compares the outside systems with the
 * allocations), so a crash can cost a waiting row, not a repair.
 */
export interface JournalWriter {
  /** Writes the rows waiting, then this one, in one insert. */
  readonly now: (row: JournalRow) => Effect.Effect<void>
  /**
   * Hands the rows waiting, then this one if any, to a statement that writes them itself (the
   * fence check with a step's opening row, the activation with the last step's closing row): one
   * round trip instead of two.
   */
  readonly handOver: (row?: JournalRow) => Effect.Effect<ReadonlyArray<JournalRecord>>
  /** Keeps the row for the next write. */
  readonly later: (row: JournalRow) => Effect.Effect<void>
  /** Writes the rows still waiting (the last step's or undo's, when nothing else follows). */
  readonly flush: Effect.Effect<void>
}

/**
 * Opens the journal of `allocationId` as worked on by `actor`, for the enclosing scope; each write
 * bounded by `boundMs`.
 */
export const openJournal = (
  journal: Journal,
  boundMs: number,
  allocationId: AllocationId,
  actor: Actor
): Effect.Effect<JournalWriter, never, Scope.Scope> =>
  Effect.gen(function*() {
    const waiting = yield* Ref.make<ReadonlyArray<JournalRecord>>([])
    const record = (row: JournalRow): JournalRecord => ({ ...row, allocationId, actor })
    const write = (more: ReadonlyArray<JournalRecord>) =>
      Effect.flatMap(Ref.getAndSet(waiting, []), (rows) => journal.record([...rows, ...more])).pipe(
        Effect.interruptible,
        Effect.timeout(Duration.millis(boundMs)),
        Effect.catchAllCause((cause) => Effect.logWarning("journal write failed", cause)),
        Effect.annotateLogs({ allocation_id: allocationId, actor })
      )
    const flush = Effect.flatMap(Ref.get(waiting), (rows) => rows.length === 0 ? Effect.void : write([]))
    yield* Effect.addFinalizer(() => flush)
    return {
      now: (row) => write([record(row)]).pipe(Effect.annotateLogs({ step: row.step, journal_event: row.event })),
      handOver: (row) => Effect.map(Ref.getAndSet(waiting, []), (rows) => row === undefined ? rows : [...rows, record(row)]),
      later: (row) => Ref.update(waiting, (rows) => [...rows, record(row)]),
      flush
    }
  })

/**
 * The step journal: what each step and each undo did, in Postgres, written as the pipeline runs.
 * It is what the API shows; logs are not the source of truth.
 */
export class Journal extends Effect.Service<Journal>()("Journal", {
  effect: Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient

    /** Writes rows in one insert, in their order (ids and `at` follow it). */
    const record = Effect.fn("Journal.record")(function*(entries: ReadonlyArray<JournalRecord>) {
      if (entries.length === 0) return
      yield* journalInsert(sql, entries)
    }, Effect.mapError((cause) => new DatabaseError({ cause })))

    const entries = Effect.fn("Journal.entries")(function*(allocationId: AllocationId) {
      const rows = yield* sql`
        select step, event, actor, detail, duration_ms as "durationMs", at from allocation_steps
         where allocation_id = ${allocationId} order by id`
      return yield* Schema.decodeUnknown(Schema.Array(JournalEntry))(rows)
    }, Effect.mapError((cause) => new DatabaseError({ cause })))

    /** The journals of several allocations at once, each in order (the allocation listing). */
    const entriesFor = Effect.fn("Journal.entriesFor")(function*(allocationIds: ReadonlyArray<AllocationId>) {
      if (allocationIds.length === 0) return []
      const rows = yield* sql`
        select allocation_id as "allocationId", step, event, actor, detail, duration_ms as "durationMs", at
          from allocation_steps where allocation_id in ${sql.in(allocationIds)} order by id`
      return yield* Schema.decodeUnknown(Schema.Array(AllocationJournalEntry))(rows)
    }, Effect.mapError((cause) => new DatabaseError({ cause })))

    return { record, entries, entriesFor }
  })
}) {}
