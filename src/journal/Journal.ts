import { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import type { AllocationId } from "../domain/ids.ts"
import type { Actor, StepName } from "../domain/steps.ts"
import { PoolError } from "../pool/GatewayPool.ts"

export type StepEvent =
  | "started"
  | "completed"
  | "failed"
  | "timed_out"
  | "skipped"
  | "undo_started"
  | "undone"
  | "undo_failed"
  | "undo_timed_out"
  | "undo_skipped"

export interface JournalEntry {
  readonly step: StepName
  readonly event: StepEvent
  readonly actor: Actor
  readonly detail: string | null
  readonly durationMs: number | null
  readonly at: Date
}

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
 * It is what the API shows and what crash recovery reads; logs are not the source of truth.
 */
export class Journal extends Effect.Service<Journal>()("Journal", {
  effect: Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient

    const record = Effect.fn("Journal.record")(function*(entry: JournalRecord) {
      yield* sql`
        insert into allocation_steps (allocation_id, step, event, actor, detail, duration_ms)
        values (${entry.allocationId}, ${entry.step}, ${entry.event}, ${entry.actor},
                ${entry.detail ?? null}, ${entry.durationMs === undefined ? null : Math.round(entry.durationMs)})`.pipe(
        Effect.mapError((cause) => new PoolError({ cause }))
      )
    })

    const entries = Effect.fn("Journal.entries")(function*(allocationId: AllocationId) {
      const rows = yield* sql<{
        step: StepName
        event: StepEvent
        actor: Actor
        detail: string | null
        duration_ms: number | null
        at: Date
      }>`select step, event, actor, detail, duration_ms, at from allocation_steps
          where allocation_id = ${allocationId} order by id`.pipe(Effect.mapError((cause) => new PoolError({ cause })))
      return rows.map((row): JournalEntry => ({
        step: row.step,
        event: row.event,
        actor: row.actor,
        detail: row.detail,
        durationMs: row.duration_ms,
        at: row.at
      }))
    })

    return { record, entries }
  })
}) {}
