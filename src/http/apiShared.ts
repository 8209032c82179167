// What every group of the HTTP API shares: the bearer-token middleware, and error classes
// described for what they mean on one endpoint.
import { HttpApiMiddleware, HttpApiSecurity } from "@effect/platform"
import type { Schema } from "effect"
import { Unauthorized } from "./errors.ts"

/** Bearer-token auth for every /gateway, /pool, /allocations and /edges call. */
export class Authorization extends HttpApiMiddleware.Tag<Authorization>()("Authorization", {
  failure: Unauthorized,
  security: { bearer: HttpApiSecurity.bearer }
}) {}

/** The same error class, described for what it means on one endpoint (OpenAPI). */
export const described = <S extends Schema.Schema.Any>(schema: S, description: string): S =>
  schema.annotations({ description }) as S
