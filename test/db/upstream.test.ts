// Upstream identity in Postgres (migration 0007): the SQL normaliser agrees with the service's,
// rows stored before it are brought to one spelling without losing any and without handing one
// gateway process to two orgs, and the pool refuses every other spelling of a registered process.
import { SqlClient } from "@effect/sql"
import { expect, layer } from "@effect/vitest"
import { Effect, Either, Layer, Schema } from "effect"
import { randomUUID } from "node:crypto"
import { DatabaseLive } from "../../src/db/Database.ts"
import { type GatewayName, normaliseUpstream, Upstream } from "../../src/domain/ids.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { configWithDataDir } from "../support/stack.ts"

const Pool = Layer.unwrapEffect(
  Effect.sync(() =>
    GatewayStore.Default.pipe(
      Layer.provideMerge(DatabaseLive),
      Layer.provide(configWithDataDir("ga-upstream-"))
    )
  )
)

/** Spellings the old validation let in (it only lowercased), and a few it did not. */
const SPELLINGS = [
  "127.0.0.1:9001",
  "127.0.0.1:09001",
  "127.0.0.1:00080",
  "10.1.2.3:65535",
  "255.255.255.255:1",
  "0.0.0.0:9001",
  "0.1.2.3:9001",
  "127.000.000.001:9001",
  "010.0.0.8:80",
  "127.1:9001",
  "256.1.1.1:80",
  "1.2.3.4.5:80",
  "localhost:9002",
  "gw.internal:8080",
  "gw.internal.:8080",
  "unix:9001",
  "unix.:9001",
  "unix:/tmp/x",
  "gw_1.test:80",
  "1234:80",
  "127.0.0.1:0",
  "127.0.0.1:65536",
  "127.0.0.1:",
  "127.0.0.1",
  ":9001",
  "[::1]:9001",
  "[::]:9001",
  "[::ffff:127.0.0.1]:9001",
  "[::ffff:7f00:1]:9001",
  "[::ffff:127.000.000.001]:9001",
  "[::ffff:0.0.0.0]:9001",
  "[::ffff:0:0]:9001",
  "[::127.0.0.1]:9001",
  "[::7f00:1]:9001",
  "[::0.0.0.1]:9001",
  "[::0.0.0.2]:9001",
  "[2001:db8:0:0:1:0:0:1]:443",
  "[2001:db8::1:0:0:1]:443",
  "[2001:0db8:0000:0000:0000:0000:0000:0001]:443",
  "[2001:db8:0:1:1:1:1:1]:443",
  "[1:0:0:2:0:0:0:3]:443",
  "[1:0:0:0:2:0:0:3]:443",
  "[1:2:3:4:5:6:7::]:443",
  "[::1:2:3:4:5:6:7]:443",
  "[64:ff9b::1.2.3.4]:443",
  "[::ffff:0:1.2.3.4]:443",
  "[fe80::abcd]:443",
  "[1:2:3:4:5:6:7::8]:443",
  "[1:2:3:4:5:6::1.2.3.4]:443",
  "[1:2:3:4:5:6:7:8:9]:443",
  "[12345::1]:443",
  "[1::2::3]:443",
  "[:::]:443",
  "[1:]:443",
  "[::1.2.3]:443",
  "[1.2.3.4::]:443",
  "[127.0.0.1]:443",
  "[....]:443",
  "[::1]",
  "[::1]9001"
]

const hex = (group: number) => group.toString(16)

/** Many spellings of one IPv6 address: padded, upper case, each zero run as "::", the last 32 bits as IPv4. */
const ipv6Spellings = (groups: ReadonlyArray<number>): ReadonlyArray<string> => {
  const minimal = groups.map(hex)
  const padded = groups.map((group) => hex(group).padStart(4, "0")).join(":")
  const spellings = [minimal.join(":"), padded, padded.toUpperCase()]
  for (let start = 0; start < 8; start++) {
    for (let end = start + 1; end <= 8; end++) {
      if (groups.slice(start, end).every((group) => group === 0)) {
        spellings.push(`${minimal.slice(0, start).join(":")}::${minimal.slice(end).join(":")}`)
      }
    }
  }
  const [high = 0, low = 0] = groups.slice(6)
  const ipv4 = `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`
  spellings.push(`${minimal.slice(0, 6).join(":")}:${ipv4}`)
  if (groups.slice(0, 6).every((group) => group === 0)) spellings.push(`::${ipv4}`)
  if (groups.slice(0, 5).every((group) => group === 0) && groups[5] === 0xffff) spellings.push(`::ffff:${ipv4}`)
  return spellings.map((spelling) => `[${spelling}]:443`)
}

