// gateway-allocator/client: a typed client of the service, made from its own HttpApi definition.
// An Effect API (GatewayAllocatorClient.layer) and a Promise API (createClient), the same calls,
// answers and errors. It imports the API's definition, errors and domain schemas only, never the
// server (test/build/client.test.ts checks its import graph).
export {
  type Allocation,
  type AllocationError,
  type AllocatorClient,
  type ClientOptions,
  GatewayAllocatorClient,
  type GatewayStatus,
  make,
  type Pool,
  type PoolError,
  type Ready,
  type ReadyError,
  type StartError,
  type Started,
  type StatusError,
  type StopError,
  type Stopped
} from "./GatewayAllocatorClient.ts"
// The API's errors, the server's own classes.
export {
  ActivationFailedResponse,
  Conflict,
  NoGatewayAvailableResponse,
  NotFound,
  NotReady,
  ServiceUnavailable,
  StepFailedResponse,
  StepTimedOutResponse,
  StopFailedResponse,
  Unauthorized
} from "../http/errors.ts"
export { type GatewayAllocatorError, InvalidRequest, isGatewayAllocatorError, TransportError } from "./errors.ts"
export { createClient, type PromiseClient, type PromiseClientOptions } from "./promise.ts"
export { type Retry, type RetryOptions } from "./retry.ts"
