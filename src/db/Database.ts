import { FileSystem, Path } from "@effect/platform"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { Migrator, SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Option, Redacted } from "effect"
import path from "node:path"
import { DatabaseConfig } from "../config.ts"
import { packageRoot } from "../lib/packageRoot.ts"
import { holdLock, namedLock, tryLock } from "./advisoryLock.ts"
import { DatabaseError } from "./errors.ts"
import { startEmbeddedPostgres } from "./EmbeddedPostgres.ts"

/**
 * Reads `database/NNNN_name.sql` files. The stock `fromFileSystem` loader imports .js/.ts
 * modules; ours are plain SQL, applied as one simple-protocol query each.
 */
export const sqlFileLoader = (directory: string): Migrator.Loader<FileSystem.FileSystem | Path.Path> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const files = yield* fs.readDirectory(directory)
    const migrations: Array<Migrator.ResolvedMigration> = []
    for (const file of files.sort()) {
      const match = /^(\d+)_(.+)\.sql$/.exec(file)
      if (match === null) continue
      const [, id = "", name = ""] = match
      const text = yield* fs.readFileString(path.join(directory, file))
      // The Migrator loads a migration, then runs the effect it loaded.
      const migration = Effect.flatMap(PgClient.PgClient, (sql) => sql.unsafe(text))
      migrations.push([Number(id), name, Effect.succeed(migration)])
    }
    return migrations
  }).pipe(
    Effect.mapError((cause) =>
      new Migrator.MigrationError({ reason: "import-error", message: `cannot read migrations in ${directory}`, cause })
    )
  )

const migrationsDirectory = path.join(packageRoot, "database")

/**
 * Applies `database/*.sql`, once each. Replicas starting together on a fresh database would race
 * to create the Migrator's own table, so the whole run holds a session advisory lock: the second
 * replica waits, then finds everything applied.
 */
export const MigrationsLive = Layer.effectDiscard(
  Effect.scoped(
    Effect.gen(function*() {
      yield* holdLock(namedLock("migrations"))
      yield* Migrator.make({})({ loader: sqlFileLoader(migrationsDirectory), table: "gateway_allocator_migrations" })
    })
  )
).pipe(Layer.provide(NodeContext.layer))

/**
 * Postgres from `DATABASE_URL`, or an embedded PostgreSQL under `DATA_DIR` when it is unset.
 * Migrations are applied before the layer is ready.
 */
export const DatabaseLive = Layer.unwrapScoped(
  Effect.gen(function*() {
    const config = yield* DatabaseConfig
    const resolvedUrl = Option.isSome(config.url)
      ? config.url.value
      : (yield* startEmbeddedPostgres({ dataDir: config.dataDir })).url
    const client = PgClient.layer({
      url: resolvedUrl,
      maxConnections: 20,
      applicationName: "gateway-allocator"
    })
    return MigrationsLive.pipe(Layer.provideMerge(client))
  })
)

/**
 * The database itself, as the service's jobs use it: whether it answers (readiness), and jobs
 * that one replica at a time runs (a session advisory lock named after the job, held while it
 * runs; another replica's attempt meanwhile is skipped, not queued).
 */
export class Database extends Effect.Service<Database>()("Database", {
  effect: Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient

    const ping = Effect.fn("Database.ping")(function*() {
      yield* sql`select 1`
    }, Effect.mapError((cause) => new DatabaseError({ cause })))

    /** Runs `effect` only if no other process runs the same named job (none otherwise). */
    const exclusively = <A, E, R>(job: string, effect: Effect.Effect<A, E, R>) =>
      Effect.scoped(
        Effect.gen(function*() {
          const locked = yield* tryLock(namedLock(`job:${job}`)).pipe(
            Effect.mapError((cause) => new DatabaseError({ cause })),
            Effect.provideService(SqlClient.SqlClient, sql)
          )
          return locked ? Option.some(yield* effect) : Option.none<A>()
        })
      )

    return { ping, exclusively }
  })
}) {}

export const redactedUrl = (url: Redacted.Redacted<string>) => Redacted.value(url).replace(/:[^:@/]*@/, ":***@")
