import { SqlClient } from "@effect/sql"
import { Context, Data, Effect, Layer, Schema } from "effect"
import { holdLock, namedLock } from "../db/advisoryLock.ts"
import { EDGE_FILE } from "./config.ts"
import { Nginx } from "./Nginx.ts"

/**
 * Serialises what must not overlap on one nginx across every process that drives it: reloads,
 * and route-file removals (a file removed while the master re-parses for another process's
 * reload makes nginx refuse the whole configuration). Within a process, Nginx serialises them
 * itself; this lock adds the other replicas.
 */
export class EdgeLock extends Context.Tag("EdgeLock")<EdgeLock, {
  /** Runs `effect` while no other process runs one for the same edge; `onLockError` maps a lock failure. */
  readonly withLock: <A, E, R, E2>(
    edgeId: string,
    effect: Effect.Effect<A, E, R>,
    onLockError: (reason: string) => E2
  ) => Effect.Effect<A, E | E2, R>
}>() {}

/** A Postgres advisory lock per edge: every replica shares the database. */
export const EdgeLockPostgres = Layer.effect(
  EdgeLock,
  Effect.map(SqlClient.SqlClient, (sql) =>
    EdgeLock.of({
      withLock: (edgeId, effect, onLockError) =>
        Effect.scoped(
          Effect.zipRight(
            holdLock(namedLock(`edge:${edgeId}`)).pipe(
              Effect.provideService(SqlClient.SqlClient, sql),
              Effect.mapError((error) => onLockError(`cannot take the edge lock: ${error.message}`))
            ),
            effect
          )
        )
    }))
)

/** One process drives the nginx (a test of nginx alone): its own serialisation is enough. */
export const EdgeLockLocal = Layer.succeed(EdgeLock, EdgeLock.of({ withLock: (_edgeId, effect) => effect }))

/** This process's NGINX_CONF_DIR belongs to another nginx than the one the database's allocations are routed by. */
export class EdgeMismatch extends Data.TaggedError("EdgeMismatch")<{
  readonly mine: { readonly id: string; readonly confDir: string }
  readonly recorded: { readonly id: string; readonly confDir: string }
}> {
  override get message() {
    return `NGINX_CONF_DIR ${this.mine.confDir} belongs to edge ${this.mine.id}, but this database's allocations are ` +
      `routed by edge ${this.recorded.id} (NGINX_CONF_DIR ${this.recorded.confDir} when it was recorded). Every replica ` +
      `must share one NGINX_CONF_DIR and one nginx: point NGINX_CONF_DIR at that directory (or, for a new edge, ` +
      `use a new database)` +
      (this.mine.confDir === this.recorded.confDir
        ? `. The path is the same: if its ${EDGE_FILE} was deleted or recreated on this same nginx, write ` +
          `${this.recorded.id} back as the id in it (its probeSecret may stay) and start again`
        : "")
  }
}

const EdgeRow = Schema.Struct({ id: Schema.String, confDir: Schema.String })

/**
 * At start-up: the first process records its edge in Postgres; every later one (a replica, a
 * restart) must have the same, or it refuses to start. A replica on another nginx would prove a
 * removal on its own nginx only, then free a gateway the other nginx still routes to.
 */
export const EdgeCheckLive = Layer.effectDiscard(
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { edge } = yield* Nginx
    yield* sql`insert into edge (id, conf_dir) values (${edge.id}, ${edge.confDir}) on conflict do nothing`
    const rows = yield* sql`select id, conf_dir as "confDir" from edge`
    const recorded = yield* Schema.decodeUnknown(EdgeRow)(rows[0])
    if (recorded.id !== edge.id) return yield* new EdgeMismatch({ mine: edge, recorded })
  })
)
