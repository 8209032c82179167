// `npm run schema`: writes database/schema.sql, the schema a fresh database has after every
// migration in database/, in one file. It starts an embedded Postgres in a temporary directory
// (never DATABASE_URL), applies the migrations as the service does, and prints the catalog:
// sequences, tables, functions, views, indexes, foreign keys, triggers and comments, each kind
// sorted by name (views in dependency order), without OIDs, owners, privileges or timestamps.
// There is no pg_dump among the embedded binaries, hence the catalog queries; objects of a kind
// this script does not print (a type, a rule, a policy...) stop it with an error rather than
// going missing. `npm run schema -- --check` only says whether the file is up to date.
// test/db/schema.test.ts fails when the committed file differs from what this script writes.
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer, Redacted } from "effect"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import path from "node:path"
import { pathToFileURL } from "node:url"
import { MigrationsLive } from "../src/db/Database.ts"
import { type EmbeddedPostgres, startEmbeddedPostgres } from "../src/db/EmbeddedPostgres.ts"
import { packageRoot } from "../src/lib/packageRoot.ts"

export const SCHEMA_FILE = path.join(packageRoot, "database", "schema.sql")
export const REGENERATE = "npm run schema"

const preamble = [
  "-- Bodies are checked when they run (a function may name one printed after it).",
  "SET check_function_bodies = false;"
].join("\n")

const fail = (message: string) => Effect.fail(new Error(`scripts/schema.ts: ${message}`))

/**
 * Stops on objects this script would leave out: everything in `public` must be a table, view,
 * sequence, index or function, and hang on tables only as columns, defaults, constraints,
 * triggers or a view's rule.
 */
const checkSupported = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const unsupported = yield* sql<{ readonly what: string }>`
    select pg_describe_object(d.classid, d.objid, d.objsubid) as what
      from pg_depend d
     where d.refclassid = 'pg_namespace'::regclass and d.refobjid = 'public'::regnamespace
       and d.classid not in ('pg_class'::regclass, 'pg_proc'::regclass)
    union all
    select pg_describe_object(d.classid, d.objid, d.objsubid)
      from pg_depend d join pg_class c on d.refclassid = 'pg_class'::regclass and c.oid = d.refobjid
     where c.relnamespace = 'public'::regnamespace
       and d.classid not in ('pg_class'::regclass, 'pg_type'::regclass, 'pg_attrdef'::regclass,
                             'pg_constraint'::regclass, 'pg_trigger'::regclass, 'pg_rewrite'::regclass)
    union all
    select format('%s (relkind %s)', c.oid::regclass, c.relkind) from pg_class c
     where c.relnamespace = 'public'::regnamespace and c.relkind not in ('r', 'v', 'S', 'i')
    union all
    select format('row level security on %s', c.oid::regclass) from pg_class c
     where c.relnamespace = 'public'::regnamespace and c.relrowsecurity
    union all
    select format('rule %s on %s', r.rulename, r.ev_class::regclass) from pg_rewrite r
      join pg_class c on c.oid = r.ev_class
     where c.relnamespace = 'public'::regnamespace and r.rulename <> '_RETURN'
    union all
    select format('%s (kind %s)', p.oid::regprocedure, p.prokind) from pg_proc p
     where p.pronamespace = 'public'::regnamespace and p.prokind not in ('f', 'p')
    union all
    select format('schema %s', n.nspname) from pg_namespace n
     where n.oid >= 16384 and left(n.nspname, 3) <> 'pg_'
    union all
    select format('extension %s', e.extname) from pg_extension e where e.extname <> 'plpgsql'
    union all
    select format('comment on %s', pg_describe_object(d.classoid, d.objoid, d.objsubid)) from pg_description d
     where d.objoid >= 16384 and d.classoid not in ('pg_class'::regclass, 'pg_proc'::regclass)`
  if (unsupported.length > 0) {
    return yield* fail(
      `the database has objects this script does not print; extend it for them:\n  ${
        unsupported.map((row) => row.what).sort().join("\n  ")
      }`
    )
  }
})

interface Named {
  readonly name: string
  readonly text: string
}

