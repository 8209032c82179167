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

/** A client error's message with the system code under it, when it has one ("...: ECONNREFUSED"). */
export const describeTransport = (error: { readonly message: string }): string => {
  const code = transportCode(error)
  return code === undefined ? error.message : `${error.message}: ${code}`
}

/**
 * A request that never reached its server: the connection was refused, or the name did not
 * resolve, before anything was sent. Such a call changed nothing, whatever it asked for.
 */
export const neverDelivered = (error: unknown): boolean => {
  const code = transportCode(error)
  return code === "ECONNREFUSED" || code === "ENOTFOUND"
}

/**
 * The connection was closed under the request before an answer came (ECONNRESET: "socket hang
 * up"; EPIPE): what a kept-alive connection the server had just closed looks like. The request
 * may or may not have been handled: only a call that may be repeated is asked again.
 */
export const resetBeforeAnswer = (error: unknown): boolean => {
  const code = transportCode(error)
  return code === "ECONNRESET" || code === "EPIPE"
}
