import { Context, Data, Effect, type Option } from "effect"
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

/**
 * A removal proven (`gone`), or one nginx did not load because it refused its configuration while
 * not serving the allocation anyway (`notApplied`, with why it refused).
 */
export type Withdrawn = { readonly _tag: "gone" } | { readonly _tag: "notApplied"; readonly reason: string }

/** lua mode: the route table's boot id (new after every nginx restart) and whether every route was pushed into it. */
export interface TableState {
  readonly bootId: string
  readonly ready: boolean
}

/**
 * One nginx edge, as the service reaches it: its routes one by one (the same operations as
 * `Nginx`'s, on this edge only), its whole route list, and (lua) its table's state, refill and
 * heartbeat. Drift repair and the edge watcher work edge by edge through it.
 */
export interface EdgeRoutes {
  /** The edge's id (its edge file's for the local edge) and the name operators know it by. */
  readonly edgeId: string
  readonly name: string
  readonly writeRoute: (route: Route, options?: WriteOptions) => Effect.Effect<void, NginxError>
  readonly removeRoute: (route: RouteKey) => Effect.Effect<"removed" | "absent" | "other", NginxError>
  readonly awaitServed: (route: RouteKey) => Effect.Effect<void, NginxError | RouteLost>
  readonly awaitWithdrawn: (route: RouteKey) => Effect.Effect<Withdrawn, NginxError>
  readonly probeRoute: (organizationId: OrganizationId) => Effect.Effect<AllocationId | null, NginxError>
  /** Every route the service has given this edge: each org's upstream, and the allocation (and generation) it names. */
  readonly listRoutes: Effect.Effect<ReadonlyArray<ListedRoute>, NginxError>
  /**
   * Whether the edge lost its routes (lua: its table is not filled for its current boot id, after
   * a restart) and must be given every active one again: the table's state; none when nothing can
   * be lost (reload: route files survive restarts).
   */
  readonly tableState: Effect.Effect<Option.Option<TableState>, NginxError>
  /**
   * Puts every route (each fenced like `writeRoute`) and marks the table ready for `bootId`;
   * refused when nginx restarted again meanwhile. Only asked after `tableState` said so.
   */
  readonly restoreAll: (bootId: string, routes: ReadonlyArray<Route>) => Effect.Effect<void, NginxError>
  /**
   * lua: a replica reached the edge and found it up to date: its own readiness holds for
   * `ttlMs` (`serving` false: draining, not ready). reload: nothing to tell.
   */
  readonly heartbeat: (bootId: string, ttlMs: number, serving: boolean) => Effect.Effect<void, NginxError>
}

/**
 * The service's corner of nginx: its http-context file, each org's route on every edge, and the
 * probe that proves what nginx serves. Two routing modes (NGINX_ROUTING): `lua`, routes in each
 * edge's shared memory written through its route API, live as soon as a write returns (several
 * edges: see src/edges/EdgeSet.ts); `reload`, one route file per org applied by `nginx -s reload`,
 * one edge. Callers never ask which: each operation means the same in both. Nothing the service
 * does not own is touched.
 */
export class Nginx extends Context.Tag("Nginx")<Nginx, {
  /** This replica's own edge (NGINX_CONF_DIR). */
  readonly edge: Edge
  /** Writes `gateway-allocator.conf` and makes nginx run it. Run once at start-up. */
  readonly install: Effect.Effect<void, NginxError>
  /**
   * Writes the org's route. lua: refused (noEffect) when the table holds a newer generation for
   * the org (unless `restore`), or a fence of this one, or when the write reaches nginx after
   * its deadline; a full table is an error, never an eviction. Several edges: written on each
   * that is up to date; one that cannot take it is behind (caught up later), never a failure
   * unless no edge took it.
   */
  readonly writeRoute: (route: Route, options?: WriteOptions) => Effect.Effect<void, NginxError>
  /**
   * Removes the org's route if it is this allocation's (compare-and-delete): an old allocation's
   * late undo never removes a newer allocation's route. Says what it found: the allocation's
   * route (removed), none, or another allocation's (left alone). lua: it fences late writes of
   * this allocation (and older ones) first, and fails, removing nothing, when it cannot.
   * Several edges: an edge that does not acknowledge it owes it (its gateway is held until it
   * has); it fails only when no edge acknowledged.
   */
  readonly removeRoute: (route: RouteKey) => Effect.Effect<"removed" | "absent" | "other", NginxError>
  /**
   * Makes the route written take effect, and probes until nginx serves this allocation for the
   * org's hostname (reload: `nginx -s reload`, coalesced or each, then until no older worker
   * generation accepts; lua: a write is live when it returns, one probe proves it). Unbounded:
   * callers set the timeout. Fails at once with RouteLost when nginx serves no route for the org
   * at all (lua: its table came back empty since the write, nginx restarted).
   */
  readonly awaitServed: (route: RouteKey) => Effect.Effect<void, NginxError | RouteLost>
  /**
   * Makes the route's removal take effect, and probes until nginx no longer serves this
   * allocation for the org's hostname. "gone" once proven; when nginx refuses to load its
   * configuration (reload: say a broken foreign file), the probe decides: nginx's running
   * configuration may never have had the route, and then the answer says why it refused
   * (`notApplied`); if it still serves the allocation, the refusal is the error.
   */
  readonly awaitWithdrawn: (route: RouteKey) => Effect.Effect<Withdrawn, NginxError>
  /** One probe: the allocation nginx serves for the org's hostname right now, or null. */
  readonly probeRoute: (organizationId: OrganizationId) => Effect.Effect<AllocationId | null, NginxError>
  /** The edges every change goes to, now (one in reload mode). */
  readonly edges: Effect.Effect<ReadonlyArray<EdgeRoutes>>
}>() {}

/** The Nginx of one edge alone: reload mode, and a test of nginx by itself. */
export const singleEdge = (edge: Edge, install: Effect.Effect<void, NginxError>, routes: EdgeRoutes): Nginx["Type"] =>
  Nginx.of({
    edge,
    install,
    writeRoute: routes.writeRoute,
    removeRoute: routes.removeRoute,
    awaitServed: routes.awaitServed,
    awaitWithdrawn: routes.awaitWithdrawn,
    probeRoute: routes.probeRoute,
    edges: Effect.succeed([routes])
  })