interface Column {
  readonly table: string
  readonly name: string
  readonly type: string
  readonly collation: string | null
  readonly default_value: string | null
  readonly not_null: boolean
  readonly identity: string
  readonly generated: string
}

/** Views in dependency order (a view after the views it reads), by name otherwise. */
const inDependencyOrder = (views: ReadonlyArray<Named>, reads: ReadonlyArray<{ readonly view: string; readonly reads: string }>) => {
  const pending = new Map(views.map((view) => [view.name, view]))
  const ordered: Array<Named> = []
  while (pending.size > 0) {
    const ready = [...pending.values()].filter((view) =>
      !reads.some((edge) => edge.view === view.name && edge.reads !== view.name && pending.has(edge.reads))
    )
    const next = ready[0] ?? [...pending.values()][0]
    if (next === undefined) break
    ordered.push(next)
    pending.delete(next.name)
  }
  return ordered
}

/**
 * The schema of the database the SqlClient is connected to, as database/schema.sql holds it
 * (without the file's header).
 */
export const dumpSchema = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* checkSupported
  return yield* sql.withTransaction(Effect.gen(function*() {
    // Only pg_catalog is searched: every name of the schema is printed qualified (public.), as
    // pg_dump does, whatever the role's search_path.
    yield* sql`set local search_path = ''`

    const sequences = yield* sql<Named>`
      select c.relname as name,
             format('CREATE SEQUENCE %s AS %s START WITH %s INCREMENT BY %s MINVALUE %s MAXVALUE %s CACHE %s%s;',
                    c.oid::regclass, format_type(s.seqtypid, null), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                    s.seqcache, case when s.seqcycle then ' CYCLE' else '' end) as text
        from pg_class c join pg_sequence s on s.seqrelid = c.oid
       where c.relnamespace = 'public'::regnamespace and c.relkind = 'S'
         and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'i')
       order by c.relname collate "C"`
    const ownedSequences = yield* sql<Named>`
      select c.relname as name,
             format('ALTER SEQUENCE %s OWNED BY %s.%I;', c.oid::regclass, t.oid::regclass, a.attname) as text
        from pg_class c
        join pg_depend d on d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'a'
                        and d.refclassid = 'pg_class'::regclass
        join pg_class t on t.oid = d.refobjid
        join pg_attribute a on a.attrelid = t.oid and a.attnum = d.refobjsubid
       where c.relnamespace = 'public'::regnamespace and c.relkind = 'S'
       order by c.relname collate "C"`

    const tables = yield* sql<{ readonly name: string; readonly persistence: string; readonly options: string | null }>`
      select c.relname as name, c.relpersistence as persistence, array_to_string(c.reloptions, ', ') as options
        from pg_class c
       where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'
       order by c.relname collate "C"`
    const columns = yield* sql<Column>`
      select c.relname as "table", a.attname as name, format_type(a.atttypid, a.atttypmod) as type,
             case when a.attcollation <> t.typcollation then (select quote_ident(l.collname) from pg_collation l where l.oid = a.attcollation) end as collation,
             pg_get_expr(ad.adbin, ad.adrelid) as default_value, a.attnotnull as not_null,
             a.attidentity as identity, a.attgenerated as generated
        from pg_class c
        join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
        join pg_type t on t.oid = a.atttypid
        left join pg_attrdef ad on ad.adrelid = c.oid and ad.adnum = a.attnum
       where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'
       order by c.relname collate "C", a.attnum`
    const constraints = yield* sql<{ readonly table: string; readonly text: string }>`
      select c.relname as "table", format('CONSTRAINT %I %s', k.conname, pg_get_constraintdef(k.oid, true)) as text
        from pg_constraint k join pg_class c on c.oid = k.conrelid
       where c.relnamespace = 'public'::regnamespace and k.contype in ('p', 'u', 'c', 'x')
       order by c.relname collate "C", k.conname collate "C"`
    const foreignKeys = yield* sql<Named>`
      select c.relname || '.' || k.conname as name,
             format('ALTER TABLE ONLY %s ADD CONSTRAINT %I %s;', c.oid::regclass, k.conname, pg_get_constraintdef(k.oid, true)) as text
        from pg_constraint k join pg_class c on c.oid = k.conrelid
       where c.relnamespace = 'public'::regnamespace and k.contype = 'f'
       order by c.relname collate "C", k.conname collate "C"`

    const functions = yield* sql<Named>`
      select p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' as name,
             rtrim(pg_get_functiondef(p.oid), E'\n') || ';' as text
        from pg_proc p
       where p.pronamespace = 'public'::regnamespace
         and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
       order by p.proname collate "C", pg_get_function_identity_arguments(p.oid) collate "C"`

    const views = yield* sql<Named>`
      select c.relname as name,
             format('CREATE VIEW %s%s AS%s', c.oid::regclass,
                    coalesce(' WITH (' || array_to_string(c.reloptions, ', ') || ')', ''),
                    E'\n' || rtrim(pg_get_viewdef(c.oid, true), E'\n')) as text
        from pg_class c
       where c.relnamespace = 'public'::regnamespace and c.relkind = 'v'
       order by c.relname collate "C"`
    const viewReads = yield* sql<{ readonly view: string; readonly reads: string }>`
      select distinct v.relname as view, u.relname as reads
        from pg_rewrite r
        join pg_class v on v.oid = r.ev_class
        join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid and d.refclassid = 'pg_class'::regclass
        join pg_class u on u.oid = d.refobjid
       where v.relnamespace = 'public'::regnamespace and v.relkind = 'v' and u.relkind = 'v'`

    const indexes = yield* sql<Named>`
      select i.relname as name, pg_get_indexdef(i.oid) || ';' as text
        from pg_index x
        join pg_class i on i.oid = x.indexrelid
        join pg_class c on c.oid = x.indrelid
       where c.relnamespace = 'public'::regnamespace
         and not exists (select 1 from pg_constraint k where k.conindid = i.oid and k.contype in ('p', 'u', 'x'))
       order by c.relname collate "C", i.relname collate "C"`

    const triggers = yield* sql<Named>`
      select c.relname || '.' || t.tgname as name, pg_get_triggerdef(t.oid, true) || ';' as text
        from pg_trigger t join pg_class c on c.oid = t.tgrelid
       where c.relnamespace = 'public'::regnamespace and not t.tgisinternal
       order by c.relname collate "C", t.tgname collate "C"`

    const comments = yield* sql<Named>`
      select o.identity as name,
             format('COMMENT ON %s %s IS %L;', case when o.type like '% column' then 'COLUMN' else upper(o.type) end,
                    o.identity, d.description) as text
        from pg_description d
       cross join lateral pg_identify_object(d.classoid, d.objoid, d.objsubid) o
       where d.objoid >= 16384 and o.schema = 'public'
       order by o.identity collate "C"`

    const table = (name: string, persistence: string, options: string | null) => {
      const lines = [
        ...columns.filter((column) => column.table === name).map((column) =>
          [
            `${quoteIdent(column.name)} ${column.type}`,
            column.collation === null ? "" : ` COLLATE ${column.collation}`,
            column.generated === "s" ? ` GENERATED ALWAYS AS (${column.default_value}) STORED` : "",
            column.generated === "v" ? ` GENERATED ALWAYS AS (${column.default_value}) VIRTUAL` : "",
            column.generated === "" && column.default_value !== null ? ` DEFAULT ${column.default_value}` : "",
            column.identity === "a" ? " GENERATED ALWAYS AS IDENTITY" : "",
            column.identity === "d" ? " GENERATED BY DEFAULT AS IDENTITY" : "",
            column.not_null ? " NOT NULL" : ""
          ].join("")
        ),
        ...constraints.filter((constraint) => constraint.table === name).map((constraint) => constraint.text)
      ]
      return `CREATE ${persistence === "u" ? "UNLOGGED " : ""}TABLE public.${quoteIdent(name)} (\n    ${lines.join(",\n    ")}\n)${
        options === null || options === "" ? "" : ` WITH (${options})`
      };`
    }

    const section = (title: string, texts: ReadonlyArray<string>) =>
      texts.length === 0 ? [] : [`-- ${title}\n\n${texts.join("\n\n")}`]
    return [
      preamble,
      ...section("Sequences", sequences.map((s) => s.text)),
      ...section("Tables", tables.map((t) => table(t.name, t.persistence, t.options))),
      ...section("Sequences owned by a column", ownedSequences.map((s) => s.text)),
      ...section("Functions", functions.map((f) => f.text)),
      ...section("Views", inDependencyOrder(views, viewReads).map((v) => v.text)),
      ...section("Indexes (other than those of primary keys and unique constraints)", indexes.map((i) => i.text)),
      ...section("Foreign keys", foreignKeys.map((k) => k.text)),
      ...section("Triggers", triggers.map((t) => t.text)),
      ...section("Comments", comments.map((c) => c.text))
    ].join("\n\n") + "\n"
  }))
})

