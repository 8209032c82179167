// The pool's gateways: a sample gateway holds one allocation at a time (409 to a handshake for
// another until it is released), so 10,000 active allocations need 10,000 gateways. They run in
// the benchmark's process, each on a loopback address of its own (all of 127/8 is loopback on
// Linux) and all on one port: no port range is used up, neither the ephemeral one the run's
// short-lived connections draw from nor the one the repository's tests pick their ports from.
import { type Scope, Effect } from "effect"
import { type SampleGatewayError, type SampleGatewayHandle, startSampleGateway } from "../../src/dev/SampleGateway.ts"
import { freePort } from "../../src/lib/ports.ts"

/** `127.{a}.{b}.{c}` for the i-th gateway, from 127.1.0.1 up (127.0.0.1 stays the stack's own). */
export const loopbackAddress = (i: number): string =>
  `127.${1 + Math.floor(i / 62_500)}.${Math.floor(i / 250) % 250}.${1 + (i % 250)}`

export const startPoolGateways = (count: number): Effect.Effect<ReadonlyArray<SampleGatewayHandle>, SampleGatewayError, Scope.Scope> =>
  Effect.flatMap(freePort, (port) =>
    Effect.forEach(
      Array.from({ length: count }, (_, i) => i),
      (i) => startSampleGateway({ name: `pool-gateway-${i + 1}`, host: loopbackAddress(i), port }),
      { concurrency: 256 }
    ))
