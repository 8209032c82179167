// The service's own layers over the in-memory outside systems of ./TestLayers.ts, and the helpers
// of the tests that drive them on the TestClock: one builder for every in-memory suite.
import { Duration, Effect, Layer, TestClock } from "effect"
import { makeServices } from "../../src/app.ts"
import type { GatewayName, Upstream } from "../../src/domain/ids.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { configFrom } from "./stack.ts"
import { calls, OutsideTest } from "./TestLayers.ts"

/** The upstreams of the first `count` gateways `testServices` puts in the pool: 127.0.0.1:9001, :9002... */
export const testUpstreams = (count: number): ReadonlyArray<string> =>
  Array.from({ length: count }, (_, i) => `127.0.0.1:${9001 + i}`)

/** Short bounds, real enough for the ordering logic; a suite's `env` adds to and wins over them. */
const baseEnv = { STEP_TIMEOUT_MS: "1000", UNDO_TIMEOUT_MS: "500" }

/** No health pass nor reconcile pass behind the test's back: they run when it asks (`runOnce`). */
export const backgroundOff = { GATEWAY_HEALTH_INTERVAL_MS: "3600000", RECONCILE_INTERVAL_MS: "3600000" } as const

/**
 * makeServices over the outside systems (OutsideTest unless `outside` says otherwise: the test
 * layers with some of them replaced), `gateways` gateways in the pool (gw-1 on 127.0.0.1:9001,
 * gw-2 on :9002...; default 2), configured by `env` over STEP_TIMEOUT_MS=1000, UNDO_TIMEOUT_MS=500.
 */
export const testServices = <ROut = Layer.Layer.Success<typeof OutsideTest>, E = never, RIn = never>(
  options: {
    readonly gateways?: number
    readonly env?: Readonly<Record<string, string>>
    readonly outside?: Layer.Layer<ROut, E, RIn>
  } = {}
) =>
  Layer.effectDiscard(
    Effect.flatMap(GatewayStore, (pool) =>
      Effect.forEach(testUpstreams(options.gateways ?? 2), (upstream, i) =>
        pool.addGateway(`gw-${i + 1}` as GatewayName, upstream as Upstream)))
  ).pipe(
    Layer.provideMerge(makeServices((options.outside ?? OutsideTest) as Layer.Layer<ROut, E, RIn>)),
    Layer.provide(configFrom({ ...baseEnv, ...options.env }))
  )

/**
 * Moves the TestClock by `totalMs` in steps of `stepMs` (default 100), letting the fibers run
 * after each, so that timeouts started along the way (during a rollback, say) fire too.
 */
export const advance = (totalMs: number, stepMs = 100) =>
  Effect.forEach(Array.from({ length: Math.ceil(totalMs / stepMs) }), () =>
    TestClock.adjust(Duration.millis(stepMs)).pipe(Effect.zipRight(Effect.yieldNow())), { discard: true })

/** Waits (in fiber yields, not time) until the outside call `operation` has been made `times` times in all. */
export const untilCalled = (operation: string, times = 1) =>
  calls.pipe(
    Effect.repeat({ until: (made) => made.filter((call) => call === operation).length >= times }),
    Effect.zipLeft(Effect.yieldNow())
  )
