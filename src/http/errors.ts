import { HttpApiSchema } from "@effect/platform"
import { Schema } from "effect"
import { StepName, UndoOutcome } from "../domain/steps.ts"

// The API's error bodies. Each carries its HTTP status, so the handlers only map domain errors
// to these and the OpenAPI document lists every status. Those that answer a domain error of the
// same tag are named `...Response` here (the tag, in the body, is the contract's).

export class Unauthorized extends Schema.TaggedError<Unauthorized>()(
  "Unauthorized",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 401, description: "Missing or wrong bearer token" })
) {}

export class NotFound extends Schema.TaggedError<NotFound>()(
  "NotFound",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 404, description: "No such organization allocation, allocation or gateway" })
) {}

export class Conflict extends Schema.TaggedError<Conflict>()(
  "Conflict",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 409, description: "The pool's state forbids the change" })
) {}

export class NoGatewayAvailableResponse extends Schema.TaggedError<NoGatewayAvailableResponse>()(
  "NoGatewayAvailable",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 503, description: "No gateway is free in the pool; nothing was changed" })
) {}

/** One gateway a start tried: how that attempt failed and what its rollback did. */
export const AttemptBody = Schema.Struct({
  gateway_id: Schema.NullOr(Schema.String),
  allocation_id: Schema.NullOr(Schema.String),
  /** The step that failed; null when every step had run and the allocation could not be made active. */
  step: Schema.NullOr(StepName),
  message: Schema.String,
  rollback: Schema.Array(UndoOutcome)
})

const failedStepFields = {
  step: StepName,
  message: Schema.String,
  allocation_id: Schema.optional(Schema.String),
  rollback: Schema.Array(UndoOutcome),
  /** Every gateway the start tried, the last one's failure being the answer's `step` and `message`. */
  attempts: Schema.Array(AttemptBody)
}

export class StepFailedResponse extends Schema.TaggedError<StepFailedResponse>()(
  "StepFailed",
  failedStepFields,
  HttpApiSchema.annotations({
    status: 502,
    description: "A step failed; every completed step was undone (see rollback)"
  })
) {}

export class StepTimedOutResponse extends Schema.TaggedError<StepTimedOutResponse>()(
  "StepTimedOut",
  { ...failedStepFields, timeout_ms: Schema.Number },
  HttpApiSchema.annotations({
    status: 504,
    description: "A step did not finish in time; every completed step was undone (see rollback)"
  })
) {}

export class ActivationFailedResponse extends Schema.TaggedError<ActivationFailedResponse>()(
  "ActivationFailed",
  {
    message: Schema.String,
    allocation_id: Schema.optional(Schema.String),
    rollback: Schema.Array(UndoOutcome),
    attempts: Schema.Array(AttemptBody)
  },
  HttpApiSchema.annotations({
    status: 503,
    description: "Every step ran but the database could not make the allocation active; every step was undone (see rollback)"
  })
) {}

export class StopFailedResponse extends Schema.TaggedError<StopFailedResponse>()(
  "StopFailed",
  { step: StepName, message: Schema.String, allocation_id: Schema.String },
  HttpApiSchema.annotations({
    status: 502,
    description: "Routing could not be removed; the allocation stays stopping and is retried"
  })
) {}

/** What `GET /readyz` names when the service cannot serve starts now. */
export const NotReadyDependency = Schema.Struct({
  dependency: Schema.Literal("postgres", "powerdns", "edge"),
  reason: Schema.String,
  /** When it stopped being usable (ISO time). */
  since: Schema.String
})

export class NotReady extends Schema.TaggedError<NotReady>()(
  "NotReady",
  { not_ready: Schema.Array(NotReadyDependency) },
  HttpApiSchema.annotations({ status: 503, description: "A dependency a start needs is not usable now (each named, with why)" })
) {}

export class ServiceUnavailable extends Schema.TaggedError<ServiceUnavailable>()(
  "ServiceUnavailable",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 503, description: "The database did not answer" })
) {}

/** The database failed under a handler: 503, saying what it said. */
export const serviceUnavailable = (error: { readonly message: string }) => new ServiceUnavailable({ message: error.message })
