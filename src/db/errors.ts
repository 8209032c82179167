import type { SqlError } from "@effect/sql"
import { Data, type ParseResult, Predicate } from "effect"
import { type ChangedNothingMarker, ChangedNothingTypeId } from "../domain/changedNothing.ts"

const detail = (cause: unknown) =>
  Predicate.hasProperty(cause, "message") && typeof cause.message === "string" ? ` (${cause.message})` : ""

/** Postgres did not answer, refused the statement, or answered rows of the wrong shape. */
export class DatabaseError extends Data.TaggedError("DatabaseError")<{
  readonly cause: SqlError.SqlError | ParseResult.ParseError
}> implements ChangedNothingMarker {
  override get message() {
    return `database: ${this.cause.message}${this.cause._tag === "SqlError" ? detail(this.cause.cause) : ""}`
  }
  /**
   * Postgres answered the statement with an error (it has a SQLSTATE): its transaction rolled
   * back, nothing changed. A lost connection may have committed or not.
   */
  get [ChangedNothingTypeId](): boolean {
    return this.cause._tag === "SqlError" && sqlState(this.cause) !== undefined
  }
}

/** The SQLSTATE of a failed statement, e.g. `GA001` for `no_gateway_available`. */
export const sqlState = (error: SqlError.SqlError): string | undefined =>
  Predicate.hasProperty(error.cause, "code") && typeof error.cause.code === "string" ? error.cause.code : undefined