/** Every pattern of zero groups (256), over distinct non-zero values, and the special ranges. */
const VALUES = [0x2001, 0xdb8, 0x1, 0xabcd, 0xffff, 0x10, 0x7f00, 0xa]
const IPV6_SPELLINGS = [
  ...Array.from({ length: 256 }, (_, mask) => VALUES.map((value, i) => ((mask >> i) & 1) === 1 ? 0 : value)),
  [0, 0, 0, 0, 0, 0xffff, 0x7f00, 1],
  [0, 0, 0, 0, 0, 0xffff, 0xc0a8, 0x101],
  [0, 0, 0, 0, 0, 0xffff, 0, 0],
  [0, 0, 0, 0, 0, 0xffff, 0x0001, 0x0203],
  [0, 0, 0, 0, 0, 0, 0x7f00, 1],
  [0, 0, 0, 0, 0, 0, 0, 1],
  [0, 0, 0, 0, 0, 0, 0, 2],
  [0, 0, 0, 0, 0, 0, 0, 0],
  [0x64, 0xff9b, 0, 0, 0, 0, 0x102, 0x304],
  [0, 0, 0, 0, 0xffff, 0, 0x102, 0x304]
].flatMap(ipv6Spellings)

const sqlNormal = (spellings: ReadonlyArray<string>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<{ readonly spelling: string; readonly normal: string | null }>`
      select value as spelling, gateway_allocator_normalise_upstream(value) as normal
        from json_array_elements_text(${JSON.stringify(spellings)}::json)`)

const decodeUpstream = Schema.decodeUnknown(Upstream)

interface GatewayRow {
  readonly name: string
  readonly upstream: string
  readonly state: string
  readonly duplicate_of: string | null
  readonly last_failure: string | null
  readonly allocation_id: string | null
}

