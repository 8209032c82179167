import { Command, FileSystem, HttpClient, HttpClientRequest, Path } from "@effect/platform"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Chunk, Context, Data, Duration, Effect, Layer, Metric, Option, Schedule, Schema, Stream } from "effect"
import { makeGroupCommit } from "../lib/GroupCommit.ts"
import { nginxReloadBatchSize, nginxReloadsTotal } from "../telemetry/Metrics.ts"
import { AllocationId, OrganizationId, orgHostname, parseOrgLabel, type Upstream } from "../domain/ids.ts"
import { NginxConfig, Settings } from "../config.ts"
import { EDGE_FILE, PROBE_PATH, PROBE_SECRET_HEADER, renderMainConfig, renderRoute, routeAllocation, routeFileName } from "./config.ts"
import { EdgeLock } from "./Edge.ts"
import * as crypto from "node:crypto"
import { awaitOldWorkersClosed, siblingWorkers } from "./workers.ts"

export class NginxError extends Data.TaggedError("NginxError")<{
  readonly operation: "install" | "write" | "remove" | "reload" | "probe" | "list" | "lock"
  readonly reason: string
  readonly cause?: unknown
  /** Known to have changed nothing (nginx refused the configuration before any signal, a write that never landed). */
  readonly noEffect?: boolean
}> {
  override get message() {
    return `nginx ${this.operation}: ${this.reason}`
  }
}

/**
 * The service's corner of nginx: its http-context file, one route file per org, reloads, and the
 * probe that proves what nginx serves. Files it does not own are never touched.
 */
export interface RouteFile {
  readonly organizationId: OrganizationId
  readonly allocationId: AllocationId
}

/**
 * The nginx a NGINX_CONF_DIR belongs to, from `.gateway-allocator-edge.json` in it (made by the
 * first process that uses the directory): its id, recorded in Postgres so that every replica
 * must use the same one, and the probe secret written into `gateway-allocator.conf`.
 */
export interface Edge {
  readonly id: string
  readonly confDir: string
}

export class Nginx extends Context.Tag("Nginx")<Nginx, {
  readonly edge: Edge
  /** Writes `gateway-allocator.conf`, creates `routes/` and reloads. Run once at start-up. */
  readonly install: Effect.Effect<void, NginxError>
  /** Writes the org's route file atomically (temp file + rename). */
  readonly writeRoute: (route: {
    readonly organizationId: OrganizationId
    readonly allocationId: AllocationId
    readonly upstream: Upstream
  }) => Effect.Effect<void, NginxError>
  /**
   * Removes the org's route file if it names `allocationId` (compare-and-delete): an old
   * allocation's late undo never removes a newer allocation's route. Says what it found: the
   * allocation's file (removed), none, or another allocation's (left alone).
   */
  readonly removeRoute: (
    organizationId: OrganizationId,
    allocationId: AllocationId
  ) => Effect.Effect<"removed" | "absent" | "other", NginxError>
  /**
   * `nginx -s reload`: parses the whole configuration and signals the master, or fails. With
   * NGINX_RELOAD_MODE=coalesce (the default) concurrent callers share reloads (group commit);
   * `each` runs one reload per call.
   */
  readonly reload: Effect.Effect<void, NginxError>
  /**
   * Polls nginx until it serves `allocationId` for the org's hostname, so a reload counts only
   * once the new workers answer. Unbounded: callers set the timeout.
   */
  readonly awaitRoute: (organizationId: OrganizationId, allocationId: AllocationId) => Effect.Effect<void, NginxError>
  /**
   * Polls nginx until it no longer serves `allocationId` for the org's hostname (no route, or a
   * newer allocation's) and no older worker generation still accepts connections.
   */
  readonly awaitUnrouted: (organizationId: OrganizationId, allocationId: AllocationId) => Effect.Effect<void, NginxError>
  /** One probe: the allocation nginx serves for the org's hostname right now, or null. */
  readonly probeRoute: (organizationId: OrganizationId) => Effect.Effect<AllocationId | null, NginxError>
  /** The route files in `routes/`: each org's, and the allocation it names. */
  readonly listRoutes: Effect.Effect<ReadonlyArray<RouteFile>, NginxError>
}>() {}

