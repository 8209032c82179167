import { Context, Data, type Effect, type Option } from "effect"
import type { AllocationId, Generation, OrganizationId, Upstream } from "../domain/ids.ts"
import { type ChangedNothingMarker, ChangedNothingTypeId } from "../domain/changedNothing.ts"

export class NginxError extends Data.TaggedError("NginxError")<{
  readonly operation: "install" | "write" | "remove" | "reload" | "probe" | "list" | "lock" | "table"
  readonly reason: string
  readonly cause?: unknown
  /** Known to have changed nothing (nginx refused the configuration before any signal, a write refused or never landed). */
  readonly noEffect?: boolean
}> implements ChangedNothingMarker {
  get [ChangedNothingTypeId]() {
    return this.noEffect === true
  }
  override get message() {
    return `nginx ${this.operation}: ${this.reason}`
  }
}

/**
 * lua: the org's route vanished after its write returned (a write is live when it returns, so
 * nothing of this allocation's can be missing unless nginx restarted and its table came back
 * empty). Its owner may write it again, fenced like any write.
 */
export class RouteLost extends Data.TaggedError("RouteLost")<{
  readonly organizationId: OrganizationId
  readonly allocationId: AllocationId
}> {
  override get message() {
    return `nginx serves no route for org ${this.organizationId} any more (restarted since the route was written?)`
  }
}

/** What a removal names: the org, and the allocation (and its generation) whose route it removes. */
export interface RouteKey {
  readonly organizationId: OrganizationId
  readonly allocationId: AllocationId
  readonly generation: Generation
}

/** One org's route: its allocation's upstream. */
export interface Route extends RouteKey {
  readonly upstream: Upstream
}

/**
 * A route as nginx holds it (`listRoutes`): the upstream is its text exactly as nginx routes to
 * it, compared with Postgres as it is (never normalised, never refused for its spelling).
 */
export interface ListedRoute extends RouteKey {
  readonly upstream: string
}

export interface WriteOptions {
  /**
   * lua: the caller holds the allocation active in Postgres while it writes (drift repair), so
   * the write replaces whatever entry the org holds (another upstream, a greater generation,
   * another allocation's id: none can be a live allocation's then). A removal's fence still
   * refuses it. reload: every write replaces the org's file anyway.
   */
  readonly restore?: boolean
}

/**
 * The nginx a NGINX_CONF_DIR belongs to, from `.gateway-allocator-edge.json` in it (made by the
 * first process that uses the directory): its id, recorded in Postgres so that every replica
 * must use the same one, and the secret written into `gateway-allocator.conf`.
 */
export interface Edge {
  readonly id: string
  readonly confDir: string
}

/** lua mode: the route table's boot id (new after every nginx restart) and whether every route was pushed into it. */
export interface TableState {
  readonly bootId: string
  readonly ready: boolean
}

/**
 * The service's corner of nginx: its http-context file, each org's route, and the probe that
 * proves what nginx serves. Two implementations (NGINX_ROUTING): `lua`, routes in nginx's shared
 * memory written through a route API, live as soon as a write returns; `reload`, one route file
 * per org applied by `nginx -s reload`. Nothing the service does not own is touched.
 */
export class Nginx extends Context.Tag("Nginx")<Nginx, {
  readonly edge: Edge
  readonly routing: "lua" | "reload"
  /** Writes `gateway-allocator.conf` and makes nginx run it. Run once at start-up. */
  readonly install: Effect.Effect<void, NginxError>
  /**
   * Writes the org's route. lua: refused (noEffect) when the table holds a newer generation for
   * the org (unless `restore`), or a fence of this one, or when the write reaches nginx after
   * its deadline; a full table is an error, never an eviction.
   */
  readonly writeRoute: (route: Route, options?: WriteOptions) => Effect.Effect<void, NginxError>
  /**
   * Removes the org's route if it is this allocation's (compare-and-delete): an old allocation's
   * late undo never removes a newer allocation's route. Says what it found: the allocation's
   * route (removed), none, or another allocation's (left alone). lua: it fences late writes of
   * this allocation (and older ones) first, and fails, removing nothing, when it cannot.
   */
  readonly removeRoute: (route: RouteKey) => Effect.Effect<"removed" | "absent" | "other", NginxError>
  /**
   * Makes written and removed routes take effect. reload: `nginx -s reload` (coalesced or each,
   * NGINX_RELOAD_MODE); lua: nothing to do, a write is live when it returns.
   */
  readonly apply: Effect.Effect<void, NginxError>
  /**
   * Probes until nginx serves `allocationId` for the org's hostname. Unbounded: callers set the
   * timeout. lua: fails at once with RouteLost when nginx serves no route for the org at all.
   */
  readonly awaitRoute: (organizationId: OrganizationId, allocationId: AllocationId) => Effect.Effect<void, NginxError | RouteLost>
  /** Probes until nginx no longer serves `allocationId` for the org's hostname (and, reload mode, no older worker generation accepts). */
  readonly awaitUnrouted: (organizationId: OrganizationId, allocationId: AllocationId) => Effect.Effect<void, NginxError>
  /** One probe: the allocation nginx serves for the org's hostname right now, or null. */
  readonly probeRoute: (organizationId: OrganizationId) => Effect.Effect<AllocationId | null, NginxError>
  /** Every route the service has given nginx: each org's upstream, and the allocation (and generation) it names. */
  readonly listRoutes: Effect.Effect<ReadonlyArray<ListedRoute>, NginxError>
  /** lua: the route table's state; reload: none (route files survive nginx restarts). */
  readonly tableState: Effect.Effect<Option.Option<TableState>, NginxError>
  /**
   * lua: puts every route (each fenced like `writeRoute`) and marks the table ready for `bootId`;
   * refused when nginx restarted again meanwhile. reload: nothing to do.
   */
  readonly restoreAll: (bootId: string, routes: ReadonlyArray<Route>) => Effect.Effect<void, NginxError>
}>() {}
