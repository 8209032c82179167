// The Effect API of the client: the service's own HttpApi (src/http/Api.ts) made a client by the
// platform, so a request or an answer that changes in the API changes here, and each call fails
// with the API's errors for it, or TransportError / InvalidRequest.
import { HttpApiClient, type HttpApiEndpoint, type HttpApiGroup, HttpClient, HttpClientRequest } from "@effect/platform"
import { Context, Effect, Layer, type Redacted, Schema } from "effect"
import { AllocationId, OrganizationId } from "../domain/ids.ts"
import { type AllocationsGroup, Api, type GatewayGroup, type HealthGroup, type PoolGroup } from "../http/Api.ts"
import { answered, InvalidRequest, type PlatformError, type TransportError } from "./errors.ts"
import { type Retry, retrying } from "./retry.ts"

type Endpoint<Group extends HttpApiGroup.HttpApiGroup.Any, Name extends string> = HttpApiEndpoint.HttpApiEndpoint.WithName<
  HttpApiGroup.HttpApiGroup.Endpoints<Group>,
  Name
>

/** What the endpoint answers on success. */
type SuccessOf<Group extends HttpApiGroup.HttpApiGroup.Any, Name extends string> = HttpApiEndpoint.HttpApiEndpoint.Success<
  Endpoint<Group, Name>
>

/** The endpoint's errors and its group's (the bearer token's Unauthorized), and the client's own. */
type ErrorOf<Group extends HttpApiGroup.HttpApiGroup.Any, Name extends string> =
  | HttpApiEndpoint.HttpApiEndpoint.Error<Endpoint<Group, Name>>
  | HttpApiGroup.HttpApiGroup.Error<Group>
  | TransportError
  | InvalidRequest

/** POST /gateway/start: the org's gateway, started now or the one it had (`reused: true`). */
export type Started = SuccessOf<typeof GatewayGroup, "start">
export type StartError = ErrorOf<typeof GatewayGroup, "start">
/** POST /gateway/stop: routing and DNS gone, the gateway released (or its release pending). */
export type Stopped = SuccessOf<typeof GatewayGroup, "stop">
export type StopError = ErrorOf<typeof GatewayGroup, "stop">
/** GET /gateway/{organization_id}: the org's live allocation. */
export type GatewayStatus = SuccessOf<typeof GatewayGroup, "status">
export type StatusError = ErrorOf<typeof GatewayGroup, "status">
/** GET /allocations/{allocation_id}: an allocation with its step journal and rollback outcomes. */
export type Allocation = SuccessOf<typeof AllocationsGroup, "get">
export type AllocationError = ErrorOf<typeof AllocationsGroup, "get">
/** GET /pool: the pool's counts and every gateway. */
export type Pool = SuccessOf<typeof PoolGroup, "get">
export type PoolError = ErrorOf<typeof PoolGroup, "get">
/** GET /readyz: whether the service can serve starts now (no token needed). */
export type Ready = SuccessOf<typeof HealthGroup, "readyz">
export type ReadyError = ErrorOf<typeof HealthGroup, "readyz">

/** The calls a caller of the service makes; ids are checked (UUIDs) before anything is sent. */
export interface AllocatorClient {
  readonly start: (organizationId: string) => Effect.Effect<Started, StartError>
  readonly stop: (organizationId: string) => Effect.Effect<Stopped, StopError>
  readonly status: (organizationId: string) => Effect.Effect<GatewayStatus, StatusError>
  readonly allocation: (allocationId: string) => Effect.Effect<Allocation, AllocationError>
  readonly pool: () => Effect.Effect<Pool, PoolError>
  readonly ready: () => Effect.Effect<Ready, ReadyError>
}

export interface ClientOptions {
  /** Where the service listens, e.g. `http://gateway-allocator.internal:8080`. */
  readonly baseUrl: string | URL
  /** The service's API_TOKEN, sent as `Authorization: Bearer …` (a header spans and logs redact). */
  readonly token: Redacted.Redacted<string>
  /** Tries again on 503 and on no answer: 3 tries from 100 ms by default; `false` for one try. */
  readonly retry?: Retry
}

/**
 * A call on one id: the id checked as the API takes it (a UUID, lower-cased; InvalidRequest before
 * anything is sent), named on the call's span, then sent.
 */
const onId = <Id extends string>(schema: Schema.Schema<Id, string>, field: string) => {
  const decode = (value: string) =>
    Effect.mapError(Schema.decodeUnknown(schema)(value), () => new InvalidRequest({ message: `${field} ${JSON.stringify(value)} is not a UUID` }))
  return <A, E>(span: string, send: (id: Id) => Effect.Effect<A, E | PlatformError>) =>
    Effect.fn(span)(function*(value: string) {
      const id = yield* decode(value)
      yield* Effect.annotateCurrentSpan(field, id)
      return yield* answered(send(id))
    })
}

const onOrganization = onId(OrganizationId, "organization_id")

/** The client over the HttpClient in context (FetchHttpClient.layer, NodeHttpClient...). */
export const make = (options: ClientOptions): Effect.Effect<AllocatorClient, never, HttpClient.HttpClient> =>
  Effect.map(
    HttpApiClient.make(Api, {
      baseUrl: options.baseUrl,
      transformClient: (client) =>
        client.pipe(
          HttpClient.mapRequest(HttpClientRequest.bearerToken(options.token)),
          retrying(options.retry ?? {})
        )
    }),
    (api) => ({
      start: onOrganization("Client.start", (organization_id) => api.gateway.start({ payload: { organization_id } })),
      stop: onOrganization("Client.stop", (organization_id) => api.gateway.stop({ payload: { organization_id } })),
      status: onOrganization("Client.status", (organization_id) => api.gateway.status({ path: { organization_id } })),
      allocation: onId(AllocationId, "allocation_id")("Client.allocation", (allocation_id) =>
        api.allocations.get({ path: { allocation_id } })),
      pool: Effect.fn("Client.pool")(function*() {
        return yield* answered(api.pool.get())
      }),
      ready: Effect.fn("Client.ready")(function*() {
        return yield* answered(api.health.readyz())
      })
    })
  )

/**
 * The client as a service: `GatewayAllocatorClient.layer({ baseUrl, token })`, over an HttpClient
 * (e.g. `Layer.provide(FetchHttpClient.layer)`).
 */
export class GatewayAllocatorClient extends Context.Tag("gateway-allocator/GatewayAllocatorClient")<
  GatewayAllocatorClient,
  AllocatorClient
>() {
  static readonly layer = (options: ClientOptions): Layer.Layer<GatewayAllocatorClient, never, HttpClient.HttpClient> =>
    Layer.effect(GatewayAllocatorClient, make(options))
}
