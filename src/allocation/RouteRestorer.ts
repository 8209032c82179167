import { Duration, Effect, Either, Metric, Option, Ref, Schedule } from "effect"
import { Nginx, type TableState } from "../nginx/Nginx.ts"
import { AllocationStore } from "./AllocationStore.ts"
import { Dependencies } from "../readiness/Dependencies.ts"
import { reconcilerRepairsTotal } from "../telemetry/Metrics.ts"
import { describeCause } from "../lib/describeCause.ts"

/** How often the route table's boot id is read: a restarted nginx gets its routes back within this (plus the push). */
const WATCH_INTERVAL = Duration.millis(250)

/**
 * NGINX_ROUTING=lua: nginx's shared memory survives reloads, not restarts. After a restart the
 * route table is empty and answers 503 for every org (not 404: "retry"); this service notices
 * the new boot id and pushes every active allocation's route back in one request, which marks
 * the table ready. The rows stay held (`FOR SHARE`) while it pushes, so a stop cannot remove a
 * route the push then brings back; the table's generations and fences fence the rest. The
 * fences vanished with the restart too: reading the new boot id (`tableState`, before this push)
 * makes each replica push back the fences it wrote that still matter (see LuaRouting).
 * Nothing to do in reload mode: route files survive a restart. What the watch meets is the
 * edge's readiness (`Dependencies`): an nginx that is gone is told once, not every 250 ms.
 */
export class RouteRestorer extends Effect.Service<RouteRestorer>()("RouteRestorer", {
  scoped: Effect.gen(function*() {
    const nginx = yield* Nginx
    const allocations = yield* AllocationStore
    const dependencies = yield* Dependencies

    // The boot id this process last saw: a new one after that is a restart, worth a warning.
    const lastBoot = yield* Ref.make(Option.none<string>())

    /**
     * What the table's state says: pushes every active route if it is not ready; how many it
     * pushed (none: it was ready, or there is no table to lose: reload mode).
     */
    const restoreIfEmptied = Effect.flatMap(nginx.tableState, Option.match({
      onNone: () => Effect.succeed({ asked: false, pushed: Option.none<number>() }),
      onSome: (state) => Effect.map(restore(state), (pushed) => ({ asked: true, pushed }))
    }))

    /** Pushes every active route into a table that is not ready for its boot id. */
    const restore = ({ bootId, ready }: TableState) =>
      Effect.gen(function*() {
        const restarted = Option.exists(yield* Ref.getAndSet(lastBoot, Option.some(bootId)), (seen) => seen !== bootId)
        if (ready) return Option.none<number>()
        const pushed = yield* allocations.withActiveAllocations((active) =>
          Effect.as(nginx.restoreAll(bootId, active), active.length)
        )
        yield* Metric.update(reconcilerRepairsTotal.pipe(Metric.tagged("kind", "route_table_restored")), 1)
        yield* (restarted ? Effect.logWarning : Effect.logInfo)(
          restarted
            ? `nginx restarted (its route table came back empty): ${pushed} active route(s) pushed back`
            : `nginx's route table was not filled yet (a new nginx, or one restarted while no replica watched): ${pushed} active route(s) pushed`
        ).pipe(Effect.annotateLogs({ boot_id: bootId }))
        return Option.some(pushed)
      }).pipe(Effect.withSpan("RouteRestorer.restore"))

    // Only a table that was asked says the edge is usable; a failure says it is not.
    const watch = restoreIfEmptied.pipe(
      Effect.matchCauseEffect({
        onSuccess: ({ asked }) => asked ? dependencies.report("edge", Either.void) : Effect.void,
        onFailure: (cause) =>
          dependencies.report("edge", Either.left(`could not check or restore nginx's route table: ${describeCause(cause)}`))
      })
    )
    // Once before the service takes requests (an empty table answers 503 for everyone), then on.
    // An nginx that cannot lose its routes (reload mode: route files) answers "nothing to do".
    yield* watch
    yield* watch.pipe(Effect.schedule(Schedule.spaced(WATCH_INTERVAL)), Effect.forkScoped)

    return { restoreIfEmptied }
  })
}) {}