layer(Pool, { excludeTestServices: true, timeout: 120_000 })("upstream identity in Postgres", (it) => {
  it.effect("gateway_allocator_normalise_upstream agrees with normaliseUpstream, on every spelling (null where refused)", () =>
    Effect.gen(function*() {
      const spellings = [...SPELLINGS, ...IPV6_SPELLINGS]
      expect(IPV6_SPELLINGS.length).toBeGreaterThan(2000)
      const rows = yield* sqlNormal(spellings)
      expect(rows.map((row) => row.spelling)).toEqual(spellings)
      const disagreements = rows
        .map((row) => ({ spelling: row.spelling, sql: row.normal, service: Either.getOrNull(normaliseUpstream(row.spelling)) }))
        .filter((row) => row.sql !== row.service)
      expect(disagreements).toEqual([])
      // Both accept and refuse: the comparison is not vacuous.
      expect(rows.filter((row) => row.normal === null).length).toBeGreaterThan(50)
      expect(rows.filter((row) => row.normal !== null).length).toBeGreaterThan(2000)
    }))

  it.effect("rows stored before 0007: one spelling each, no row lost, duplicates drained, never one process for two orgs", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const pool = yield* GatewayStore
      // As the old validation stored them, oldest first in each group.
      const stored: ReadonlyArray<readonly [string, string]> = [
        // One process four times, none serving: the oldest keeps it, the others are drained.
        ["old-a1", "127.0.0.1:9101"],
        ["old-a2", "127.0.0.1:09101"],
        ["old-a3", "[::ffff:127.0.0.1]:9101"],
        ["old-a4", "0.0.0.0:9101"],
        // The later row is spelt normally already: it is still the duplicate.
        ["old-b1", "[0:0:0:0:0:0:0:1]:9102"],
        ["old-b2", "[::1]:9102"],
        // The later row serves an org: the oldest, free, must not be handed to another.
        ["old-c1", "127.0.0.1:9103"],
        ["old-c2", "127.0.0.1:09103"],
        // Reaches no process over TCP: kept, under a name that reaches nothing.
        ["old-d1", "unix:9104"],
        // Alone, only respelt.
        ["old-e1", "[2001:db8:0:0:0:0:0:1]:0443"],
        ["old-f1", "0.0.0.0:9106"]
      ]
      // Postgres normalises (or refuses) an upstream written now: the old rows go in past its trigger.
      yield* sql`alter table gateways disable trigger gateways_upstream_identity`
      yield* Effect.forEach(stored, ([name, upstream], i) =>
        sql`insert into gateways (name, upstream, created_at)
            values (${name}, ${upstream}, now() - make_interval(mins => ${100 - i}))`).pipe(
        Effect.ensuring(Effect.orDie(sql`alter table gateways enable trigger gateways_upstream_identity`))
      )
      const serving = randomUUID()
      const history = randomUUID()
      yield* sql`insert into allocations (id, organization_id, gateway_id, upstream, state, runner)
                 select ${serving}, gen_random_uuid(), id, upstream, 'active', 'old-runner' from gateways where name = 'old-c2'`
      yield* sql`update gateways set allocation_id = ${serving} where name = 'old-c2'`
      yield* sql`insert into allocations (id, organization_id, gateway_id, upstream, state, runner, finished_at)
                 select ${history}, gen_random_uuid(), id, upstream, 'released', 'old-runner', now() from gateways where name = 'old-a4'`

      yield* sql`select gateway_allocator_normalise_gateways()`

      const rows = yield* sql<GatewayRow>`
        select name, upstream, state, duplicate_of, last_failure, allocation_id from gateways
         where name like 'old-%' order by name`
      const byName = new Map(rows.map((row) => [row.name, row]))
      expect(rows.map((row) => row.name)).toEqual(stored.map(([name]) => name).sort())

      expect(byName.get("old-a1")).toMatchObject({ upstream: "127.0.0.1:9101", state: "active", duplicate_of: null, last_failure: null })
      for (const [name, spelling] of [["old-a2", "127.0.0.1:09101"], ["old-a3", "[::ffff:127.0.0.1]:9101"], ["old-a4", "0.0.0.0:9101"]] as const) {
        const row = byName.get(name)
        expect(row).toMatchObject({ upstream: "127.0.0.1:9101", state: "draining", duplicate_of: "old-a1" })
        expect(row?.last_failure).toContain(`duplicates gateway old-a1 (same process: 127.0.0.1:9101, registered here as ${spelling})`)
        expect(row?.last_failure).toContain("remove this gateway")
      }

      expect(byName.get("old-b1")).toMatchObject({ upstream: "[::1]:9102", state: "active", duplicate_of: null })
      expect(byName.get("old-b2")).toMatchObject({ upstream: "[::1]:9102", state: "draining", duplicate_of: "old-b1" })

      // The duplicate keeps its org until it stops; the oldest is held back meanwhile.
      expect(byName.get("old-c2")).toMatchObject({ upstream: "127.0.0.1:9103", state: "draining", duplicate_of: "old-c1", allocation_id: serving })
      expect(byName.get("old-c1")).toMatchObject({ upstream: "127.0.0.1:9103", state: "draining", duplicate_of: null, allocation_id: null })
      expect(byName.get("old-c1")?.last_failure).toContain("is registered again as old-c2, which serves an org")

      expect(byName.get("old-d1")).toMatchObject({ upstream: expect.stringMatching(/^unusable-[0-9a-f-]{36}\.invalid:9104$/), state: "draining" })
      expect(byName.get("old-d1")?.last_failure).toContain("upstream unix:9104 is refused since migration 0007")

      expect(byName.get("old-e1")).toMatchObject({ upstream: "[2001:db8::1]:443", state: "active", last_failure: null })
      expect(byName.get("old-f1")).toMatchObject({ upstream: "127.0.0.1:9106", state: "active", last_failure: null })

      // Allocations carry their gateway's upstream: the same spelling, history included.
      const allocations = yield* sql<{ readonly id: string; readonly upstream: string }>`
        select id, upstream from allocations where id in (${serving}, ${history}) order by id`
      expect(new Map(allocations.map((a) => [a.id, a.upstream]))).toEqual(
        new Map([[serving, "127.0.0.1:9103"], [history, "127.0.0.1:9101"]])
      )
      // The old spellings stay on record.
      const renames = yield* sql<{ readonly old_upstream: string }>`
        select old_upstream from upstream_renames where table_name = 'gateways'`
      expect(renames.map((r) => r.old_upstream)).toEqual(
        expect.arrayContaining(["127.0.0.1:09101", "[::ffff:127.0.0.1]:9101", "0.0.0.0:9101", "unix:9104", "[2001:db8:0:0:0:0:0:1]:0443"])
      )

      // Every row decodes again (a refused spelling would fail the whole listing).
      const listed = (yield* pool.listGateways()).filter((g) => g.name.startsWith("old-"))
      expect(listed).toHaveLength(stored.length)

      // A second run settles nothing new.
      yield* sql`select gateway_allocator_normalise_gateways()`
      expect(yield* sql<GatewayRow>`
        select name, upstream, state, duplicate_of, last_failure, allocation_id from gateways
         where name like 'old-%' order by name`).toEqual(rows)

      // While a duplicate holds the process, it is not registered again, even with its first row gone.
      const first = listed.find((g) => g.name === "old-a1")
      if (first === undefined) return expect.fail("old-a1 is gone")
      yield* pool.removeGateway(first.gatewayId)
      const again = yield* pool.addGateway("again" as GatewayName, yield* decodeUpstream("127.000.000.001:09101")).pipe(Effect.flip)
      expect(again._tag).toBe("GatewayUpstreamTaken")
    }))

  it.effect("Postgres keeps the rule whatever writes the row: an alias is stored normalised (so it collides), a refused one fails", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const insert = (name: string, upstream: string) =>
        sql<{ readonly upstream: string }>`
          insert into gateways (name, upstream) values (${name}, ${upstream})
          on conflict do nothing returning upstream`
      expect(yield* insert("raw-1", "GW-RAW.Test.:09201")).toEqual([{ upstream: "gw-raw.test:9201" }])
      expect(yield* insert("raw-2", "[::ffff:127.0.0.1]:9202")).toEqual([{ upstream: "127.0.0.1:9202" }])
      expect(yield* insert("raw-3", "127.000.000.001:09202")).toEqual([])
      for (const refused of ["0.0.0.0:9203", "unix:9203", "[::]:9203", "gw.test"]) {
        const error = yield* insert("raw-refused", refused).pipe(Effect.flip)
        expect(String(error.cause)).toContain(`upstream ${refused} is refused`)
      }
    }))

  it.effect("addGateway: every alias of a registered upstream is GatewayUpstreamTaken; refused spellings fail to decode", () =>
    Effect.gen(function*() {
      const pool = yield* GatewayStore
      const added = yield* pool.addGateway("gw-9001" as GatewayName, yield* decodeUpstream("127.0.0.1:9001"))
      expect(added.upstream).toBe("127.0.0.1:9001")
      for (const [i, alias] of ["127.0.0.1:09001", "[::ffff:127.0.0.1]:9001", "[::FFFF:7F00:1]:9001", "127.000.000.001:9001"].entries()) {
        const upstream = yield* decodeUpstream(alias)
        const error = yield* pool.addGateway(`alias-${i}` as GatewayName, upstream).pipe(Effect.flip)
        expect({ alias, tag: error._tag }).toEqual({ alias, tag: "GatewayUpstreamTaken" })
      }
      for (const refused of ["0.0.0.0:9001", "[::]:9001", "unix:9001", "UNIX:/tmp/x"]) {
        const error = yield* decodeUpstream(refused).pipe(Effect.flip)
        expect({ refused, tag: error._tag }).toEqual({ refused, tag: "ParseError" })
      }
      const gateways = (yield* pool.listGateways()).filter((g) => g.upstream === "127.0.0.1:9001")
      expect(gateways.map((g) => g.name)).toEqual(["gw-9001"])
      // An IPv6 gateway: its aliases too.
      yield* pool.addGateway("gw-v6" as GatewayName, yield* decodeUpstream("[2001:DB8:0:0:1:0:0:1]:0443"))
      const v6 = yield* pool.addGateway("gw-v6-again" as GatewayName, yield* decodeUpstream("[2001:db8::1:0:0:1]:443")).pipe(Effect.flip)
      expect(v6._tag).toBe("GatewayUpstreamTaken")
    }))
})
