import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Context, Effect, Layer, Option } from "effect"
import { WebhookUrl } from "../config.ts"
import type { StepName, UndoOutcome } from "../domain/steps.ts"
import { makeWebhook, type WebhookOptions } from "./Webhook.ts"

/**
 * What an operator is told: a rollback could not finish, the reconciler repaired something, a
 * gateway was quarantined for the third time in a row, a gateway failed to release an org for
 * the third time in a row (someone should look at it: it is held out of the pool meanwhile), or
 * an nginx edge began to owe removals (it holds their gateways until it acknowledges or is
 * deleted: a dead edge left registered would hold them all).
 */
export interface Notice {
  readonly kind: "rollback_incomplete" | "reconciler_repair" | "gateway_quarantined" | "gateway_unreleased" | "edge_holds_gateways"
  readonly organization_id: string | null
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

const noticeAnnotations = (notice: Notice) => ({
  notice_kind: notice.kind,
  organization_id: notice.organization_id,
  ...(notice.allocation_id === null ? {} : { allocation_id: notice.allocation_id })
})

/** No webhook configured: notices are only logged. */
export const NotifierLogOnly = Layer.succeed(
  Notifier,
  Notifier.of({
    notify: (notice) => Effect.logDebug("notice (no ROLLBACK_WEBHOOK_URL)").pipe(Effect.annotateLogs({ notice }))
  })
)

/**
 * Each notice is POSTed as JSON (the `Notice` object; header `idempotency-key` is the same on
 * every attempt) to the webhook, from a bounded queue and a background fiber owned by this
 * layer's scope. `notify` never waits for the webhook.
 */
export const NotifierWebhook = (options: WebhookOptions) =>
  Layer.scoped(
    Notifier,
    Effect.map(makeWebhook(options), (webhook) =>
      Notifier.of({
        notify: (notice) =>
          Effect.logDebug(`notice ${notice.kind}: queued for the webhook`).pipe(
            Effect.zipRight(webhook.send(notice, noticeAnnotations(notice)))
          )
      }))
  ).pipe(Layer.provide(NodeHttpClient.layer))

/** ROLLBACK_WEBHOOK_URL set: notices go to the webhook; unset: they are only logged. */
export const NotifierLive = Layer.unwrapEffect(
  Effect.map(WebhookUrl, (url) =>
    Option.match(url, {
      onNone: () => NotifierLogOnly,
      onSome: (url) => NotifierWebhook({ url })
    }))
)
