import { HttpClient, HttpClientRequest } from "@effect/platform"
import { randomUUID } from "node:crypto"
import { Data, Duration, Effect, Queue, Redacted, Ref, Schedule, type Scope } from "effect"
import { transportCode } from "../lib/transport.ts"

/**
 * A JSON webhook that never blocks its callers: `send` only enqueues (a bounded queue; when it is
 * full the message is dropped and a line is logged), and one background fiber, owned by the
 * caller's Scope, POSTs each message with a per-attempt timeout and bounded exponential backoff.
 *
 * The URL is a secret (it often carries a token): it is never logged, never put on a span, and
 * errors are described without it. Only its origin is named in log lines.
 */
export interface WebhookOptions {
  readonly url: Redacted.Redacted<string>
  /** Messages waiting for delivery; more are dropped (and logged). Default 256. */
  readonly capacity?: number | undefined
  /** Attempts per message, the first included. Default 5. */
  readonly maxAttempts?: number | undefined
  /** Bound on one attempt (connect, request, response). Default 5 s. */
  readonly attemptTimeout?: Duration.DurationInput | undefined
  /** First delay between attempts; it doubles each time (with jitter). Default 500 ms. */
  readonly backoff?: Duration.DurationInput | undefined
  /** At shutdown, how long queued messages may still take to go out. Default 5 s. */
  readonly drainTimeout?: Duration.DurationInput | undefined
}

export interface Webhook {
  /** Enqueues `body`; never blocks, never fails. `annotations` go on the delivery's log lines. */
  readonly send: (body: unknown, annotations?: Readonly<Record<string, unknown>>) => Effect.Effect<void>
}

class AttemptFailed extends Data.TaggedError("AttemptFailed")<{
  readonly reason: string
  readonly retryable: boolean
}> {}

interface Message {
  readonly id: string
  readonly body: unknown
  readonly annotations: Readonly<Record<string, unknown>>
}

/** Scheme, host and port only: no credentials, path or query. */
export const originOf = (url: string) => {
  try {
    return new URL(url).origin
  } catch {
    return "(unparsable URL)"
  }
}

/** A transport error without the request line (which names the URL). */
const describeTransport = (error: { readonly reason: string; readonly cause?: unknown }) => {
  const code = transportCode(error)
  return `${error.reason} error${code === undefined ? "" : ` (${code})`}`
}

// 408 and 429 say "later"; any other 4xx will not change on a retry.
const retryableStatus = (status: number) => status >= 500 || status === 408 || status === 429

