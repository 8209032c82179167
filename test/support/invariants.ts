// The invariants of docs/architecture.md, asked of the real systems (Postgres, PowerDNS, the route files, nginx and the
// service's API), never of the service's memory:
//  1. an org is active in the API <=> its DNS A record exists <=> nginx holds its route (the route
//     table's entry, lua mode; routes/org-{uuid}.conf, reload mode)
//     <=> nginx routes its hostname (to the allocation's gateway); a gateway serves at most one
//     org, an org has at most one gateway;
//  2. free + allocated = total;
//  and, once things settled, no allocation is left starting, stopping or rolling_back.
import { Data, Effect, type Scope } from "effect"
import { readFileSync } from "node:fs"
import { readdir, readFile } from "node:fs/promises"
import { createRequire } from "node:module"
import path from "node:path"
import { listRecords } from "../../src/dev/PowerDnsProcess.ts"
import type { LocalStack } from "../../src/dev/stack.ts"
import { EDGE_FILE, PROBE_SECRET_HEADER } from "../../src/nginx/config.ts"
import { pollUntil } from "./poll.ts"
import { domainOf, nginxReaches, ProbeError } from "./rawHttp.ts"
import { type Endpoint, request } from "./server.ts"

// ---------------------------------------------------------------------------------------------
// Postgres, asked directly with `pg` (no types are installed for it: the little used is typed here).

interface PgPool {
  query(text: string, params?: ReadonlyArray<unknown>): Promise<{ rows: Array<Record<string, unknown>> }>
  end(): Promise<void>
  on(event: "error", listener: (error: Error) => void): void
}
const pg = createRequire(import.meta.url)("pg") as {
  Pool: new(options: { connectionString: string; max?: number; application_name?: string }) => PgPool
}

export class DbError extends Data.TaggedError("DbError")<{ readonly message: string; readonly cause?: unknown }> {}

export interface Db {
  readonly query: <T = Record<string, any>>(text: string, params?: ReadonlyArray<unknown>) => Effect.Effect<Array<T>, DbError>
  /** The same query as a promise (for tight polling loops). */
  readonly queryPromise: <T = Record<string, any>>(text: string, params?: ReadonlyArray<unknown>) => Promise<Array<T>>
}

/** A small connection pool on the stack's Postgres, closed with the Scope. */
export const openDb = (url: string): Effect.Effect<Db, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const pool = new pg.Pool({ connectionString: url, max: 4, application_name: "gateway-allocator-tests" })
      // An idle client whose server went away must not crash the test process.
      pool.on("error", () => {})
      return pool
    }),
    (pool) => Effect.promise(() => pool.end().catch(() => undefined))
  ).pipe(
    Effect.map((pool): Db => {
      const queryPromise = async <T>(text: string, params?: ReadonlyArray<unknown>) =>
        (await pool.query(text, params)).rows as Array<T>
      return {
        queryPromise,
        query: <T>(text: string, params?: ReadonlyArray<unknown>) =>
          Effect.tryPromise({
            try: () => queryPromise<T>(text, params),
            catch: (cause) => new DbError({ message: `${text.trim().split("\n")[0]}: ${String(cause)}`, cause })
          })
      }
    })
  )

export interface JournalRow {
  readonly step: string
  readonly event: string
  readonly actor: string
  readonly detail: string | null
}

/** The allocation of an org, newest first (the crash tests know the org, not the id). */
export const allocationsOf = (db: Db, org: string) =>
  db.query<{ id: string; state: string; gateway_id: string | null; runner: string }>(
    "select id, state, gateway_id, runner from allocations where organization_id = $1 order by created_at desc",
    [org]
  )

export const journalOf = (db: Db, allocationId: string) =>
  db.query<JournalRow>(
    "select step, event, actor, detail from allocation_steps where allocation_id = $1 order by id",
    [allocationId]
  )

// ---------------------------------------------------------------------------------------------
// The other systems.

const UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

export const routesDirOf = (stack: LocalStack) => path.join(stack.nginx.confDir, "routes")
export const routeFileOf = (stack: LocalStack, org: string) => path.join(routesDirOf(stack), `org-${org}.conf`)

