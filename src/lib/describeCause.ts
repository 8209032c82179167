import { Cause, Option } from "effect"

/**
 * What went wrong, in words: the failure's message, or the whole cause when there is none (a
 * defect, an interruption). No stack for a plain failure: rendering one (source-mapped in the
 * bundle) costs more than the rest of a failed start.
 */
export const describeCause = (cause: Cause.Cause<{ readonly message: string }>): string =>
  Option.match(Cause.failureOption(cause), {
    onNone: () => Cause.pretty(cause),
    onSome: (error) => error.message
  })