const quoteIdent = (name: string) => /^[a-z_][a-z0-9_]*$/.test(name) ? name : `"${name.replaceAll("\"", "\"\"")}"`

/** database/schema.sql: the header, then the schema. */
export const renderSchemaFile = (options: { readonly version: string; readonly lastMigration: string; readonly schema: string }) =>
  [
    "-- GENERATED FILE, DO NOT EDIT: the schema of a fresh database after every migration in",
    `-- database/ (the last one: ${options.lastMigration}), as PostgreSQL ${options.version} prints it.`,
    `-- Regenerate it after adding a migration: ${REGENERATE} (scripts/schema.ts).`,
    "-- test/db/schema.test.ts fails while it differs from what that script writes.",
    "-- The migrations, not this file, make a database: it is for reading (it does load, into an",
    "-- empty database, and test/db/schema.test.ts checks that too).",
    "",
    options.schema
  ].join("\n")

/** The whole file, from the database the SqlClient is connected to (migrated). */
export const dumpSchemaFile = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [server] = yield* sql<{ readonly version: string }>`select current_setting('server_version') as version`
  const [last] = yield* sql<{ readonly id: number; readonly name: string }>`
    select migration_id as id, name from gateway_allocator_migrations order by migration_id desc limit 1`
  const schema = yield* dumpSchema
  return renderSchemaFile({
    version: server?.version ?? "?",
    lastMigration: last === undefined ? "none" : `${String(last.id).padStart(4, "0")}_${last.name}.sql`,
    schema
  })
})