/** The orgs that have an A record in PowerDNS (its HTTP API), with the record's contents. */
export const dnsRecords = (stack: LocalStack) =>
  listRecords(stack.powerDns).pipe(
    Effect.map((rrsets) => {
      const pattern = new RegExp(`^org-(${UUID})\\.${domainOf(stack).replace(/\./g, "\\.")}\\.$`)
      const records = new Map<string, ReadonlyArray<string>>()
      for (const rrset of rrsets) {
        const match = rrset.type === "A" ? pattern.exec(rrset.name) : null
        if (match !== null) records.set(match[1]!, rrset.content)
      }
      return records
    })
  )

/** The stack's routing mode (NGINX_ROUTING; lua unless the stack says reload). */
export const routingOf = (stack: LocalStack): "lua" | "reload" => stack.env.NGINX_ROUTING === "reload" ? "reload" : "lua"

/** The file the service wrote for its edge in NGINX_CONF_DIR: the edge's id and its secret. */
export const edgeFileOf = (stack: LocalStack) =>
  JSON.parse(readFileSync(path.join(stack.nginx.confDir, EDGE_FILE), "utf8")) as { id: string; probeSecret: string }

/** The secret the service wrote for its edge: it guards nginx's probe and the route API. */
export const edgeSecretOf = (stack: LocalStack) => edgeFileOf(stack).probeSecret

/** One request to the route API (lua mode): status and body. */
export const routeApi = (stack: LocalStack, method: string, pathAndQuery: string, body?: string) =>
  Effect.tryPromise({
    try: async () => {
      const response = await fetch(`http://127.0.0.1:${stack.nginx.routeApiPort}${pathAndQuery}`, {
        method,
        headers: { [PROBE_SECRET_HEADER]: edgeSecretOf(stack) },
        ...(body === undefined ? {} : { body }),
        signal: AbortSignal.timeout(5000)
      })
      return { status: response.status, body: await response.text() }
    },
    catch: (cause) => new ProbeError({ message: `route API ${method} ${pathAndQuery}: ${String(cause)}` })
  })

/**
 * Every route the service gave nginx, by org, with its text (lua: the table's line
 * "{org} {upstream} {allocation} {generation}"; reload: the route file), and any other file left
 * in routes/ (reload mode's temp files).
 */
export const edgeRoutes = (stack: LocalStack) =>
  routingOf(stack) === "lua"
    ? Effect.map(
      Effect.orDie(routeApi(stack, "GET", "/routes")),
      (answer) => ({
        routes: new Map(answer.body.split("\n").slice(1).filter((line) => line !== "").map((line) => [line.split(" ")[0] ?? "", line] as const)),
        others: [] as Array<string>
      })
    )
    : routeFiles(stack)

/** The org's route as text (see `edgeRoutes`), or undefined when nginx has none for it. */
export const edgeRouteOf = (stack: LocalStack, org: string) =>
  routingOf(stack) === "lua"
    ? Effect.map(Effect.orDie(routeApi(stack, "GET", `/routes/${org}`)), (answer) => answer.status === 200 ? answer.body : undefined)
    : Effect.promise(() => readFile(routeFileOf(stack, org), "utf8").catch(() => undefined))

/** Whether nginx holds a route for the org (see `edgeRouteOf`). */
export const hasRoute = (stack: LocalStack, org: string) => Effect.map(edgeRouteOf(stack, org), (route) => route !== undefined)

/** The route files in `routes/` by org (with their text), and any other file left there. */
const routeFiles = (stack: LocalStack) =>
  Effect.promise(async () => {
    const dir = routesDirOf(stack)
    const names = await readdir(dir).catch(() => [] as Array<string>)
    const routes = new Map<string, string>()
    const others: Array<string> = []
    const pattern = new RegExp(`^org-(${UUID})\\.conf$`)
    for (const name of names) {
      const match = pattern.exec(name)
      if (match === null) {
        others.push(name)
        continue
      }
      const text = await readFile(path.join(dir, name), "utf8").catch(() => undefined)
      if (text !== undefined) routes.set(match[1]!, text)
    }
    return { routes, others }
  })

