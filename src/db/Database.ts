import { FileSystem, Path } from "@effect/platform"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { Migrator } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Option, Redacted } from "effect"
import path from "node:path"
import { DatabaseConfig } from "../config.ts"
import { packageRoot } from "../lib/packageRoot.ts"
import { holdLock, namedLock } from "./advisoryLock.ts"
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

export const redactedUrl = (url: Redacted.Redacted<string>) => Redacted.value(url).replace(/:[^:@/]*@/, ":***@")
