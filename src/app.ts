import { Effect, Layer } from "effect"
import { Allocator } from "./allocation/Allocator.ts"
import { Reconciler } from "./allocation/Reconciler.ts"
import { Runner } from "./allocation/Runner.ts"
import { Undos } from "./allocation/undos.ts"
import { DatabaseLive } from "./db/Database.ts"
import { DnsLive } from "./dns/Dns.ts"
import { HandshakeLive } from "./handshake/Handshake.ts"
import { HttpServerLive } from "./http/server.ts"
import { Journal } from "./journal/Journal.ts"
import { Nginx, NginxLive } from "./nginx/Nginx.ts"
import { GatewayPool } from "./pool/GatewayPool.ts"
import { RunnerLeaseLive } from "./pool/RunnerLease.ts"
import { LoggingLive } from "./telemetry/Logging.ts"
import { NotifierLive } from "./telemetry/Notifier.ts"
import { TracingLive } from "./telemetry/Tracing.ts"

/**
 * Writes the service's nginx file and reloads nginx before the first request is served. A reload
 * nginx refuses (say a broken file of someone else's) does not keep the service down: stops,
 * status and crash recovery still work, and starts fail at `nginx-reload` (and roll back) until
 * nginx accepts its configuration again.
 */
export const NginxInstalled = Layer.effectDiscard(
  Effect.flatMap(Nginx, (nginx) =>
    nginx.install.pipe(
      Effect.catchIf(
        (error) => error.operation === "reload",
        (error) => Effect.logError(`nginx refused the start-up reload: ${error.reason}`)
      )
    ))
).pipe(Layer.provideMerge(NginxLive))

/**
 * The allocator and the pool, given the outside systems. Tests pass their own `outside` layer
 * (test doubles or the real stack) and the same wiring runs.
 */
export const makeServices = <ROut, E, R>(outside: Layer.Layer<ROut, E, R>) =>
  Reconciler.Default.pipe(
    Layer.provideMerge(Allocator.Default),
    Layer.provideMerge(Undos.Default),
    Layer.provideMerge(Layer.mergeAll(outside, Runner.Default))
  )

/** Postgres-backed pool and journal, and this process's runner lease. */
export const PostgresLive = Layer.mergeAll(GatewayPool.Default, Journal.Default, RunnerLeaseLive).pipe(
  Layer.provideMerge(Layer.merge(DatabaseLive, Runner.Default))
)

/** The outside systems as configured: Postgres, PowerDNS (or none), nginx, HTTP to gateways. */
export const OutsideLive = Layer.mergeAll(PostgresLive, DnsLive, NginxInstalled, HandshakeLive, NotifierLive)

/** Allocator, pool and journal over the configured outside systems, nginx installed. */
export const ServicesLive = makeServices(OutsideLive)

/** The whole service: the HTTP API on top of the services, with logging and tracing as configured. */
export const AppLive = HttpServerLive.pipe(
  Layer.provide(ServicesLive),
  Layer.provide(TracingLive),
  Layer.provide(LoggingLive)
)