/**
 * What nginx does with a request for the org's hostname, on a fresh connection: the name of the
 * sample gateway it reached, or null when nginx answers 404 itself (no route). A gateway that
 * refused the request for its allocation header (421: it holds no allocation, or another) was
 * reached all the same: nginx routes the hostname to it.
 */
export const nginxRoutes = (stack: LocalStack, org: string, timeoutMs = 5000) =>
  nginxReaches(stack, org, { path: "/invariants", timeoutMs, fencedReaches: true })

/** What PowerDNS holds for one org: its A record contents (empty when none). */
export const dnsRecordOf = (stack: LocalStack, org: string) =>
  Effect.map(dnsRecords(stack), (records) => records.get(org) ?? [])

// ---------------------------------------------------------------------------------------------
// The checker.

export interface OrgView {
  readonly org: string
  /** `GET /gateway/{org}`: the state, "absent" on 404, or "error: ...". */
  readonly api: string
  readonly dns: boolean
  readonly route: boolean
  /** The gateway nginx reaches, null for 404, or "error: ...". */
  readonly nginx: string | null
}

export interface InvariantReport {
  /** Empty when every invariant holds. */
  readonly violations: ReadonlyArray<string>
  /** Every org looked at. */
  readonly orgs: ReadonlyArray<OrgView>
  readonly pool: { readonly total: number; readonly free: number; readonly allocated: number } | undefined
  readonly active: number
  /** Files in routes/ that are not route files (temp files of interrupted writes); not a violation. */
  readonly strayFiles: ReadonlyArray<string>
}

export interface InvariantTarget {
  readonly stack: LocalStack
  /** Any live server of the stack. */
  readonly endpoint: Endpoint
  readonly db: Db
  /** Orgs to look at besides every org Postgres, PowerDNS and routes/ know of. */
  readonly orgs?: Iterable<string>
}

const LIVE = ["starting", "active", "stopping", "rolling_back"]
const TRANSITIONAL = new Set(["starting", "stopping", "rolling_back"])

const message = (error: unknown) =>
  typeof error === "object" && error !== null && "message" in error ? String(error.message) : String(error)

