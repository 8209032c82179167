import { SqlClient } from "@effect/sql"
import { Effect, Schema } from "effect"
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
      yield* sql`insert into allocation_steps ${
        sql.insert(entries.map((entry) => ({
          allocation_id: entry.allocationId,
          step: entry.step,
          event: entry.event,
          actor: entry.actor,
          detail: entry.detail ?? null,
          duration_ms: entry.durationMs === undefined ? null : Math.round(entry.durationMs)
        })))
      }`
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