export const NginxLive = Layer.scoped(
  Nginx,
  Effect.gen(function*() {
    const config = yield* NginxConfig
    const { domain, edgeUrl, limits, nginxListen } = yield* Settings
    const edgeLock = yield* EdgeLock
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const executor = yield* Effect.context<NodeContext.NodeContext>()
    const http = yield* HttpClient.HttpClient
    const confDir = path.resolve(config.confDir)
    const routesDir = path.join(confDir, "routes")
    const probeUrl = edgeUrl + PROBE_PATH
    const callTimeout = Duration.millis(limits.outsideCallMs)

    const fail = (operation: NginxError["operation"], noEffect = false) => (cause: { readonly message: string }) =>
      new NginxError({ operation, reason: cause.message, cause, noEffect })

    const edgeFile = path.join(confDir, EDGE_FILE)
    const EdgeFile = Schema.parseJson(Schema.Struct({ id: Schema.String, probeSecret: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{32,}$/)) }))
    const { id: edgeId, probeSecret } = yield* Effect.gen(function*() {
      yield* fs.makeDirectory(confDir, { recursive: true })
      const fresh = { id: crypto.randomUUID(), probeSecret: crypto.randomBytes(24).toString("hex") }
      // Exclusive create: of replicas starting together on a new directory, one writes it.
      yield* fs.writeFileString(edgeFile, JSON.stringify(fresh), { flag: "wx", mode: 0o600 }).pipe(
        Effect.catchIf((error) => error._tag === "SystemError" && error.reason === "AlreadyExists", () => Effect.void)
      )
      return yield* Effect.flatMap(fs.readFileString(edgeFile), Schema.decodeUnknown(EdgeFile))
    }).pipe(Effect.mapError(fail("install")))
    const edge: Edge = { id: edgeId, confDir }
    const underEdgeLock = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      edgeLock.withLock(edgeId, effect, (reason) => new NginxError({ operation: "lock", reason, noEffect: true }))

    /** Temp file + rename: nginx sees the old file or the new one. A failure changed nothing. */
    const writeAtomically = (file: string, content: string) =>
      Effect.gen(function*() {
        // The temp name does not end in .conf, so a concurrent reload never includes it.
        const temp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`)
        yield* fs.writeFileString(temp, content, { mode: 0o644 })
        yield* fs.rename(temp, file).pipe(Effect.tapError(() => fs.remove(temp).pipe(Effect.ignore)))
      })

    const signalReload = Effect.gen(function*() {
      const args = ["-s", "reload", ...Option.match(config.mainConf, { onNone: () => [], onSome: (c) => ["-c", c] })]
      const result = yield* Effect.scoped(
        Effect.gen(function*() {
          const process = yield* Command.start(Command.make(config.bin, ...args))
          const [exitCode, stderr] = yield* Effect.all(
            [process.exitCode, process.stderr.pipe(Stream.decodeText(), Stream.runCollect)],
            { concurrency: 2 }
          )
          return { exitCode, stderr: Chunk.join(stderr, "").trim() }
        })
      ).pipe(
        Effect.provide(executor),
        Effect.mapError(fail("reload")),
        Effect.timeoutFail({
          duration: callTimeout,
          onTimeout: () => new NginxError({ operation: "reload", reason: `nginx -s reload did not finish within ${Duration.format(callTimeout)}` })
        })
      )
      // `nginx -s reload` tests the configuration first: refused, no signal was sent.
      if (result.exitCode !== 0) {
        return yield* new NginxError({
          operation: "reload",
          reason: `exit ${result.exitCode}: ${lastLines(result.stderr)}`,
          noEffect: true
        })
      }
    })

    const masterRefused = new NginxError({
      operation: "reload",
      reason: "the nginx master did not start workers with the new configuration (see nginx's error log)"
    })

    /**
     * `nginx -s reload` parses the configuration and signals the master, which then parses it
     * again on its own. A route file removed during that second parse makes the master refuse the
     * whole configuration (ENOENT on a file its glob had listed). So a reload counts as done only
     * once a worker the master started after the signal answers, and route files are removed only
     * between reloads (under `reloadLock`).
     */
    const reloadOnce = Effect.gen(function*() {
      const answeredBy = probe(NOBODY).pipe(Effect.map((body) => parseProbe(body).pid))
      // The workers before the signal: the master forks new ones only when it loads a config.
      const before = yield* answeredBy.pipe(
        Effect.flatMap(siblingWorkers),
        Effect.either,
        Effect.provideService(FileSystem.FileSystem, fs)
      )
      yield* signalReload
      if (before._tag === "Left") {
        // Nothing answered before (nginx had no server block of ours yet), or /proc cannot tell:
        // wait for any answer, then out nginx's own hand-over time.
        return yield* answeredBy.pipe(
          Effect.retry(probeSchedule),
          Effect.zipRight(Effect.sleep(Duration.millis(150))),
          Effect.timeoutFail({ duration: callTimeout, onTimeout: () => masterRefused })
        )
      }
      yield* answeredBy.pipe(
        Effect.filterOrFail(
          (pid) => !before.right.has(pid),
          () => new NginxError({ operation: "reload", reason: "a worker of the previous configuration answered" })
        ),
        Effect.retry(probeSchedule),
        Effect.timeoutFail({ duration: callTimeout, onTimeout: () => masterRefused })
      )
    }).pipe(
      underEdgeLock,
      Effect.tapBoth({
        onFailure: () => Metric.update(nginxReloadsTotal.pipe(Metric.tagged("outcome", "failed")), 1),
        onSuccess: () => Metric.update(nginxReloadsTotal.pipe(Metric.tagged("outcome", "ok")), 1)
      })
    )

    // One reload at a time (nginx re-parses everything on each, so overlapping ones only add
    // work), and no route file removed while one runs.
    const reloadLock = yield* Effect.makeSemaphore(1)

    /**
     * Group commit: a request joins the pending batch, or opens one whose reload starts as soon
     * as the running reload (if any) ends. Every file written before a request joined is on disk
     * when its batch's reload parses the configuration, and every member gets the batch's result.
     */
    const reloadCoalesced = yield* makeGroupCommit<void, NginxError>({
      flush: (requests) =>
        reloadOnce.pipe(
          Effect.ensuring(Metric.update(nginxReloadBatchSize, requests.length)),
          Effect.withSpan("Nginx.reloadBatch", { attributes: { "nginx.batch_size": requests.length } })
        ),
      onInterrupt: () => new NginxError({ operation: "reload", reason: "interrupted: shutting down" }),
      lock: reloadLock
    })

    const reload = (config.reloadMode === "each" ? reloadLock.withPermits(1)(reloadOnce) : reloadCoalesced(undefined)).pipe(
      Effect.withSpan("Nginx.reload", { attributes: { "nginx.reload_mode": config.reloadMode } })
    )

    /** The allocation a route file names; none when the file is missing or unreadable. */
    const readRoute = (file: string) =>
      fs.readFileString(file).pipe(
        Effect.map((content) => Option.fromNullable(routeAllocation(content))),
        Effect.flatMap(Option.match({
          onNone: () => Effect.succeed(Option.none<AllocationId>()),
          onSome: (id) => Effect.map(Schema.decodeUnknown(AllocationId)(id), Option.some)
        })),
        Effect.catchIf(
          (error) => error._tag === "SystemError" && error.reason === "NotFound",
          () => Effect.succeed(Option.none<AllocationId>())
        )
      )

    // An org's route file is written and compare-and-deleted under its lock: one of a fixed set,
    // picked by the org's id (bounded, and two orgs rarely share one).
    const routeLocks = yield* Effect.forEach(Array.from({ length: 64 }), () => Effect.makeSemaphore(1))
    const routeLock = (organizationId: OrganizationId) => {
      const index = Number.parseInt(organizationId.slice(0, 8), 16) % routeLocks.length
      const lock = routeLocks[index] ?? routeLocks[0]
      return lock === undefined ? <A, E, R>(effect: Effect.Effect<A, E, R>) => effect : lock.withPermits(1)
    }

    /** Probes until `accept` holds of what nginx serves, then waits out the older workers. */
    const awaitProbe = (organizationId: OrganizationId, accept: (served: string) => boolean) =>
      Effect.gen(function*() {
        const answeredBy = yield* probe(organizationId).pipe(
          Effect.map(parseProbe),
          Effect.filterOrFail(
            (answer) => accept(answer.allocation),
            (answer) =>
              new NginxError({
                operation: "probe",
                reason: `nginx serves ${answer.allocation === "" ? "no route" : `allocation ${answer.allocation}`}`
              })
          ),
          Effect.retry(probeSchedule)
        )
        // A worker of the new generation answered; the old one may still accept for a moment.
        yield* awaitOldWorkersClosed(answeredBy.pid).pipe(Effect.provideService(FileSystem.FileSystem, fs))
      })

    const probeTimeout = Duration.min(PROBE_TIMEOUT, callTimeout)
    const probe = (organizationId: OrganizationId): Effect.Effect<string, NginxError> =>
      http.execute(
        HttpClientRequest.get(probeUrl).pipe(
          HttpClientRequest.setHeaders({
            host: orgHostname(organizationId, domain),
            connection: "close",
            [PROBE_SECRET_HEADER]: probeSecret
          })
        )
      ).pipe(
        Effect.mapError((cause) => new NginxError({ operation: "probe", reason: cause.message, cause })),
        Effect.flatMap((response) =>
          response.status === 200
            ? Effect.mapError(response.text, (cause) => new NginxError({ operation: "probe", reason: cause.message, cause }))
            : Effect.fail(new NginxError({ operation: "probe", reason: `HTTP ${response.status}` }))
        ),
        Effect.timeoutFail({
          duration: probeTimeout,
          onTimeout: () => new NginxError({ operation: "probe", reason: `no answer within ${Duration.format(probeTimeout)}` })
        })
      )

    // New workers take a few milliseconds to answer after the signal: poll fast, then back off.
    // (2, 3, 4.5, ... ms, then every 10 ms: the route goes live ~15-50 ms after the signal, and a
    // coarse schedule would add most of a step to every start.)
    const probeSchedule = Schedule.exponential(Duration.millis(2), 1.5).pipe(
      Schedule.either(Schedule.spaced(Duration.millis(10)))
    )

    return Nginx.of({
      edge,
      install: Effect.gen(function*() {
        yield* fs.makeDirectory(routesDir, { recursive: true })
        yield* writeAtomically(
          path.join(confDir, "gateway-allocator.conf"),
          renderMainConfig({ confDir, domain, listen: nginxListen, probeSecret })
        )
      }).pipe(
        Effect.mapError(fail("install")),
        Effect.zipRight(reload),
        Effect.withSpan("Nginx.install")
      ),
      writeRoute: Effect.fn("Nginx.writeRoute")(function*(route) {
        yield* routeLock(route.organizationId)(writeAtomically(
          path.join(routesDir, routeFileName(route.organizationId)),
          renderRoute({ ...route, domain })
        )).pipe(Effect.mapError(fail("write", true)))
      }),
      removeRoute: Effect.fn("Nginx.removeRoute")(function*(organizationId, allocationId) {
        const file = path.join(routesDir, routeFileName(organizationId))
        // Read and removed under the org's lock (no write of a newer route in between), and
        // between reloads (see `reloadOnce`).
        return yield* Effect.gen(function*() {
          const named = yield* readRoute(file)
          if (Option.isNone(named)) return "absent" as const
          if (named.value !== allocationId) return "other" as const
          yield* fs.remove(file)
          return "removed" as const
        }).pipe(
          Effect.mapError(fail("remove")),
          underEdgeLock,
          reloadLock.withPermits(1),
          routeLock(organizationId)
        )
      }),
      reload,
      awaitRoute: Effect.fn("Nginx.awaitRoute")(function*(organizationId, allocationId) {
        yield* awaitProbe(organizationId, (served) => served === allocationId)
      }),
      awaitUnrouted: Effect.fn("Nginx.awaitUnrouted")(function*(organizationId, allocationId) {
        yield* awaitProbe(organizationId, (served) => served !== allocationId)
      }),
      probeRoute: (organizationId) =>
        probe(organizationId).pipe(
          Effect.flatMap((body) => {
            const { allocation } = parseProbe(body)
            return allocation === ""
              ? Effect.succeed(null)
              : Schema.decodeUnknown(AllocationId)(allocation).pipe(
                Effect.mapError((cause) =>
                  new NginxError({ operation: "probe", reason: `unreadable answer: ${allocation.slice(0, 80)}`, cause })
                )
              )
          }),
          Effect.withSpan("Nginx.probeRoute")
        ),
      listRoutes: fs.readDirectory(routesDir).pipe(
        Effect.flatMap((files) =>
          Effect.forEach(files, (file) => {
            const organizationId = file.endsWith(".conf") ? parseOrgLabel(file.slice(0, -".conf".length)) : undefined
            if (organizationId === undefined) return Effect.succeed([])
            return Effect.map(readRoute(path.join(routesDir, file)), Option.match({
              onNone: (): Array<RouteFile> => [],
              onSome: (allocationId) => [{ organizationId, allocationId }]
            }))
          }, { concurrency: 16 })
        ),
        Effect.map((routes) => routes.flat()),
        Effect.mapError(fail("list"))
      )
    })
  })
).pipe(Layer.provide(Layer.merge(NodeContext.layer, NodeHttpClient.layer)))

/** One probe's bound: nginx answers it itself, in microseconds, unless it is stalled. */
const PROBE_TIMEOUT = Duration.seconds(2)

/** A hostname no org has: its probe only says which worker answered. */
const NOBODY = OrganizationId.make("00000000-0000-0000-0000-000000000000")

/** The probe answers "{allocation id} {worker pid}"; the id is empty when no route matches. */
const parseProbe = (body: string) => {
  const [allocation = "", pid = "0"] = body.split(" ")
  return { allocation: allocation.trim(), pid: Number(pid) }
}

const lastLines = (text: string) => text.split("\n").slice(-3).join(" | ") || "no output"
