import { Predicate } from "effect"

const codeOf = (value: unknown): string | undefined =>
  Predicate.hasProperty(value, "code") && typeof value.code === "string" ? value.code : undefined

/**
 * The system error code under an HTTP client's transport error (ECONNREFUSED, ECONNRESET,
 * HPE_INVALID_CONSTANT, ...): on its cause, or on the cause's cause, where fetch puts it.
 */
export const transportCode = (error: { readonly cause?: unknown }): string | undefined =>
  codeOf(error.cause) ?? codeOf(Predicate.hasProperty(error.cause, "cause") ? error.cause.cause : undefined)
