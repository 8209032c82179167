// The service, read top-down. Services are `Effect.Service`s; a service with several
// implementations picked by configuration or swapped in tests (Dns, Nginx, Handshake, Notifier)
// is a `Context.Tag` with one layer per implementation. Tests swap layers, never modules.
//
//   AppLive        the HTTP API, logging and tracing, over
//   makeServices   the allocation core: Allocator (starts, stops, shutdown) over Pipeline (one attempt: the
//                  five steps), AllocationQueries (read models), Reconciler and EdgeWatcher, over
//                  Dependencies (readiness), GatewayHealth, StepRunner, Undos and Ownership, over
//   OutsideLive    one layer per outside system: Postgres (pool, journal, runner lease), PowerDNS,
//                  nginx, the gateways' HTTP, the webhook; all over Settings (shared settings).
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { Effect, Layer } from "effect"
import { AllocationQueries } from "./allocation/AllocationQueries.ts"
import { Allocator } from "./allocation/Allocator.ts"
import { Pipeline } from "./allocation/Pipeline.ts"
import { Ownership } from "./allocation/Ownership.ts"
import { Reconciler } from "./allocation/Reconciler.ts"
import { EdgeWatcher } from "./allocation/EdgeWatcher.ts"
import { StepRunner } from "./allocation/StepRunner.ts"
import { Undos } from "./allocation/undos.ts"
import { Settings } from "./config.ts"
import { Database, DatabaseLive } from "./db/Database.ts"
import { DnsLive } from "./dns/Dns.ts"
import { HandshakeLive } from "./handshake/Handshake.ts"
import { EdgeRegistry } from "./edges/EdgeRegistry.ts"
import { EdgesLive } from "./edges/EdgeSet.ts"
import { HttpServerLive } from "./http/server.ts"
import { Journal } from "./journal/Journal.ts"
import { EdgeCheckLive, EdgeLockPostgres } from "./nginx/Edge.ts"
import { watchCertificate } from "./nginx/certificateWatch.ts"
import { Nginx } from "./nginx/Nginx.ts"
import { AllocationStore } from "./allocation/AllocationStore.ts"
import { GatewayStore } from "./pool/GatewayStore.ts"
import { GatewayHealth } from "./pool/GatewayHealth.ts"
import { Runner } from "./pool/Runner.ts"
import { Dependencies } from "./readiness/Dependencies.ts"
import { LoggingLive } from "./telemetry/Logging.ts"
import { NotifierLive } from "./telemetry/Notifier.ts"
import { TracingLive } from "./telemetry/Tracing.ts"

/** The whole service: the HTTP API on top of the services, with logging and tracing as configured. */
export const AppLive = Layer.suspend(() =>
  HttpServerLive.pipe(
    Layer.provide(ServicesLive),
    Layer.provide(TracingLive),
    Layer.provide(LoggingLive)
  )
)

/**
 * The allocation core over the given outside systems. Tests pass theirs (in-memory test layers,
 * or the real stack) and the same wiring runs.
 */
export const makeServices = <ROut, E, R>(outside: Layer.Layer<ROut, E, R>) =>
  Reconciler.Default.pipe(
    Layer.provideMerge(EdgeWatcher.Default),
    Layer.provideMerge(Dependencies.Default),
    Layer.provideMerge(Layer.merge(Allocator.Default, AllocationQueries.Default)),
    Layer.provideMerge(Pipeline.Default),
    Layer.provideMerge(GatewayHealth.Default),
    Layer.provideMerge(Layer.merge(StepRunner.Default, Undos.Default)),
    Layer.provideMerge(Ownership.Default),
    Layer.provideMerge(outside),
    Layer.provideMerge(Settings.Default)
  )

/**
 * Writes the service's nginx file and reloads nginx before the first request is served. A reload
 * nginx refuses (say a broken file of someone else's) does not keep the service down: stops,
 * status and crash recovery still work, and starts fail at `nginx-reload` (and roll back) until
 * nginx accepts its configuration again. A TLS certificate nginx could not serve stops the
 * start-up, naming the file; one renewed on disk later is installed again (watchCertificate).
 */
const NginxInstalled = Layer.scopedDiscard(
  Effect.gen(function*() {
    const nginx = yield* Nginx
    yield* watchCertificate(nginx.install)
    yield* nginx.install.pipe(
      Effect.catchIf(
        (error) => error.operation === "reload",
        (error) => Effect.logError(`nginx refused the start-up reload: ${error.reason}`)
      )
    )
  })
).pipe(Layer.provide(NodeFileSystem.layer))

/** Postgres: the pool, the edges, the journal and this process's runner lease, migrations applied first. */
const PostgresLive = Layer.mergeAll(
  GatewayStore.Default,
  AllocationStore.Default,
  EdgeRegistry.Default,
  Database.Default,
  Journal.Default,
  Runner.Default
).pipe(
  Layer.provideMerge(DatabaseLive)
)

/**
 * nginx: every edge the registry holds (lua) or the local one (reload), reloads serialised
 * across replicas through Postgres, and the local edge checked to be the one every replica of
 * this database drives (EdgeCheckLive refuses to start otherwise).
 */
const EdgeLive = NginxInstalled.pipe(
  Layer.provideMerge(EdgeCheckLive.pipe(Layer.provideMerge(EdgesLive))),
  Layer.provide(EdgeLockPostgres),
  // An edge that begins to owe removals is told to the operator (one Notifier: layers are shared).
  Layer.provide(NotifierLive),
  Layer.provideMerge(PostgresLive)
)

/** The outside systems as configured: Postgres, PowerDNS (or none), nginx, gateways, webhook. */
export const OutsideLive = Layer.mergeAll(PostgresLive, EdgeLive, DnsLive, HandshakeLive, NotifierLive)

/** The allocation core over the configured outside systems, nginx installed. */
export const ServicesLive = makeServices(OutsideLive)
