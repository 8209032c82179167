import { Context, Effect, Layer } from "effect"
import type { StepName, UndoOutcome } from "../domain/steps.ts"

/** What an operator is told when a rollback could not finish, or the reconciler repaired drift. */
export interface Notice {
  readonly kind: "rollback_incomplete" | "reconciler_repair"
  readonly organization_id: string
  readonly allocation_id: string | null
  readonly gateway_id: string | null
  /** The step whose failure started the rollback, when there was one. */
  readonly step?: StepName | undefined
  /** The original error, or what the reconciler found. */
  readonly message: string
  readonly undos: ReadonlyArray<UndoOutcome>
}

/**
 * Rollback notifications. `notify` never blocks and never fails: delivery (with retries and a
 * bound) happens in the background.
 */
export class Notifier extends Context.Tag("Notifier")<Notifier, {
  readonly notify: (notice: Notice) => Effect.Effect<void>
}>() {}

/** No webhook configured: notices are only logged. */
export const NotifierLogOnly = Layer.succeed(
  Notifier,
  Notifier.of({
    notify: (notice) => Effect.logDebug("notice (no ROLLBACK_WEBHOOK_URL)").pipe(Effect.annotateLogs({ notice }))
  })
)
