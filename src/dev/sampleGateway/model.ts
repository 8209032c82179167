// What the sample gateway is told and holds, and how it is started and driven: the public side
// of src/dev/SampleGateway.ts (which re-exports all of it).
import { Data, type Effect, Schema } from "effect"
import { ALLOCATION_HEADER as NGINX_ALLOCATION_HEADER } from "../../nginx/config.ts"

export class SampleGatewayError extends Data.TaggedError("SampleGatewayError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

const Mode = Schema.Literal("ok", "fail", "hang")

export const Behaviour = Schema.Struct({
  /** `GET {healthPath}`: "ok" = 200, "fail" = 500, "hang" = never answer (socket kept open). */
  health: Mode,
  /**
   * `POST {handshakePath}`: "ok" = take the allocation, answer 200 after `handshakeDelayMs`;
   * "fail" = 500 after the delay, nothing taken; "hang" = take it and never answer (the
   * handshake took effect, its answer was lost: the service must release it).
   */
  handshake: Mode,
  handshakeDelayMs: Schema.NonNegativeInt,
  /** `POST {releasePath}`, after `releaseDelayMs`: "ok" = release; "fail" = 500, "hang" = never answer, both changing nothing. */
  release: Mode,
  releaseDelayMs: Schema.NonNegativeInt,
  /**
   * "enforce": the allocation header, a release's closing of connections, and the per-message
   * and per-event checks. "off": a broken gateway that ignores them all (a negative control).
   */
  isolation: Schema.Literal("enforce", "off")
})
export type Behaviour = typeof Behaviour.Type

export const defaultBehaviour: Behaviour = {
  health: "ok",
  handshake: "ok",
  handshakeDelayMs: 0,
  release: "ok",
  releaseDelayMs: 0,
  isolation: "enforce"
}

/** A change of behaviour: what `/__control` and the command line accept. */
export const BehaviourPatch = Schema.partialWith(Behaviour, { exact: true })

const ids = {
  organization_id: Schema.NonEmptyString,
  gateway_id: Schema.NonEmptyString,
  allocation_id: Schema.NonEmptyString
}
/** A handshake's body: what the gateway holds until that allocation is released. */
export const Held = Schema.Struct({ ...ids, gateway_hostname: Schema.NonEmptyString })
export type Held = typeof Held.Type
export const ReleaseRequest = Schema.Struct(ids)

/**
 * nginx names the allocation of the route it used on every request it proxies (src/nginx/config.ts);
 * lowercase, as Node hands over request header names.
 */
export const ALLOCATION_HEADER = NGINX_ALLOCATION_HEADER.toLowerCase()

export interface SampleGatewayHandle {
  readonly name: string
  readonly port: number
  /** `127.0.0.1:PORT`, the pool's `upstream` for this gateway. */
  readonly upstream: string
  readonly setBehaviour: (behaviour: Partial<Behaviour>) => Effect.Effect<void>
  readonly behaviour: Effect.Effect<Behaviour>
  /** Handshake bodies received (every JSON one), in order, whatever the behaviour answered. */
  readonly handshakes: Effect.Effect<ReadonlyArray<unknown>>
  /** Release bodies received (every JSON one), in order, whatever the behaviour answered. */
  readonly releases: Effect.Effect<ReadonlyArray<unknown>>
  /** The handshake body of the allocation it holds, or null. */
  readonly held: Effect.Effect<Held | null>
  /** Open sockets tagged with an allocation (they carried its requests, streams or WebSockets). */
  readonly openConnections: Effect.Effect<number>
  /** Back to the initial behaviour, nothing held or received; every tagged connection closed. */
  readonly reset: Effect.Effect<void>
}

export interface SampleGatewayOptions {
  readonly port?: number
  readonly host?: string
  readonly name?: string
  readonly healthPath?: string
  readonly handshakePath?: string
  readonly releasePath?: string
  /** Between two events of `GET /stream` (default 50). */
  readonly streamIntervalMs?: number
  readonly behaviour?: Partial<Behaviour>
}
