// A private PowerDNS authoritative server (gsqlite3 backend, HTTP API on
// loopback) for the dev stack and tests, stopped with the Scope.
import { Command, FetchHttpClient, FileSystem, HttpClient, HttpClientRequest, HttpClientResponse } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { Data, Duration, Effect, Option, Redacted, Schema } from "effect"
import * as path from "node:path"
import { freePort } from "../lib/ports.ts"
import {
  awaitReady,
  type Child,
  hasExited,
  spawnChild,
  stopStaleProcess,
  tailFile,
  terminateChild,
  within
} from "../lib/processes.ts"

export class PowerDnsProcessError extends Data.TaggedError("PowerDnsProcessError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface PowerDnsHandle {
  /** e.g. `http://127.0.0.1:PORT` (PDNS_API_URL) */
  readonly apiUrl: string
  readonly apiKey: Redacted.Redacted<string>
  readonly serverId: "localhost"
  /** Fully qualified, with the trailing dot (PDNS_ZONE). */
  readonly zone: string
  readonly dnsPort: number
  readonly apiPort: number
  readonly logFile: string
  /** SIGTERM (then SIGKILL) and wait for exit: "PowerDNS is down". No-op when stopped. */
  readonly stop: Effect.Effect<void>
  /** Relaunches with the same ports and files and waits for the API. No-op when running. */
  readonly start: Effect.Effect<void, PowerDnsProcessError>
  readonly isRunning: Effect.Effect<boolean>
}

export const SQLITE_SCHEMA = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"

const configText = (options: {
  readonly dir: string
  readonly database: string
  readonly dnsPort: number
  readonly apiPort: number
  readonly apiKey: string
}): string =>
  [
    "# Written by src/dev/PowerDnsProcess.ts; regenerated on every start.",
    "launch=gsqlite3",
    `gsqlite3-database=${options.database}`,
    "local-address=127.0.0.1",
    `local-port=${options.dnsPort}`,
    "api=yes",
    `api-key=${options.apiKey}`,
    "webserver=yes",
    "webserver-address=127.0.0.1",
    `webserver-port=${options.apiPort}`,
    "webserver-allow-from=127.0.0.0/8",
    "webserver-loglevel=none",
    // Foreground, no guardian: the process we spawn is the server, so a kill stops it.
    "daemon=no",
    "guardian=no",
    // Control socket and pid file (pdns.pid) go here rather than /var/run/pdns.
    `socket-dir=${options.dir}`,
    "disable-syslog=yes",
    "log-timestamp=yes",
    // No network here: the security poll would only add a failing lookup.
    "security-poll-suffix=",
    ""
  ].join("\n")

const withDot = (zone: string): string => zone.endsWith(".") ? zone : `${zone}.`

/**
 * Starts `pdns_server --config-dir={dir}` with `{dir}/pdns.sqlite3` (created
 * from the backend's schema on first use), waits for its HTTP API, creates
 * `zone` if missing, and stops the server when the Scope closes.
 */
