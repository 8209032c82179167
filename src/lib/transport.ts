import { Predicate } from "effect"

const codeOf = (value: unknown): string | undefined =>
  Predicate.hasProperty(value, "code") && typeof value.code === "string" ? value.code : undefined

const causeOf = (value: unknown): unknown => Predicate.hasProperty(value, "cause") ? value.cause : undefined

/**
 * The system error code under an HTTP client's transport error (ECONNREFUSED, ECONNRESET,
 * HPE_INVALID_CONSTANT, ...): on its cause, or on the cause's cause, where fetch puts it.
 */
export const transportCode = (error: unknown): string | undefined =>
  codeOf(causeOf(error)) ?? codeOf(causeOf(causeOf(error)))
