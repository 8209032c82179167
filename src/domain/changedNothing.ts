import { Predicate } from "effect"

/**
 * Whether a failed call is known to have changed nothing: the outside system refused before
 * acting (a 4xx, a refused connection, a configuration nginx rejected before any signal, a
 * statement Postgres rolled back), or the call never went out. Only such a failure lets a step's
 * undo be skipped; anything else may have taken effect.
 *
 * An error says so by carrying the marker (a getter over what it knows); `ChangedNothing.is`
 * reads it. Errors without the marker never changed nothing.
 */
export const ChangedNothingTypeId: unique symbol = Symbol.for("gateway-allocator/ChangedNothing")

export interface ChangedNothingMarker {
  readonly [ChangedNothingTypeId]: boolean
}

export const ChangedNothing = {
  is: (error: unknown): boolean => Predicate.hasProperty(error, ChangedNothingTypeId) && error[ChangedNothingTypeId] === true
}
