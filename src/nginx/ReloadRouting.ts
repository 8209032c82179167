import { FileSystem } from "@effect/platform"
import { Duration, Effect, Either, Metric, Option, Schedule, Schema } from "effect"
import { AllocationId, Generation, OrganizationId, parseOrgLabel } from "../domain/ids.ts"
import { makeGroupCommit, makeGroupCommitPerMember } from "../lib/GroupCommit.ts"
import { nginxReloadBatchSize, nginxReloadsTotal } from "../telemetry/Metrics.ts"
import { renderMainConfig, renderRoute, routeFileName, routeOf } from "./config.ts"
import type { EdgeKit } from "./EdgeKit.ts"
import { type EdgeRoutes, type ListedRoute, NginxError, type RouteKey, singleEdge } from "./Nginx.ts"
import { awaitOldWorkersClosed, siblingWorkers } from "./workers.ts"

/**
 * NGINX_ROUTING=reload, for any nginx: one route file per org in `routes/` (a `map` entry naming
 * the allocation), applied by `nginx -s reload`; a change counts once no worker of an older
 * generation accepts connections.
 */
export const makeReloadRouting = (kit: EdgeKit) =>
  Effect.gen(function*() {
    const { config, confDir, domain, fs, path, fail, underEdgeLock, writeAtomically, signalReload, probe, probeUntil } = kit
    const routesDir = path.join(confDir, "routes")
    const callTimeout = kit.callTimeout

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
      const answeredBy = probe(NOBODY).pipe(Effect.map((answer) => answer.pid))
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

    /** The allocation (and generation) a route file names; none when the file is missing or unreadable. */
    const readRoute = (file: string) =>
      fs.readFileString(file).pipe(
        Effect.map((content) => Option.fromNullable(routeOf(content))),
        Effect.flatMap(Option.match({
          onNone: () => Effect.succeed(Option.none<NamedRoute>()),
          onSome: (named) => Effect.map(Schema.decodeUnknown(NamedRoute)(named), Option.some)
        })),
        Effect.catchIf(
          (error) => error._tag === "SystemError" && error.reason === "NotFound",
          () => Effect.succeed(Option.none<NamedRoute>())
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

    const routeFile = (organizationId: OrganizationId) => path.join(routesDir, routeFileName(organizationId))

    /** Compare-and-delete of one route file, under its org's lock (no write of a newer route in between). */
    const removeOne = ({ allocationId, organizationId }: RouteKey) =>
      Effect.gen(function*() {
        const file = routeFile(organizationId)
        const named = yield* readRoute(file)
        if (Option.isNone(named)) return "absent" as const
        if (named.value.allocationId !== allocationId) return "other" as const
        yield* fs.remove(file)
        return "removed" as const
      }).pipe(Effect.mapError(fail("remove")), routeLock(organizationId))

    /**
     * Removals, grouped like reloads: the removals waiting when the reload lock comes free go
     * together, under the edge lock taken once (route files are removed only between reloads, see
     * `reloadOnce`), each answered with its own outcome. One lock turn and one edge lock per
     * removal made 64 concurrent stops queue behind each other and the reloads between them, and
     * the last ones waited out their undo timeout (30 s in the benchmark).
     */
    const removeCoalesced = yield* makeGroupCommitPerMember<RouteKey, "removed" | "absent" | "other", NginxError>({
      flush: (routes) => underEdgeLock(Effect.forEach(routes, (route) => Effect.either(removeOne(route)))),
      onInterrupt: () => new NginxError({ operation: "remove", reason: "interrupted: shutting down" }),
      lock: reloadLock
    })

    /** Probes until `accept` holds of what nginx serves, then waits out the older workers. */
    const awaitProbe = (organizationId: OrganizationId, accept: (served: string) => boolean) =>
      Effect.gen(function*() {
        const answeredBy = yield* probeUntil(organizationId, accept).pipe(Effect.retry(probeSchedule))
        // A worker of the new generation answered; the old one may still accept for a moment.
        yield* awaitOldWorkersClosed(answeredBy.pid).pipe(Effect.provideService(FileSystem.FileSystem, fs))
      })

    /**
     * The whole route a file names, for drift repair to compare with Postgres: its allocation and
     * generation, and the upstream of its line `.org-{uuid}.{domain} "{upstream} {allocation}";`.
     */
    const readListedRoute = (file: string) =>
      fs.readFileString(file).pipe(
        Effect.map((content) => {
          const named = routeOf(content)
          const upstream = /"(\S+) [0-9a-f-]{36}";\s*$/.exec(content)?.[1]
          return named === undefined || upstream === undefined ? Option.none() : Option.some({ ...named, upstream })
        }),
        Effect.flatMap(Option.match({
          onNone: () => Effect.succeed(Option.none<FileRoute>()),
          onSome: (listed) => Effect.map(Schema.decodeUnknown(FileRoute)(listed), Option.some)
        })),
        Effect.catchIf(
          (error) => error._tag === "SystemError" && error.reason === "NotFound",
          () => Effect.succeed(Option.none<FileRoute>())
        )
      )

    const install = Effect.gen(function*() {
        const tls = yield* kit.currentTls
        yield* Effect.gen(function*() {
          yield* fs.makeDirectory(routesDir, { recursive: true })
          yield* writeAtomically(
            path.join(confDir, "gateway-allocator.conf"),
            renderMainConfig({ confDir, domain, listen: kit.listen, probeSecret: kit.secret, ...tls })
          )
        }).pipe(Effect.mapError(fail("install")))
      }).pipe(
        Effect.zipRight(reload),
        Effect.withSpan("Nginx.install")
      )

    const routes: EdgeRoutes = {
      edgeId: kit.edge.id,
      name: "local",
      writeRoute: Effect.fn("Nginx.writeRoute")(function*(route) {
        yield* routeLock(route.organizationId)(writeAtomically(
          routeFile(route.organizationId),
          renderRoute({ ...route, domain })
        )).pipe(Effect.mapError(fail("write", true)))
      }),
      removeRoute: Effect.fn("Nginx.removeRoute")(function*(route: RouteKey) {
        // No file, or another allocation's: nothing of this allocation's to remove, and only its
        // owner (the caller) could write it again. Answered without waiting for the locks.
        const named = yield* readRoute(routeFile(route.organizationId)).pipe(Effect.mapError(fail("remove")))
        if (Option.isNone(named)) return "absent" as const
        if (named.value.allocationId !== route.allocationId) return "other" as const
        return yield* removeCoalesced(route)
      }),
      awaitServed: Effect.fn("Nginx.awaitServed")(function*({ allocationId, organizationId }: RouteKey) {
        yield* reload
        yield* awaitProbe(organizationId, (served) => served === allocationId)
      }),
      awaitWithdrawn: Effect.fn("Nginx.awaitWithdrawn")(function*({ allocationId, organizationId }: RouteKey) {
        const reloaded = yield* Effect.either(reload)
        if (Either.isRight(reloaded)) {
          yield* awaitProbe(organizationId, (served) => served !== allocationId)
          return { _tag: "gone" } as const
        }
        // nginx refused its configuration: the one it runs may never have had the route.
        if ((yield* kit.probeRoute(organizationId)) === allocationId) return yield* reloaded.left
        return { _tag: "notApplied", reason: reloaded.left.reason } as const
      }),
      probeRoute: kit.probeRoute,
      listRoutes: fs.readDirectory(routesDir).pipe(
        Effect.flatMap((files) =>
          Effect.forEach(files, (file) => {
            const organizationId = file.endsWith(".conf") ? parseOrgLabel(file.slice(0, -".conf".length)) : undefined
            if (organizationId === undefined) return Effect.succeed([])
            return Effect.map(readListedRoute(path.join(routesDir, file)), Option.match({
              onNone: (): Array<ListedRoute> => [],
              onSome: (listed) => [{ organizationId, ...listed }]
            }))
          }, { concurrency: 16 })
        ),
        Effect.map((routes) => routes.flat()),
        Effect.mapError(fail("list"))
      ),
      tableState: Effect.succeedNone,
      restoreAll: () => Effect.void,
      heartbeat: () => Effect.void
    }
    return singleEdge(kit.edge, install, routes)
  })

/** What a route file names: its allocation and generation. */
const NamedRoute = Schema.Struct({ allocationId: AllocationId, generation: Generation })
type NamedRoute = typeof NamedRoute.Type

/** What a route file says in full: its allocation, generation and upstream (its text, as nginx reads it). */
const FileRoute = Schema.Struct({ allocationId: AllocationId, generation: Generation, upstream: Schema.String })
type FileRoute = typeof FileRoute.Type

// New workers take a few milliseconds to answer after the signal: poll fast, then back off.
// (2, 3, 4.5, ... ms, then every 10 ms: the route goes live ~15-50 ms after the signal, and a
// coarse schedule would add most of a step to every start.)
const probeSchedule = Schedule.exponential(Duration.millis(2), 1.5).pipe(
  Schedule.either(Schedule.spaced(Duration.millis(10)))
)

/** A hostname no org has: its probe only says which worker answered. */
const NOBODY = OrganizationId.make("00000000-0000-0000-0000-000000000000")
