import { SqlClient, type SqlError } from "@effect/sql"
import { Data, Effect, type ParseResult, Redacted, Schema } from "effect"
import * as crypto from "node:crypto"
import { holdLock, namedLock } from "../db/advisoryLock.ts"
import { DatabaseError } from "../db/errors.ts"
import { Edge, type EdgeName, type EdgeState, OwedRemoval } from "../domain/edge.ts"
import { type AllocationId, type EdgeId, GatewayId } from "../domain/ids.ts"

export class EdgeNotFound extends Data.TaggedError("EdgeNotFound")<{ readonly edgeId: EdgeId }> {}
export class EdgeNameTaken extends Data.TaggedError("EdgeNameTaken")<{ readonly name: string }> {}
/** Two edges at one route API address would be one nginx counted twice. */
export class EdgeAddressTaken extends Data.TaggedError("EdgeAddressTaken")<{ readonly routeApiUrl: string }> {}
/** The local edge (NGINX_CONF_DIR) registers itself at every start-up: it is not removed through the API. */
export class EdgeIsLocal extends Data.TaggedError("EdgeIsLocal")<{ readonly edgeId: EdgeId }> {}

/** What a replica needs to reach an edge: where, and with which secret. */
export interface EdgeEndpoint {
  readonly edgeId: EdgeId
  readonly name: EdgeName
  readonly routeApiUrl: string
  readonly probeUrl: string
  readonly secret: Redacted.Redacted<string>
  readonly local: boolean
  readonly state: EdgeState
  readonly behind: boolean
  /** The mark a catch-up started from (see `markCaughtUp`). */
  readonly behindMark: number
}

/** Each gateway some edge still owes a removal for, with those edges' names (`holds`). */
export type GatewayHolds = ReadonlyMap<GatewayId, ReadonlyArray<string>>

/** The name the local edge is registered under. */
export const LOCAL_EDGE_NAME = "local"

const edgeColumns = `id as "edgeId", name, route_api_url as "routeApiUrl", probe_url as "probeUrl", local, state, behind,
  boot_id as "bootId", acked_generation::text as "ackedGeneration", acked_at as "ackedAt", last_seen as "lastSeen",
  last_error as "lastError", route_count as "routeCount", created_at as "createdAt"`
const decodeEdges = Schema.decodeUnknown(Schema.Array(Edge))
const EndpointRow = Schema.Struct({
  edgeId: Edge.fields.edgeId,
  name: Edge.fields.name,
  routeApiUrl: Schema.String,
  probeUrl: Schema.String,
  secret: Schema.Redacted(Schema.String),
  local: Schema.Boolean,
  state: Edge.fields.state,
  behind: Schema.Boolean,
  behindMark: Schema.NumberFromString
})
const decodeEndpoints = Schema.decodeUnknown(Schema.Array(EndpointRow))
const decodeOwed = Schema.decodeUnknown(Schema.Array(OwedRemoval))
const decodeHolds = Schema.decodeUnknown(Schema.Array(Schema.Struct({ gatewayId: GatewayId, edges: Schema.Array(Schema.String) })))
const decodeCount = Schema.decodeUnknown(Schema.Array(Schema.Struct({ count: Schema.Number })))

const databaseError = (cause: SqlError.SqlError | ParseResult.ParseError) => new DatabaseError({ cause })

/** A new edge's secret: hex, so it is safe in an nginx file and a header. */
const newSecret = () => crypto.randomBytes(24).toString("hex")

/**
 * The nginx edges in Postgres (lua routing): the registry (add, drain, remove, list), each edge's
 * standing (behind, reached, what it acknowledged), and the removals an edge still owes, which
 * hold their gateways out of every claim (view gateways_claimable) until that edge acknowledged.
 */