/** Checks every invariant once; what cannot be asked is reported as a violation, never thrown. */
export const checkInvariants = (target: InvariantTarget): Effect.Effect<InvariantReport> =>
  Effect.gen(function*() {
    const { db, endpoint, stack } = target
    const violations: Array<string> = []
    const recordIp = stack.env["DNS_RECORD_IP"] ?? "127.0.0.1"

    // One statement, so one snapshot: allocations and gateway rows are never read torn apart.
    type LiveRow = { id: string; organization_id: string; gateway_id: string | null; state: string; upstream: string }
    type GatewayRow = { id: string; name: string; upstream: string; allocation_id: string | null }
    const fromDb = yield* db.query<{ allocations: Array<LiveRow>; gateways: Array<GatewayRow>; orgs: Array<string> }>(
      `select
         (select coalesce(json_agg(a), '[]') from (
            select id, organization_id, gateway_id, state, upstream from allocations where state = any($1)) a) as allocations,
         (select coalesce(json_agg(g), '[]') from (select id, name, upstream, allocation_id from gateways) g) as gateways,
         (select coalesce(json_agg(distinct organization_id), '[]') from allocations) as orgs`,
      [LIVE]
    ).pipe(Effect.either)
    if (fromDb._tag === "Left") {
      return { violations: [`cannot read Postgres: ${fromDb.left.message}`], orgs: [], pool: undefined, active: 0, strayFiles: [] }
    }
    const { allocations, gateways, orgs: everyOrg } = fromDb.right[0]!
    const [records, files, pool] = yield* Effect.all([
      dnsRecords(stack).pipe(Effect.either),
      edgeRoutes(stack),
      request(endpoint, "GET", "/pool", { timeoutMs: 10_000 }).pipe(Effect.either)
    ], { concurrency: "unbounded" })
    if (records._tag === "Left") violations.push(`cannot list PowerDNS records: ${message(records.left)}`)
    const dns = records._tag === "Right" ? records.right : new Map<string, ReadonlyArray<string>>()

    // Postgres: one live allocation per org and per gateway, gateway rows and allocations agree.
    const byOrg = new Map<string, Array<typeof allocations[number]>>()
    const byGateway = new Map<string, Array<typeof allocations[number]>>()
    for (const allocation of allocations) {
      byOrg.set(allocation.organization_id, [...(byOrg.get(allocation.organization_id) ?? []), allocation])
      if (allocation.gateway_id !== null) {
        byGateway.set(allocation.gateway_id, [...(byGateway.get(allocation.gateway_id) ?? []), allocation])
      }
      if (TRANSITIONAL.has(allocation.state)) {
        violations.push(`allocation ${allocation.id} of org ${allocation.organization_id} left ${allocation.state}`)
      }
    }
    for (const [org, list] of byOrg) {
      if (list.length > 1) violations.push(`org ${org} has ${list.length} live allocations: ${list.map((a) => a.id).join(", ")}`)
    }
    for (const [gateway, list] of byGateway) {
      if (list.length > 1) {
        violations.push(`gateway ${gateway} serves ${list.length} orgs: ${list.map((a) => a.organization_id).join(", ")}`)
      }
    }
    const gatewayById = new Map(gateways.map((gateway) => [gateway.id, gateway]))
    const liveById = new Map(allocations.map((allocation) => [allocation.id, allocation]))
    for (const gateway of gateways) {
      if (gateway.allocation_id === null) continue
      const allocation = liveById.get(gateway.allocation_id)
      if (allocation === undefined) {
        violations.push(`gateway ${gateway.name} is held by allocation ${gateway.allocation_id}, which is not live`)
      } else if (allocation.gateway_id !== gateway.id) {
        violations.push(`gateway ${gateway.name} is held by allocation ${allocation.id} of gateway ${allocation.gateway_id}`)
      }
    }
    for (const allocation of allocations) {
      const gateway = allocation.gateway_id === null ? undefined : gatewayById.get(allocation.gateway_id)
      if (gateway?.allocation_id !== allocation.id) {
        violations.push(`live allocation ${allocation.id} (${allocation.state}) is not on its gateway's row`)
      }
    }

    // GET /pool: free + allocated = total, and what Postgres says.
    let stats: InvariantReport["pool"]
    if (pool._tag === "Left" || pool.right.status !== 200) {
      violations.push(`GET /pool: ${pool._tag === "Left" ? pool.left.message : `${pool.right.status} ${pool.right.text}`}`)
    } else {
      const { allocated, free, total } = pool.right.json as { total: number; free: number; allocated: number }
      stats = { total, free, allocated }
      if (free + allocated !== total) violations.push(`GET /pool: free ${free} + allocated ${allocated} != total ${total}`)
      if (total !== gateways.length) violations.push(`GET /pool: total ${total}, Postgres has ${gateways.length} gateways`)
      if (allocated !== allocations.length) {
        violations.push(`GET /pool: allocated ${allocated}, Postgres has ${allocations.length} live allocations`)
      }
    }

    // Every org anyone knows of: API <=> DNS <=> route <=> nginx.
    const orgs = new Set<string>([
      ...(target.orgs ?? []),
      ...everyOrg,
      ...dns.keys(),
      ...files.routes.keys()
    ])
    const views = yield* Effect.forEach([...orgs].sort(), (org) =>
      Effect.gen(function*() {
        const [status, routed] = yield* Effect.all([
          request(endpoint, "GET", `/gateway/${org}`, { timeoutMs: 10_000 }).pipe(Effect.either),
          nginxRoutes(stack, org).pipe(Effect.either)
        ], { concurrency: 2 })
        const api = status._tag === "Left"
          ? `error: ${status.left.message}`
          : status.right.status === 404
          ? "absent"
          : status.right.status === 200
          ? String(status.right.json?.state)
          : `error: HTTP ${status.right.status} ${status.right.text.slice(0, 200)}`
        const view: OrgView = {
          org,
          api,
          dns: dns.has(org),
          route: files.routes.has(org),
          nginx: routed._tag === "Left" ? `error: ${routed.left.message}` : routed.right
        }
        const live = byOrg.get(org)?.[0]
        const problems: Array<string> = []
        if (api.startsWith("error")) problems.push(`API ${api}`)
        if (api === "active") {
          const gateway = live?.gateway_id == null ? undefined : gatewayById.get(live.gateway_id)
          if (live?.state !== "active") problems.push(`API says active, Postgres says ${live?.state ?? "nothing live"}`)
          if (!view.dns) problems.push("active without a DNS record")
          else if (JSON.stringify(dns.get(org)) !== JSON.stringify([recordIp])) {
            problems.push(`DNS record holds ${JSON.stringify(dns.get(org))}, not [${recordIp}]`)
          }
          if (!view.route) problems.push("active without a route")
          else if (live !== undefined && !files.routes.get(org)!.includes(`${live.upstream} ${live.id}`)) {
            problems.push(`route does not route to ${live.upstream} ${live.id}: ${files.routes.get(org)!.trim()}`)
          }
          if (view.nginx === null) problems.push("active but nginx answers 404")
          else if (gateway !== undefined && view.nginx !== gateway.name) {
            problems.push(`nginx reaches ${view.nginx}, the allocation holds ${gateway.name}`)
          }
        } else if (api === "absent") {
          if (live !== undefined) problems.push(`API says absent, Postgres has ${live.state} allocation ${live.id}`)
          if (view.dns) problems.push("absent but a DNS record exists")
          if (view.route) problems.push("absent but nginx holds a route")
          if (view.nginx !== null) problems.push(`absent but nginx routes it (${view.nginx})`)
        } else if (!api.startsWith("error")) {
          problems.push(`API state ${api}`)
        }
        if (problems.length > 0) {
          // The systems are asked one after the other, so an org that was still moving can look
          // torn: what Postgres says at the end of the check tells that apart from a real mismatch.
          const now = yield* db.query<{ id: string; state: string }>(
            "select id, state from allocations where organization_id = $1 and state = any($2)",
            [org, LIVE]
          ).pipe(Effect.orElseSucceed(() => []))
          const postgres = now.length === 0 ? "nothing live" : now.map((a) => `${a.state} ${a.id}`).join(", ")
          for (const problem of problems) violations.push(`org ${org}: ${problem} ${JSON.stringify(view)}; Postgres now: ${postgres}`)
        }
        return view
      }), { concurrency: 8 })

    return {
      violations,
      orgs: views,
      pool: stats,
      active: views.filter((view) => view.api === "active").length,
      strayFiles: files.others
    } satisfies InvariantReport
  })

/**
 * Checks until every invariant holds or `timeoutMs` passed; returns the last report (the caller
 * asserts `violations` is empty). Drift can take a reconcile period to repair: poll, do not sleep.
 */
export const awaitInvariants = (
  target: InvariantTarget,
  options: { readonly timeoutMs: number; readonly intervalMs?: number }
): Effect.Effect<InvariantReport> =>
  pollUntil(checkInvariants(target), (report) => report.violations.length === 0, {
    withinMs: options.timeoutMs,
    spacingMs: options.intervalMs ?? 250
  })

/** A report as a few lines for a log or a failure message. */
export const describeReport = (report: InvariantReport) =>
  [
    `orgs looked at: ${report.orgs.length}, active: ${report.active}, pool: ${JSON.stringify(report.pool)}`,
    report.strayFiles.length === 0 ? undefined : `stray files in routes/ (not a violation): ${report.strayFiles.join(", ")}`,
    report.violations.length === 0 ? "all invariants hold" : `${report.violations.length} violation(s):`,
    ...report.violations.map((violation) => `  - ${violation}`)
  ].filter((line) => line !== undefined).join("\n")
