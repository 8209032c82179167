// The Promise API of the client, for callers without Effect: the Effect client run on a runtime of
// its own (fetch as the HttpClient). A call rejects with the error instance itself (not Effect's
// FiberFailure), so `error._tag` and `instanceof` work on it.
import { FetchHttpClient } from "@effect/platform"
import { Cause, Effect, Exit, Layer, ManagedRuntime, Redacted } from "effect"
import {
  type Allocation,
  type AllocatorClient,
  GatewayAllocatorClient,
  type GatewayStatus,
  type Pool,
  type Ready,
  type Started,
  type Stopped
} from "./GatewayAllocatorClient.ts"
import type { Retry } from "./retry.ts"

/**
 * Each call resolves with the API's answer or rejects with one of `GatewayAllocatorError`
 * (see `isGatewayAllocatorError`): the same errors as the Effect API's, call by call.
 */
export interface PromiseClient {
  readonly start: (organizationId: string) => Promise<Started>
  readonly stop: (organizationId: string) => Promise<Stopped>
  readonly status: (organizationId: string) => Promise<GatewayStatus>
  readonly allocation: (allocationId: string) => Promise<Allocation>
  readonly pool: () => Promise<Pool>
  readonly ready: () => Promise<Ready>
  /** Ends the client's runtime; calls made after it reject. */
  readonly close: () => Promise<void>
}

export interface PromiseClientOptions {
  /** Where the service listens, e.g. `http://gateway-allocator.internal:8080`. */
  readonly baseUrl: string | URL
  /** The service's API_TOKEN (kept Redacted inside the client). */
  readonly token: string
  /** Tries again on 503 and on no answer: 3 tries from 100 ms by default; `false` for one try. */
  readonly retry?: Retry
}

export const createClient = (options: PromiseClientOptions): PromiseClient => {
  const runtime = ManagedRuntime.make(
    GatewayAllocatorClient.layer({
      baseUrl: options.baseUrl,
      token: Redacted.make(options.token),
      ...(options.retry === undefined ? {} : { retry: options.retry })
    }).pipe(Layer.provide(FetchHttpClient.layer))
  )
  // The failure itself, or a defect or interruption as the error it squashes to.
  const run = <A, E>(call: (client: AllocatorClient) => Effect.Effect<A, E>): Promise<A> =>
    runtime.runPromiseExit(Effect.flatMap(GatewayAllocatorClient, call)).then(
      Exit.match({ onSuccess: (value) => Promise.resolve(value), onFailure: (cause) => Promise.reject(Cause.squash(cause)) })
    )
  return {
    start: (organizationId) => run((client) => client.start(organizationId)),
    stop: (organizationId) => run((client) => client.stop(organizationId)),
    status: (organizationId) => run((client) => client.status(organizationId)),
    allocation: (allocationId) => run((client) => client.allocation(allocationId)),
    pool: () => run((client) => client.pool()),
    ready: () => run((client) => client.ready()),
    close: () => runtime.dispose()
  }
}