export class EdgeRegistry extends Effect.Service<EdgeRegistry>()("EdgeRegistry", {
  effect: Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient

    const list = Effect.fn("EdgeRegistry.list")(function*() {
      return yield* decodeEdges(yield* sql`select ${sql.literal(edgeColumns)} from edges order by local desc, created_at, id`)
    }, Effect.mapError(databaseError))

    const get = Effect.fn("EdgeRegistry.get")(function*(edgeId: EdgeId) {
      const rows = yield* sql`select ${sql.literal(edgeColumns)} from edges where id = ${edgeId}`.pipe(
        Effect.flatMap(decodeEdges),
        Effect.mapError(databaseError)
      )
      const edge = rows[0]
      if (edge === undefined) return yield* new EdgeNotFound({ edgeId })
      return edge
    })

    /** Every edge with what it takes to reach it (its secret included): for the replicas' own use, never an answer. */
    const endpoints = Effect.fn("EdgeRegistry.endpoints")(function*() {
      return yield* decodeEndpoints(
        yield* sql`
          select id as "edgeId", name, route_api_url as "routeApiUrl", probe_url as "probeUrl", secret, local, state,
                 behind, behind_mark::text as "behindMark"
            from edges order by local desc, created_at, id`
      )
    }, Effect.mapError(databaseError))

    /** Registers a remote edge, behind until a replica has filled it; its secret is made here. */
    const add = Effect.fn("EdgeRegistry.add")(function*(edge: { readonly name: EdgeName; readonly routeApiUrl: string; readonly probeUrl: string }) {
      const taken = yield* sql`
        select name = ${edge.name} as "sameName" from edges where name = ${edge.name} or route_api_url = ${edge.routeApiUrl}`.pipe(
        Effect.mapError(databaseError)
      )
      if (taken.length > 0) {
        return yield* taken.some((row) => row["sameName"] === true)
          ? new EdgeNameTaken({ name: edge.name })
          : new EdgeAddressTaken({ routeApiUrl: edge.routeApiUrl })
      }
      const rows = yield* sql`
        insert into edges (id, name, route_api_url, probe_url, secret)
        values (${crypto.randomUUID()}, ${edge.name}, ${edge.routeApiUrl}, ${edge.probeUrl}, ${newSecret()})
        on conflict do nothing
        returning ${sql.literal(edgeColumns)}`.pipe(Effect.flatMap(decodeEdges), Effect.mapError(databaseError))
      const added = rows[0]
      // A concurrent add took the name or the address between the check and the insert.
      if (added === undefined) return yield* new EdgeNameTaken({ name: edge.name })
      return added
    })

    /**
     * The local edge at start-up: its id and secret are its edge file's, its addresses this
     * replica's configuration. Behind until the watcher has checked its table. Replicas sharing
     * one NGINX_CONF_DIR start together: they register one after the other (an advisory lock),
     * since two inserts of one id racing each other trip the name's unique index, which
     * `on conflict (id)` does not arbitrate. (A replica whose edge file is another's never gets
     * here: EdgeCheckLive refused its directory.)
     */
    const registerLocal = Effect.fn("EdgeRegistry.registerLocal")(function*(edge: {
      readonly edgeId: EdgeId
      readonly routeApiUrl: string
      readonly probeUrl: string
      readonly secret: Redacted.Redacted<string>
    }) {
      yield* Effect.scoped(Effect.zipRight(
        holdLock(namedLock("edges:local")).pipe(Effect.provideService(SqlClient.SqlClient, sql)),
        sql`
          insert into edges (id, name, route_api_url, probe_url, secret, local)
          values (${edge.edgeId}, ${LOCAL_EDGE_NAME}, ${edge.routeApiUrl}, ${edge.probeUrl}, ${Redacted.value(edge.secret)}, true)
          on conflict (id) do update
            set route_api_url = excluded.route_api_url, probe_url = excluded.probe_url, secret = excluded.secret,
                updated_at = now()`
      ))
    }, Effect.mapError(databaseError))

    const setState = Effect.fn("EdgeRegistry.setState")(function*(edgeId: EdgeId, state: EdgeState) {
      const rows = yield* sql`
        update edges set state = ${state}, updated_at = now() where id = ${edgeId}
        returning ${sql.literal(edgeColumns)}`.pipe(Effect.flatMap(decodeEdges), Effect.mapError(databaseError))
      const updated = rows[0]
      if (updated === undefined) return yield* new EdgeNotFound({ edgeId })
      return updated
    })

    /**
     * Removes a remote edge from the registry, and with it the removals it owed: the gateways it
     * held return to the pool (the operator says that edge no longer serves anyone). Returns how
     * many removals it owed.
     */
    const remove = Effect.fn("EdgeRegistry.remove")(function*(edgeId: EdgeId) {
      const edge = yield* get(edgeId)
      if (edge.local) return yield* new EdgeIsLocal({ edgeId })
      const owed = yield* sql`
        with owed as (select count(*)::int as count from edge_removals_owed where edge_id = ${edgeId}),
             gone as (delete from edges where id = ${edgeId} and not local returning id)
        select count from owed`.pipe(Effect.flatMap(decodeCount), Effect.mapError(databaseError))
      return owed[0]?.count ?? 0
    })

    /** The edge missed a change (or its table came back empty): it is caught up before it counts again. */
    const markBehind = Effect.fn("EdgeRegistry.markBehind")(function*(edgeId: EdgeId, reason: string) {
      yield* sql`
        update edges set behind = true, behind_mark = behind_mark + 1, last_error = ${reason.slice(0, 500)}, updated_at = now()
         where id = ${edgeId}`
    }, Effect.mapError(databaseError))

    /** A replica reached the edge: its boot id (and how many routes it holds, when it counted them). */
    const markSeen = Effect.fn("EdgeRegistry.markSeen")(function*(edgeId: EdgeId, seen: { readonly bootId: string; readonly routeCount?: number }) {
      yield* sql`
        update edges set last_seen = now(), boot_id = ${seen.bootId}, route_count = coalesce(${seen.routeCount ?? null}, route_count)
         where id = ${edgeId}`
    }, Effect.mapError(databaseError))

    /** Why the last attempt to reach the edge failed (its last_seen stays: it lapses into `unreachable`). */
    const markFailing = Effect.fn("EdgeRegistry.markFailing")(function*(edgeId: EdgeId, reason: string) {
      yield* sql`update edges set last_error = ${reason.slice(0, 500)} where id = ${edgeId}`
    }, Effect.mapError(databaseError))

    /**
     * A catch-up brought the edge up to date as of `fromMark`: it is no longer behind unless it
     * was marked again meanwhile (then the next catch-up covers that too). Whether it cleared.
     */
    const markCaughtUp = Effect.fn("EdgeRegistry.markCaughtUp")(function*(
      edgeId: EdgeId,
      caughtUp: { readonly fromMark: number; readonly bootId: string; readonly routeCount: number }
    ) {
      const rows = yield* sql`
        update edges
           set behind = false, last_seen = now(), boot_id = ${caughtUp.bootId}, route_count = ${caughtUp.routeCount},
               last_error = null, updated_at = now()
         where id = ${edgeId} and behind_mark = ${caughtUp.fromMark}
        returning id`
      return rows.length > 0
    }, Effect.mapError(databaseError))

    /** The greatest generation the edge acknowledged (a route written or removed), if greater than what it had. */
    const acknowledge = Effect.fn("EdgeRegistry.acknowledge")(function*(edgeId: EdgeId, generation: number) {
      yield* sql`
        update edges set acked_generation = ${generation}, acked_at = now()
         where id = ${edgeId} and acked_generation < ${generation}`
    }, Effect.mapError(databaseError))

    /**
     * The edge did not acknowledge this removal: it may still route the org to the allocation's
     * gateway, which no claim takes until the edge has (or is removed from the registry). An edge
     * deleted meanwhile (another replica's registry may lag a second) owes nothing.
     */
    const owe = Effect.fn("EdgeRegistry.owe")(function*(
      edgeId: EdgeId,
      removal: { readonly allocationId: AllocationId; readonly generation: number },
      reason: string
    ) {
      // The debt and the edge's behind mark in one statement: a timeout cannot keep one without the other.
      yield* sql`
        with owed as (
          insert into edge_removals_owed (edge_id, allocation_id, organization_id, generation, gateway_id, reason)
          select e.id, a.id, a.organization_id, ${removal.generation}, a.gateway_id, ${reason.slice(0, 500)}
            from allocations a join edges e on e.id = ${edgeId}
           where a.id = ${removal.allocationId} and a.gateway_id is not null
          on conflict (edge_id, allocation_id) do nothing
          returning edge_id)
        update edges set behind = true, behind_mark = behind_mark + 1, last_error = ${reason.slice(0, 500)}, updated_at = now()
         where id = ${edgeId}`
    }, Effect.mapError(databaseError))

    const owedBy = Effect.fn("EdgeRegistry.owedBy")(function*(edgeId: EdgeId) {
      return yield* decodeOwed(
        yield* sql`
          select edge_id as "edgeId", allocation_id as "allocationId", organization_id as "organizationId",
                 generation::text as generation, gateway_id as "gatewayId", reason, since
            from edge_removals_owed where edge_id = ${edgeId} order by since`
      )
    }, Effect.mapError(databaseError))

    /**
     * The removals the edge owes whose allocation is over (no longer live): their routes are
     * orphans it can remove now, and then their debts are settled. One still live is its owner's
     * to remove first.
     */
    const owedFinished = Effect.fn("EdgeRegistry.owedFinished")(function*(edgeId: EdgeId) {
      return yield* decodeOwed(
        yield* sql`
          select o.edge_id as "edgeId", o.allocation_id as "allocationId", o.organization_id as "organizationId",
                 o.generation::text as generation, o.gateway_id as "gatewayId", o.reason, o.since
            from edge_removals_owed o join allocations a on a.id = o.allocation_id
           where o.edge_id = ${edgeId} and not gateway_allocator_is_live(a.state)
           order by o.since`
      )
    }, Effect.mapError(databaseError))

    /** The edge acknowledged these removals (its catch-up): their gateways are no longer held by it. */
    const settle = Effect.fn("EdgeRegistry.settle")(function*(edgeId: EdgeId, allocationIds: ReadonlyArray<AllocationId>) {
      if (allocationIds.length === 0) return
      yield* sql`delete from edge_removals_owed where edge_id = ${edgeId} and ${sql.in("allocation_id", allocationIds)}`
    }, Effect.mapError(databaseError))

    /** Each gateway some edge still owes a removal for, with those edges' names (each once: an edge may owe two of its allocations). */
    const holds = Effect.fn("EdgeRegistry.holds")(function*() {
      const rows = yield* decodeHolds(
        yield* sql`
          select o.gateway_id as "gatewayId", array_agg(distinct e.name order by e.name) as edges
            from edge_removals_owed o join edges e on e.id = o.edge_id
           group by o.gateway_id`
      )
      return new Map(rows.map((row) => [row.gatewayId, row.edges])) as GatewayHolds
    }, Effect.mapError(databaseError))

    return {
      list,
      get,
      endpoints,
      add,
      registerLocal,
      setState,
      remove,
      markBehind,
      markSeen,
      markFailing,
      markCaughtUp,
      acknowledge,
      owe,
      owedBy,
      owedFinished,
      settle,
      holds
    } as const
  })
}) {}
