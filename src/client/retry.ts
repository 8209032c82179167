// The client's retry: a request answered 503, or that got no answer, is sent again a bounded
// number of times, after exponential waits with jitter. Every call of the client is safe to send
// twice: a start of an org that has its gateway answers it (`reused: true`), concurrent starts of
// one org share one run, a stop of a stopped org answers NotFound, and the rest are reads.
import { HttpClient, HttpClientResponse } from "@effect/platform"
import { Data, Duration, Effect, Schedule } from "effect"

export interface RetryOptions {
  /** Tries in all, the first one included: 3 by default, at least 1 (1: no retry). */
  readonly attempts?: number
  /** The wait before the second try, 100 ms by default; each next wait doubles (each ±20%, jitter). */
  readonly baseDelay?: Duration.DurationInput
  /** No wait is longer than this: 1 s by default. */
  readonly maxDelay?: Duration.DurationInput
}

/** `false`: every call is tried once. */
export type Retry = false | RetryOptions

export const DEFAULT_ATTEMPTS = 3

/** The waits between tries: exponential from `baseDelay`, jittered, capped, `attempts - 1` of them. */
export const retrySchedule = (options: RetryOptions) => {
  const maxDelay = Duration.decode(options.maxDelay ?? Duration.seconds(1))
  const attempts = Math.max(1, Math.floor(options.attempts ?? DEFAULT_ATTEMPTS))
  return Schedule.exponential(options.baseDelay ?? Duration.millis(100)).pipe(
    Schedule.jittered,
    Schedule.modifyDelay((_, delay) => Duration.min(delay, maxDelay)),
    Schedule.intersect(Schedule.recurs(attempts - 1))
  )
}

/** A 503 answer, held while its request is sent again; the last one is decoded as the API's error. */
class Unavailable extends Data.TaggedError("Unavailable")<{ readonly response: HttpClientResponse.HttpClientResponse }> {}

/**
 * The answer with its body read: a 503 passed over is drained (an unread body keeps its
 * connection), and the last one can still be decoded whatever HttpClient read it.
 */
const buffered = (response: HttpClientResponse.HttpClientResponse) =>
  Effect.map(response.arrayBuffer, (body) =>
    HttpClientResponse.fromWeb(response.request, new Response(body, { status: response.status, headers: response.headers })))

/** Sends a request again on a 503 (any body) or on no answer, per `retry`. */
export const retrying = (retry: Retry) => (client: HttpClient.HttpClient): HttpClient.HttpClient =>
  retry === false ? client : HttpClient.transformResponse(client, (send) =>
    send.pipe(
      Effect.flatMap((response) =>
        response.status === 503
          ? Effect.flatMap(buffered(response), (answer) => Effect.fail(new Unavailable({ response: answer })))
          : Effect.succeed(response)
      ),
      Effect.retry({
        schedule: retrySchedule(retry),
        while: (error) => error._tag === "Unavailable" || (error._tag === "RequestError" && error.reason === "Transport")
      }),
      Effect.catchTag("Unavailable", (unavailable) => Effect.succeed(unavailable.response))
    ))