export const startPowerDns = Effect.fn("PowerDnsProcess.start")(function*(options: {
  readonly dir: string
  readonly zone: string
  readonly apiKey: Redacted.Redacted<string>
  readonly apiPort?: number
  readonly dnsPort?: number
}) {
  const fs = yield* FileSystem.FileSystem
  const dir = path.resolve(options.dir)
  const database = path.join(dir, "pdns.sqlite3")
  const pidFile = path.join(dir, "pdns.pid")
  const logFile = path.join(dir, "pdns.log")
  const zone = withDot(options.zone)
  const dnsPort = options.dnsPort ?? (yield* freePort)
  const apiPort = options.apiPort ?? (yield* freePort)
  const apiUrl = `http://127.0.0.1:${apiPort}`
  const fail = (message: string) => (cause: unknown) => new PowerDnsProcessError({ message, cause })

  yield* fs.makeDirectory(dir, { recursive: true }).pipe(Effect.mapError(fail(`cannot create ${dir}`)))
  if (!(yield* fs.exists(database).pipe(Effect.orElseSucceed(() => false)))) {
    const code = yield* Command.exitCode(Command.make("sqlite3", database, `.read ${SQLITE_SCHEMA}`)).pipe(
      Effect.mapError(fail(`cannot run sqlite3 to create ${database} (is the sqlite3 package installed?)`))
    )
    if (code !== 0) {
      yield* fs.remove(database, { force: true }).pipe(Effect.ignore)
      return yield* new PowerDnsProcessError({ message: `sqlite3 exited ${code} creating ${database} from ${SQLITE_SCHEMA}` })
    }
  }
  yield* fs.writeFileString(
    path.join(dir, "pdns.conf"),
    configText({ dir, database, dnsPort, apiPort, apiKey: Redacted.value(options.apiKey) }),
    { mode: 0o600 }
  ).pipe(Effect.mapError(fail(`cannot write ${dir}/pdns.conf`)))

  const http = (yield* HttpClient.HttpClient).pipe(
    HttpClient.mapRequest(HttpClientRequest.setHeader("X-API-Key", Redacted.value(options.apiKey)))
  )
  const apiAnswers = http.get(`${apiUrl}/api/v1/servers/localhost`).pipe(
    Effect.map((response) => response.status === 200),
    (probe) => within(probe, Duration.seconds(1)),
    Effect.map(Option.getOrElse(() => false)),
    Effect.orElseSucceed(() => false)
  )

  const lock = yield* Effect.makeSemaphore(1)
  let current: Option.Option<Child> = Option.none()
  const context = yield* Effect.context<FileSystem.FileSystem>()

  const launch = Effect.gen(function*() {
    if (Option.isSome(current) && !(yield* hasExited(current.value))) return
    // A killed previous run may have left a server on this directory (and its ports).
    yield* stopStaleProcess(pidFile, "pdns_server")
    const child = yield* spawnChild("pdns_server", [`--config-dir=${dir}`], { logFile }).pipe(
      Effect.mapError((e) => new PowerDnsProcessError({ message: e.message, cause: e.cause }))
    )
    current = Option.some(child)
    const failure = yield* awaitReady(child, apiAnswers, {
      pollMs: 50,
      timeoutMs: 15_000,
      notReady: "its API did not answer within 15 s"
    })
    if (Option.isSome(failure)) {
      return yield* new PowerDnsProcessError({
        message: `pdns_server failed to start (${failure.value}); ${logFile}:\n${yield* tailFile(logFile)}`
      })
    }
  }).pipe(Effect.withSpan("PowerDnsProcess.launch"))

  const halt = Effect.gen(function*() {
    if (Option.isNone(current)) return
    yield* terminateChild(current.value, { signal: "SIGTERM", graceMs: 5000 })
    current = Option.none()
  }).pipe(Effect.withSpan("PowerDnsProcess.stop"))

  const handle: PowerDnsHandle = {
    apiUrl,
    apiKey: options.apiKey,
    serverId: "localhost",
    zone,
    dnsPort,
    apiPort,
    logFile,
    stop: lock.withPermits(1)(halt),
    start: lock.withPermits(1)(launch).pipe(Effect.provide(context)),
    isRunning: Effect.suspend(() =>
      Option.isSome(current) ? Effect.map(hasExited(current.value), (done) => !done) : Effect.succeed(false)
    )
  }
  yield* Effect.acquireRelease(handle.start, () => handle.stop)

  // The zone lives in the sqlite file, so it survives restarts; create it once. Without API
  // rectify: PowerDNS would otherwise rectify the whole zone (list every record) on every API
  // change, so each start's PATCH would grow with the zone; a zone without DNSSEC needs none.
  const zoneUrl = `${apiUrl}/api/v1/servers/localhost/zones/${encodeURIComponent(zone)}`
  const existing = yield* http.get(`${zoneUrl}?rrsets=false`).pipe(Effect.mapError(fail(`cannot read zone ${zone}`)))
  if (existing.status === 404) {
    // 4.7 accepts an empty nameserver list and adds a default SOA itself.
    const created = yield* http.execute(
      HttpClientRequest.post(`${apiUrl}/api/v1/servers/localhost/zones`).pipe(
        HttpClientRequest.bodyUnsafeJson({ name: zone, kind: "Native", nameservers: [], api_rectify: false })
      )
    ).pipe(Effect.mapError(fail(`cannot create zone ${zone}`)))
    if (created.status !== 201 && created.status !== 409) {
      const body = yield* created.text.pipe(Effect.orElseSucceed(() => ""))
      return yield* new PowerDnsProcessError({ message: `creating zone ${zone} answered ${created.status}: ${body}` })
    }
  } else if (existing.status === 200) {
    // A zone an earlier version created (with API rectify on): turned off once.
    const changed = yield* http.execute(
      HttpClientRequest.put(zoneUrl).pipe(HttpClientRequest.bodyUnsafeJson({ api_rectify: false }))
    ).pipe(Effect.mapError(fail(`cannot change zone ${zone}`)))
    if (changed.status !== 204 && changed.status !== 200) {
      return yield* new PowerDnsProcessError({ message: `turning API rectify off for zone ${zone} answered ${changed.status}` })
    }
  } else {
    return yield* new PowerDnsProcessError({ message: `reading zone ${zone} answered ${existing.status}` })
  }

  yield* Effect.annotateCurrentSpan({ dir, zone, dnsPort, apiPort })
  return handle
}, (effect) => Effect.provide(effect, [NodeContext.layer, FetchHttpClient.layer]))

const RRSets = Schema.Struct({
  rrsets: Schema.Array(Schema.Struct({
    name: Schema.String,
    type: Schema.String,
    records: Schema.Array(Schema.Struct({ content: Schema.String }))
  }))
})

/** The zone's rrsets, flattened to `{ name, type, content[] }` (for tests). */
export const listRecords = Effect.fn("PowerDnsProcess.listRecords")(function*(handle: PowerDnsHandle) {
  const http = yield* HttpClient.HttpClient
  const response = yield* http.get(
    `${handle.apiUrl}/api/v1/servers/${handle.serverId}/zones/${encodeURIComponent(handle.zone)}`,
    { headers: { "X-API-Key": Redacted.value(handle.apiKey) } }
  ).pipe(
    Effect.flatMap(HttpClientResponse.filterStatusOk),
    Effect.flatMap(HttpClientResponse.schemaBodyJson(RRSets)),
    Effect.mapError((cause) => new PowerDnsProcessError({ message: `cannot list records of ${handle.zone}`, cause }))
  )
  return response.rrsets.map((rrset) => ({
    name: rrset.name,
    type: rrset.type,
    content: rrset.records.map((record) => record.content)
  }))
}, (effect) => Effect.provide(effect, FetchHttpClient.layer))