/**
 * A fresh embedded Postgres in a temporary directory, migrated, for `use`; removed afterwards.
 * `use` gets the server too (its URL reaches other databases of it).
 */
export const withFreshDatabase = <A, E, R>(use: (server: EmbeddedPostgres) => Effect.Effect<A, E, R>) =>
  Effect.scoped(Effect.gen(function*() {
    const dataDir = yield* Effect.acquireRelease(
      Effect.sync(() => mkdtempSync(path.join(tmpdir(), "ga-schema-"))),
      (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
    )
    const server = yield* startEmbeddedPostgres({ dataDir })
    const database = MigrationsLive.pipe(Layer.provideMerge(PgClient.layer({ url: server.url, maxConnections: 2 })))
    return yield* Effect.provide(use(server), database)
  }))

/** What database/schema.sql should hold now. */
export const generateSchemaFile = withFreshDatabase(() => dumpSchemaFile)

/** The URL of another database on the same server. */
export const databaseUrl = (server: EmbeddedPostgres, database: string) =>
  Redacted.make(Redacted.value(server.url).replace(/\/[^/?]*(\?.*)?$/, `/${database}$1`))

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const check = process.argv.includes("--check")
  Effect.gen(function*() {
    const generated = yield* generateSchemaFile
    const committed = yield* Effect.sync(() => {
      try {
        return readFileSync(SCHEMA_FILE, "utf8")
      } catch {
        return undefined
      }
    })
    const relative = path.relative(process.cwd(), SCHEMA_FILE)
    if (check) {
      if (committed !== generated) return yield* fail(`${relative} is out of date: run ${REGENERATE}`)
      yield* Effect.sync(() => process.stdout.write(`${relative} is up to date\n`))
      return
    }
    yield* Effect.sync(() => writeFileSync(SCHEMA_FILE, generated))
    yield* Effect.sync(() =>
      process.stdout.write(`${relative} ${committed === generated ? "is up to date" : "written"}\n`)
    )
  }).pipe(NodeRuntime.runMain)
}
