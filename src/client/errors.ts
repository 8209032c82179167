// The client's errors: the API's own error classes (src/http/errors.ts, decoded from the service's
// answers: the classes the server fails with), and two of the client's, for a call that got none
// of the API's answers or was never sent.
import { HttpApiError, HttpClientError } from "@effect/platform"
import { Data, Effect, ParseResult } from "effect"
import * as ApiError from "../http/errors.ts"
import { describeTransport } from "../lib/transport.ts"

/**
 * The call got no answer the API defines. `Unreachable`: no answer at all (refused, reset, name
 * not found); a request that was sent may still have been carried out. `UnexpectedAnswer`: an
 * answer the API does not define for this call (its status or body), e.g. from a proxy in front.
 */
export class TransportError extends Data.TaggedError("TransportError")<{
  readonly reason: "Unreachable" | "UnexpectedAnswer"
  readonly message: string
  /** The answer's HTTP status, when there was an answer. */
  readonly status?: number
}> {}

/**
 * The request is malformed: refused by the client before it was sent (an id that is not a UUID,
 * a base URL that is not one), or by the service (400). Trying it again cannot help.
 */
export class InvalidRequest extends Data.TaggedError("InvalidRequest")<{ readonly message: string }> {}

const errorClasses = [
  ApiError.ActivationFailedResponse,
  ApiError.Conflict,
  ApiError.NoGatewayAvailableResponse,
  ApiError.NotFound,
  ApiError.NotReady,
  ApiError.ServiceUnavailable,
  ApiError.StepFailedResponse,
  ApiError.StepTimedOutResponse,
  ApiError.StopFailedResponse,
  ApiError.Unauthorized,
  TransportError,
  InvalidRequest
] as const

/** Every error a call of the client can fail with, to `switch (error._tag)` over. */
export type GatewayAllocatorError = InstanceType<(typeof errorClasses)[number]>

/** Whether a rejection of the Promise client is one of its errors (anything else is a defect). */
export const isGatewayAllocatorError = (error: unknown): error is GatewayAllocatorError =>
  errorClasses.some((errorClass) => error instanceof errorClass)

/** What the platform fails a call with when it got none of the API's answers. */
export type PlatformError = HttpClientError.HttpClientError | ParseResult.ParseError | HttpApiError.HttpApiDecodeError

const isPlatformError = (error: unknown): error is PlatformError =>
  HttpClientError.isHttpClientError(error) || ParseResult.isParseError(error) || error instanceof HttpApiError.HttpApiDecodeError

const fromPlatform = (error: PlatformError): TransportError | InvalidRequest => {
  switch (error._tag) {
    case "RequestError":
      // Transport: the request did not get an answer. Encode, InvalidUrl: it was never sent.
      return error.reason === "Transport"
        ? new TransportError({ reason: "Unreachable", message: describeTransport(error) })
        : new InvalidRequest({ message: error.message })
    case "ResponseError":
      return new TransportError({ reason: "UnexpectedAnswer", status: error.response.status, message: error.message })
    case "ParseError":
      return new TransportError({ reason: "UnexpectedAnswer", message: `the answer is not the API's: ${error.message}` })
    case "HttpApiDecodeError":
      return new InvalidRequest({ message: error.message })
  }
}

/** A call's API errors as they are, the platform's as TransportError or InvalidRequest. */
export const answered = <A, E, R>(
  call: Effect.Effect<A, E | PlatformError, R>
): Effect.Effect<A, Exclude<E, PlatformError> | TransportError | InvalidRequest, R> =>
  Effect.catchIf(call, isPlatformError, (error) => Effect.fail(fromPlatform(error)))
