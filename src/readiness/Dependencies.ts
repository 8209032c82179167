import { Duration, Effect, Either, Metric, Option, Schedule } from "effect"
import { Dns } from "../dns/Dns.ts"
import { OrganizationId } from "../domain/ids.ts"
import { Nginx } from "../nginx/Nginx.ts"
import { Database } from "../db/Database.ts"
import { dependencyUp } from "../telemetry/Metrics.ts"
import { makeOutageLog } from "../telemetry/Outage.ts"

/** What a start needs to be usable: the database, the DNS provider, and an nginx edge. */
export const dependencies = ["postgres", "powerdns", "edge"] as const
export type Dependency = typeof dependencies[number]

/** A dependency that is not usable, since when, and why (what its last check said). */
export interface NotReady {
  readonly dependency: Dependency
  readonly reason: string
  readonly since: Date
}

/** How often the watcher asks each dependency. */
const CHECK_INTERVAL = Duration.seconds(2)

/** No answer in this time counts as unusable. */
const CHECK_TIMEOUT = Duration.seconds(2)

/** An org id no allocation has: its probe says only whether nginx answers. */
const NOBODY = OrganizationId.make("00000000-0000-0000-0000-000000000000")

/**
 * What the service depends on, and whether each is usable now: asked every 2 s (Postgres
 * `select 1`, PowerDNS's zone without its records, a route probe through nginx), and told by
 * whoever meets a failure on the way (the route-table watcher). Each is an outage log (told when
 * it goes, at most once a minute while it stays away, when it is back, never per failed call),
 * and `gateway_allocator_dependency_up{dependency}` follows it. `GET /readyz` answers from here.
 */
export class Dependencies extends Effect.Service<Dependencies>()("Dependencies", {
  scoped: Effect.gen(function*() {
    const database = yield* Database
    const dns = yield* Dns
    const nginx = yield* Nginx
    const watched = dependencies.filter((dependency) => dependency !== "powerdns" || dns.provider !== "none")
    const logs = new Map(
      yield* Effect.forEach(watched, (dependency) => Effect.map(makeOutageLog(dependency), (log) => [dependency, log] as const))
    )

    /** Records what a dependency's latest check or call said (right: usable; left: why not). */
    const report = (dependency: Dependency, result: Either.Either<void, string>) =>
      Effect.gen(function*() {
        const log = logs.get(dependency)
        if (log === undefined) return
        yield* log.report(result)
        yield* Metric.set(dependencyUp.pipe(Metric.tagged("dependency", dependency)), Either.isRight(result) ? 1 : 0)
      }).pipe(Effect.annotateLogs({ dependency }))

    /** Runs one check, bounded, and reports it. */
    const ask = <E extends { readonly message: string }>(dependency: Dependency, check: Effect.Effect<unknown, E>) =>
      check.pipe(
        Effect.timeoutFail({ duration: CHECK_TIMEOUT, onTimeout: () => ({ message: `no answer within ${Duration.format(CHECK_TIMEOUT)}` }) }),
        Effect.match({ onFailure: (error) => Either.left(error.message), onSuccess: () => Either.void }),
        Effect.flatMap((result) => report(dependency, result))
      )

    const checkAll = Effect.all([
      ask("postgres", database.ping()),
      dns.provider === "none" ? Effect.void : ask("powerdns", dns.check),
      // A route probe through the org server block: nginx answers it itself, for any org.
      ask("edge", nginx.probeRoute(NOBODY))
    ], { concurrency: "unbounded", discard: true })

    // Once before the service takes requests, so /readyz means something from the start.
    yield* checkAll
    yield* checkAll.pipe(Effect.schedule(Schedule.spaced(CHECK_INTERVAL)), Effect.forkScoped)

    /** The dependencies that are not usable now (none: ready). */
    const notReady = Effect.map(
      Effect.forEach([...logs], ([dependency, log]) =>
        Effect.map(log.failing, Option.map((outage): NotReady => ({ dependency, ...outage })))),
      Option.reduceCompact<Array<NotReady>, NotReady>([], (all, item) => [...all, item])
    )

    return { report, notReady }
  })
}) {}
