import * as Reactivity from "@effect/experimental/Reactivity"
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { readFileSync } from "node:fs"
import path from "node:path"
import { packageRoot } from "../../src/lib/packageRoot.ts"
import { databaseUrl, dumpSchema, dumpSchemaFile, REGENERATE, SCHEMA_FILE, withFreshDatabase } from "../../scripts/schema.ts"

// database/schema.sql is the schema of a fresh database after every migration, written by
// scripts/schema.ts: it must be what the script writes now (a migration added without
// regenerating it fails here), and it must load into an empty database as that same schema.
const relative = path.relative(packageRoot, SCHEMA_FILE)

const committedFile = () => {
  try {
    return readFileSync(SCHEMA_FILE, "utf8")
  } catch {
    return `(${relative} is missing)`
  }
}

// it.live: the real clock (the embedded Postgres's start polls and times out).
it.live(`${relative} is the migrated schema, as ${REGENERATE} writes it, and loads as that schema`, () =>
  withFreshDatabase((server) =>
    Effect.gen(function*() {
      const generated = yield* dumpSchemaFile
      expect.soft(committedFile(), `${relative} is out of date: run \`${REGENERATE}\` and commit the file`).toBe(generated)

      // Loaded into an empty database, the file makes the same schema.
      const migrated = yield* dumpSchema
      const sql = yield* SqlClient.SqlClient
      yield* sql`create database schema_reload`
      const reloaded = yield* Effect.scoped(
        Effect.gen(function*() {
          const other = yield* PgClient.make({ url: databaseUrl(server, "schema_reload"), maxConnections: 1 })
          yield* other.unsafe(generated)
          return yield* Effect.provideService(dumpSchema, SqlClient.SqlClient, other)
        })
      ).pipe(Effect.provide(Reactivity.layer))
      expect(reloaded, `${relative} does not load as the schema it shows (scripts/schema.ts prints something wrong)`)
        .toBe(migrated)
    })
  ), { timeout: 180_000 })