export const makeWebhook = (
  options: WebhookOptions
): Effect.Effect<Webhook, never, HttpClient.HttpClient | Scope.Scope> =>
  Effect.gen(function*() {
    const capacity = options.capacity ?? 256
    const maxAttempts = Math.max(1, options.maxAttempts ?? 5)
    const attemptTimeout = Duration.decode(options.attemptTimeout ?? Duration.seconds(5))
    const backoff = options.backoff ?? Duration.millis(500)
    const drainTimeout = options.drainTimeout ?? Duration.seconds(5)
    const destination = originOf(Redacted.value(options.url))
    // No client span and no trace header: the span would record the full URL.
    const client = (yield* HttpClient.HttpClient).pipe(
      HttpClient.withTracerDisabledWhen(() => true),
      HttpClient.withTracerPropagation(false)
    )
    const queue = yield* Queue.dropping<Message>(capacity)
    // Messages accepted and not yet delivered or given up on (queued or in flight).
    const pending = yield* Ref.make(0)

    const attempt = (message: Message) =>
      client.execute(
        HttpClientRequest.post(Redacted.value(options.url)).pipe(
          HttpClientRequest.setHeaders({
            "user-agent": "gateway-allocator",
            // The same key on every attempt: a receiver can drop a retry it already has.
            "idempotency-key": message.id
          }),
          HttpClientRequest.bodyUnsafeJson(message.body)
        )
      ).pipe(
        Effect.mapError((error) =>
          new AttemptFailed({
            reason: error._tag === "RequestError" ? describeTransport(error) : `response error (${error.reason})`,
            retryable: true
          })
        ),
        Effect.flatMap((response) =>
          Effect.zipRight(
            Effect.ignore(response.text), // read the body so the connection is reused
            response.status >= 200 && response.status < 300
              ? Effect.void
              : Effect.fail(
                new AttemptFailed({ reason: `HTTP ${response.status}`, retryable: retryableStatus(response.status) })
              )
          )
        ),
        Effect.timeoutFail({
          duration: attemptTimeout,
          onTimeout: () =>
            new AttemptFailed({ reason: `no answer within ${Duration.toMillis(attemptTimeout)} ms`, retryable: true })
        })
      )

    const deliver = (message: Message) =>
      Effect.gen(function*() {
        const attempts = yield* Ref.make(0)
        const result = yield* Ref.update(attempts, (n) => n + 1).pipe(
          Effect.zipRight(attempt(message)),
          Effect.tapError((error) =>
            Effect.flatMap(Ref.get(attempts), (n) =>
              Effect.logDebug(`webhook attempt ${n}/${maxAttempts} to ${destination} failed: ${error.reason}`))
          ),
          Effect.retry({
            schedule: Schedule.exponential(backoff, 2).pipe(Schedule.jittered),
            times: maxAttempts - 1,
            while: (error) => error.retryable
          }),
          Effect.either
        )
        const made = yield* Ref.get(attempts)
        yield* Effect.annotateCurrentSpan({ "webhook.attempts": made })
        if (result._tag === "Left") {
          yield* Effect.annotateCurrentSpan({ "webhook.error": result.left.reason })
          yield* Effect.logError(
            `webhook delivery to ${destination} failed after ${made} attempt(s): ${result.left.reason}${
              result.left.retryable ? "" : " (not retried)"
            }`
          )
        } else {
          yield* Effect.logInfo(`webhook delivered to ${destination}${made > 1 ? ` after ${made} attempts` : ""}`)
        }
      }).pipe(
        Effect.annotateLogs({ ...message.annotations, webhook_message_id: message.id }),
        Effect.withSpan("Webhook.deliver", {
          root: true,
          attributes: { ...message.annotations, "webhook.destination": destination, "webhook.message_id": message.id }
        }),
        Effect.ensuring(Ref.update(pending, (n) => n - 1))
      )

    yield* Queue.take(queue).pipe(Effect.flatMap(deliver), Effect.forever, Effect.forkScoped)

    // Runs before the fiber above is interrupted (finalizers run in reverse order): what is queued
    // gets a bounded chance to go out.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        const waiting = yield* Ref.get(pending)
        if (waiting === 0) return
        yield* Effect.logInfo(`shutdown: ${waiting} webhook message(s) still to deliver to ${destination}`)
        const drained = yield* Ref.get(pending).pipe(
          Effect.repeat({ until: (n) => n === 0, schedule: Schedule.spaced(Duration.millis(50)) }),
          Effect.interruptible,
          Effect.timeout(drainTimeout),
          Effect.isSuccess
        )
        if (!drained) {
          yield* Effect.logWarning(`shutdown: ${yield* Ref.get(pending)} webhook message(s) to ${destination} dropped`)
        }
      })
    )

    return {
      send: (body, annotations = {}) =>
        Effect.gen(function*() {
          const message: Message = { id: randomUUID(), body, annotations }
          yield* Ref.update(pending, (n) => n + 1)
          const accepted = yield* Queue.offer(queue, message)
          if (!accepted) {
            yield* Ref.update(pending, (n) => n - 1)
            yield* Effect.logWarning(
              `webhook queue full (${capacity} waiting for ${destination}): message dropped`
            ).pipe(Effect.annotateLogs(annotations))
          }
        })
    } satisfies Webhook
  })
