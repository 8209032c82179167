// Every environment variable the service reads, in one place: each is defined (default,
// validation, normalisation) here and read by exactly one layer. What several services share
// (the domain and the time limits) is the `Settings` service, read once; PowerDNS's config also
// reads DOMAIN, to check that PDNS_ZONE contains it.
import { Config, ConfigError, Effect, Either, LogLevel, Option, Redacted } from "effect"
import { isIPv4 } from "node:net"
import * as nodePath from "node:path"

const hostnamePattern = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/
const listenPattern = /^((\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:]+\]|[a-z0-9.-]+):)?\d{1,5}$/i

const milliseconds = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.withDefault(fallback),
    Config.validate({ message: `${name} must be a positive number of milliseconds`, validation: (ms) => ms > 0 })
  )

/** DOMAIN: hostnames are `org-{uuid}.{DOMAIN}`. Lowercase, without a trailing dot. */
const domain = Config.string("DOMAIN").pipe(
  Config.withDefault("domain.local"),
  Config.map((value) => value.trim().toLowerCase().replace(/\.$/, "")),
  Config.validate({ message: "DOMAIN must be a DNS name", validation: (value) => hostnamePattern.test(value) })
)

// How many forward steps and undos a start has, for the bounds below.
const STEPS = 5
const UNDOS = 5
/** Each step or undo writes two journal rows (started, then its outcome). */
const JOURNAL_WRITES_PER_STEP = 2

/**
 * The bounds that follow from the timeouts. Every step is bounded by STEP_TIMEOUT_MS; every
 * undo, journal write and state transition by UNDO_TIMEOUT_MS.
 */
const limitsOf = (stepTimeoutMs: number, undoTimeoutMs: number) => {
  /** The forward path: five steps with their journal rows, then the transition that ends it. */
  const startBoundMs = STEPS * (stepTimeoutMs + JOURNAL_WRITES_PER_STEP * undoTimeoutMs) + undoTimeoutMs
  /** A rollback, a stop or a recovery: every undo with its journal rows. */
  const teardownBoundMs = UNDOS * (1 + JOURNAL_WRITES_PER_STEP) * undoTimeoutMs
  return {
    /**
     * One call to an outside system (a PowerDNS request, an nginx command or probe, a gateway
     * request), retries included: well inside the step or undo that makes it, so a stalled
     * system fails the call, not the whole step, and cannot stall drift repair or recovery.
     */
    outsideCallMs: Math.max(100, Math.floor(Math.min(stepTimeoutMs, undoTimeoutMs) / 2)),
    startBoundMs,
    teardownBoundMs,
    /**
     * An allocation in a transitional state whose row nobody touched for this long has no
     * pipeline left working on it, whatever its runner's lease says (a frozen process): the
     * reconciler takes it over.
     */
    recoveryDeadlineMs: startBoundMs + teardownBoundMs,
    /** How long a stop waits for a start (or its rollback) of the same org to finish. */
    settleWaitMs: startBoundMs + teardownBoundMs
  }
}

/**
 * A file nginx reads (a certificate, a key), as an absolute path it reads literally: nginx
 * resolves a relative path against its own prefix, not the service's directory, and treats `$`
 * in these paths as a variable (loading the file on every handshake).
 */
const nginxFilePath = (name: string) =>
  Config.option(Config.string(name)).pipe(
    // Set empty: unset, as an operator clears a variable.
    Config.map((file) => Option.map(Option.filter(file, (f) => f.trim() !== ""), (f) => nodePath.resolve(f.trim()))),
    Config.validate({
      message: `${name} must be a file path without quotes, backslashes, '$', ';', braces or control characters`,
      validation: (file) => Option.isNone(file) || !/["\\$;{}\u0000-\u001f]/.test(file.value)
    })
  )

/**
 * NGINX_TLS_*: the org server block also serves HTTPS (HTTP/2, WebSockets) with one certificate,
 * a wildcard `*.{DOMAIN}`; NGINX_HTTP=redirect answers plain HTTP with 308 to HTTPS. None: plain
 * HTTP only.
 */
const tls = Config.all({
  cert: nginxFilePath("NGINX_TLS_CERT"),
  key: nginxFilePath("NGINX_TLS_KEY"),
  listen: Config.string("NGINX_TLS_LISTEN").pipe(
    Config.withDefault("443"),
    Config.validate({ message: "NGINX_TLS_LISTEN must be PORT or HOST:PORT", validation: (s) => listenPattern.test(s) })
  ),
  http: Config.literal("serve", "redirect")("NGINX_HTTP").pipe(Config.withDefault("serve" as const))
}).pipe(
  Config.mapOrFail(({ cert, http, key, listen }): Either.Either<Option.Option<TlsListener>, ConfigError.ConfigError> => {
    if (Option.isSome(cert) && Option.isSome(key)) {
      return Either.right(Option.some({ certPath: cert.value, keyPath: key.value, listen, redirect: http === "redirect" }))
    }
    if (Option.isSome(cert) || Option.isSome(key)) {
      return Either.left(ConfigError.InvalidData(
        [Option.isSome(cert) ? "NGINX_TLS_KEY" : "NGINX_TLS_CERT"],
        "NGINX_TLS_CERT and NGINX_TLS_KEY go together: set both (the wildcard certificate for *.{DOMAIN} and its key), or neither"
      ))
    }
    return http === "redirect"
      ? Either.left(ConfigError.InvalidData(
        ["NGINX_HTTP"],
        "NGINX_HTTP=redirect needs NGINX_TLS_CERT and NGINX_TLS_KEY: without them there is no HTTPS to redirect to"
      ))
      : Either.right(Option.none())
  })
)

/** HTTPS on the org server block, as configured (the certificate itself is read by the edge that serves it). */
export interface TlsListener {
  readonly certPath: string
  readonly keyPath: string
  /** nginx's `listen` of the HTTPS listener (NGINX_TLS_LISTEN). */
  readonly listen: string
  /** NGINX_HTTP=redirect: the plain listener answers 308 to HTTPS (its probe and readiness excepted). */
  readonly redirect: boolean
}

/** Two `listen`s that nginx could not both bind: the same port, on the same address or on all of them. */
const sameListen = (a: string, b: string): boolean => {
  const host = (listen: string) => (listen.includes(":") ? listen.slice(0, listen.lastIndexOf(":")) : "*")
  return listenPort(a) === listenPort(b) && (host(a) === host(b) || host(a) === "*" || host(b) === "*")
}

/** The port of a `listen` (`443`, `127.0.0.1:8443`, `[::1]:443`). */
export const listenPort = (listen: string): string => listen.slice(listen.lastIndexOf(":") + 1)

/**
 * What the allocation core shares: the domain, the time limits and the bounds derived from them.
 */
export class Settings extends Effect.Service<Settings>()("Settings", {
  effect: Effect.gen(function*() {
    const settings = yield* Config.all({
      domain,
      /** The `listen` of the server block that serves org hostnames. */
      nginxListen: Config.string("NGINX_LISTEN").pipe(
        Config.withDefault("80"),
        Config.validate({ message: "NGINX_LISTEN must be PORT or HOST:PORT", validation: (s) => listenPattern.test(s) })
      ),
      nginxProbeUrl: Config.option(Config.url("NGINX_PROBE_URL")),
      tls,
      stepTimeoutMs: milliseconds("STEP_TIMEOUT_MS", 10_000),
      undoTimeoutMs: milliseconds("UNDO_TIMEOUT_MS", 10_000),
      shutdownGraceMs: milliseconds("SHUTDOWN_GRACE_MS", 10_000),
      reconcileIntervalMs: milliseconds("RECONCILE_INTERVAL_MS", 30_000),
      /** Gateways one start may try: a gateway's own failure moves on to another. */
      startAttempts: Config.integer("START_ATTEMPTS").pipe(
        Config.withDefault(3),
        Config.validate({ message: "START_ATTEMPTS must be between 1 and 10", validation: (n) => n >= 1 && n <= 10 })
      ),
      /** The first quarantine of a gateway that failed; it doubles with each failure in a row, up to 10 min. */
      gatewayQuarantineMs: milliseconds("GATEWAY_QUARANTINE_MS", 30_000),
      gatewayHealthIntervalMs: milliseconds("GATEWAY_HEALTH_INTERVAL_MS", 10_000),
      /** A health pass asks the next this-many gateways a claim would take, and as many others in rotation. */
      gatewayHealthBatch: Config.integer("GATEWAY_HEALTH_BATCH").pipe(
        Config.withDefault(64),
        Config.validate({ message: "GATEWAY_HEALTH_BATCH must be between 1 and 10000", validation: (n) => n >= 1 && n <= 10_000 })
      )
    })
    if (Option.isSome(settings.tls) && sameListen(settings.tls.value.listen, settings.nginxListen)) {
      return yield* Effect.fail(ConfigError.InvalidData(
        ["NGINX_TLS_LISTEN"],
        `NGINX_TLS_LISTEN (${settings.tls.value.listen}) must differ from NGINX_LISTEN (${settings.nginxListen}): HTTPS needs a port of its own`
      ))
    }
    /** Where requests through nginx's plain listener go (with an org's Host header): the route probe. */
    const edgeUrl = Option.match(settings.nginxProbeUrl, {
      onNone: () => `http://127.0.0.1:${listenPort(settings.nginxListen)}`,
      onSome: (url) => url.toString().replace(/\/$/, "")
    })
    return {
      ...settings,
      edgeUrl,
      /**
       * Where the health wait goes through nginx: the way users go, so over HTTPS (the probe's
       * host, NGINX_TLS_LISTEN's port, the org's name by SNI) when TLS is on.
       */
      healthUrl: Option.match(settings.tls, {
        onNone: () => edgeUrl,
        onSome: (tls) => `https://${new URL(edgeUrl).host.replace(/:\d+$/, "")}:${listenPort(tls.listen)}`
      }),
      limits: limitsOf(settings.stepTimeoutMs, settings.undoTimeoutMs)
    }
  })
}) {}

/** API_TOKEN: at least 16 characters; shorter (or empty) would make the API guessable. */
export const ApiToken = Config.redacted("API_TOKEN").pipe(
  Config.validate({
    message: "API_TOKEN must be at least 16 characters (e.g. openssl rand -hex 24)",
    validation: (token) => Redacted.value(token).length >= 16
  })
)

export const ListenConfig = Config.all({
  port: Config.integer("PORT").pipe(Config.withDefault(8080)),
  host: Config.string("HOST").pipe(Config.withDefault("0.0.0.0"))
})

export const DatabaseConfig = Config.all({
  /** Unset: an embedded PostgreSQL under DATA_DIR. */
  url: Config.option(Config.redacted("DATABASE_URL")),
  dataDir: Config.string("DATA_DIR").pipe(Config.withDefault("./.data"))
})

export const DnsProviderConfig = Config.literal("powerdns", "none")("DNS_PROVIDER").pipe(
  Config.withDefault("powerdns" as const)
)

export const PowerDnsConfig = Config.all({
  apiUrl: Config.url("PDNS_API_URL").pipe(Config.map((url) => url.toString().replace(/\/$/, ""))),
  apiKey: Config.redacted("PDNS_API_KEY"),
  serverId: Config.string("PDNS_SERVER_ID").pipe(Config.withDefault("localhost")),
  /** The zone the records go in, with its trailing dot: PDNS_ZONE, which must contain DOMAIN, or `{DOMAIN}.`. */
  zone: Config.all({ domain, zone: Config.option(Config.string("PDNS_ZONE")) }).pipe(
    Config.mapOrFail(({ domain, zone }) => {
      const name = Option.getOrElse(zone, () => domain).trim().toLowerCase().replace(/\.$/, "")
      return name === domain || domain.endsWith(`.${name}`)
        ? Either.right(`${name}.`)
        : Either.left(ConfigError.InvalidData(
          ["PDNS_ZONE"],
          `PDNS_ZONE (${name}.) must contain DOMAIN (${domain}): the records are org-{uuid}.${domain}.`
        ))
    })
  ),
  recordIp: Config.string("DNS_RECORD_IP").pipe(
    Config.withDefault("127.0.0.1"),
    Config.validate({ message: "DNS_RECORD_IP must be an IPv4 address (the A records point at it)", validation: (ip) => isIPv4(ip) })
  ),
  ttl: Config.integer("DNS_TTL").pipe(Config.withDefault(60))
})

/** `PORT`, `127.x.y.z:PORT`, `localhost:PORT` or `[::1]:PORT`: the route API answers on loopback only. */
const loopbackListen = /^((127(\.\d{1,3}){3}|localhost|\[::1\]):)?\d{1,5}$/i

/**
 * `lua`: routes live in a `lua_shared_dict` nginx reads per request, written through a route
 * API, never reloaded; `reload`: one route file per org and `nginx -s reload` (any nginx).
 */
export const nginxRouting = Config.literal("lua", "reload")("NGINX_ROUTING").pipe(Config.withDefault("lua" as const))

/**
 * The route table's shared memory (nginx size syntax): routes only. One route takes 256 bytes
 * of it (512 with an upstream over ~150 characters): the default holds ~260,000. A full table
 * refuses new routes (the start fails at nginx-config); it never evicts one.
 */
const routeTableSize = Config.string("NGINX_ROUTE_TABLE_SIZE").pipe(
  Config.withDefault("64m"),
  Config.validate({
    message: "NGINX_ROUTE_TABLE_SIZE must be a size nginx understands, at least 128k (e.g. 64m, 512k)",
    validation: (s) => routeTableBytes(s) >= 128 * 1024
  })
)

/**
 * The fences' shared memory (lua mode): a removal's fence takes 128 bytes and lasts
 * STEP_TIMEOUT_MS plus one outside call (15 s by default), one per org removed in that time.
 * The default holds ~32,000: 2,000 removals a second. When it has no room, a removal fails
 * (and is retried); routes never share it.
 */
const fenceTableSize = Config.string("NGINX_FENCE_TABLE_SIZE").pipe(
  Config.withDefault("4m"),
  Config.validate({
    message: "NGINX_FENCE_TABLE_SIZE must be a size nginx understands, at least 128k (e.g. 4m, 512k)",
    validation: (s) => routeTableBytes(s) >= 128 * 1024
  })
)

export const NginxConfig = Config.all({
  confDir: Config.string("NGINX_CONF_DIR"),
  bin: Config.string("NGINX_BIN").pipe(Config.withDefault("nginx")),
  mainConf: Config.option(Config.string("NGINX_MAIN_CONF")),
  routing: nginxRouting,
  reloadMode: Config.literal("coalesce", "each")("NGINX_RELOAD_MODE").pipe(Config.withDefault("coalesce" as const)),
  routeApiListen: Config.string("NGINX_ROUTE_API_LISTEN").pipe(
    Config.withDefault("127.0.0.1:8089"),
    Config.validate({
      message: "NGINX_ROUTE_API_LISTEN must be PORT or a loopback HOST:PORT (127.x.y.z, localhost, [::1])",
      validation: (s) => loopbackListen.test(s)
    })
  ),
  routeTableSize,
  fenceTableSize
})

/**
 * What the edges API reads of nginx's configuration (the same definitions as NginxConfig's): the
 * routing mode (reload mode keeps its one local edge) and the table sizes a remote edge's file is
 * rendered with. Not NGINX_CONF_DIR: the API needs no nginx directory of its own.
 */
export const EdgeFilesConfig = Config.all({ routing: nginxRouting, routeTableSize, fenceTableSize })

const routeTableBytes = (size: string): number => {
  const match = /^(\d+)([km]?)$/i.exec(size)
  if (match === null) return 0
  const unit = (match[2] ?? "").toLowerCase()
  return Number(match[1]) * (unit === "m" ? 1024 * 1024 : unit === "k" ? 1024 : 1)
}

/** Where the service reaches the route API that NGINX_ROUTE_API_LISTEN makes nginx listen on. */
export const routeApiUrl = (listen: string): string => {
  const colon = listen.lastIndexOf(":")
  if (colon < 0) return `http://127.0.0.1:${listen}`
  const host = listen.slice(0, colon).toLowerCase()
  return `http://${host === "localhost" ? "127.0.0.1" : host}:${listen.slice(colon + 1)}`
}

/** A gateway protocol path: absolute, no spaces (it is put in a URL as it is). */
const protocolPath = (name: string, fallback: string) =>
  Config.string(name).pipe(
    Config.withDefault(fallback),
    Config.validate({ message: `${name} must be an absolute path (e.g. ${fallback})`, validation: (p) => /^\/\S*$/.test(p) })
  )

export const HandshakeConfig = Config.all({
  healthPath: protocolPath("HEALTH_PATH", "/collab/ping"),
  handshakePath: protocolPath("HANDSHAKE_PATH", "/collab/start"),
  /**
   * RELEASE_PATH: the handshake's undo, `POST` once the org's routing is gone; the gateway closes
   * the allocation's connections and forgets the org. Set empty: no release call (the service
   * warns at start-up that an org's open connections can outlive its allocation).
   */
  releasePath: Config.string("RELEASE_PATH").pipe(
    Config.withDefault("/collab/stop"),
    Config.validate({
      message: "RELEASE_PATH must be an absolute path (e.g. /collab/stop), or empty for no release call",
      validation: (p) => p === "" || /^\/\S*$/.test(p)
    }),
    Config.map((p) => (p === "" ? Option.none<string>() : Option.some(p)))
  )
})

/** ROLLBACK_WEBHOOK_URL, checked at start-up: an absolute http(s) URL. */
export const WebhookUrl = Config.option(
  Config.redacted("ROLLBACK_WEBHOOK_URL").pipe(
    Config.mapOrFail((url: Redacted.Redacted<string>) => {
      const parsed = Either.try(() => new URL(Redacted.value(url)))
      return Either.isRight(parsed) && (parsed.right.protocol === "http:" || parsed.right.protocol === "https:")
        ? Either.right(url)
        : Either.left(ConfigError.InvalidData([], "ROLLBACK_WEBHOOK_URL must be an absolute http(s) URL"))
    })
  )
)

const otlpEndpoint = Config.option(Config.nonEmptyString("OTEL_EXPORTER_OTLP_ENDPOINT"))

export const OtlpConfig = Config.all({
  endpoint: otlpEndpoint,
  metricIntervalMs: Config.integer("OTEL_METRIC_EXPORT_INTERVAL").pipe(Config.withDefault(60_000))
})

/**
 * Where the console links a trace, `{trace_id}` replaced: TRACE_URL, or else Jaeger's UI (port
 * 16686) on the host of OTEL_EXPORTER_OTLP_ENDPOINT. None without an endpoint: traces go nowhere.
 */
export const TraceUrlConfig = Config.all({
  endpoint: otlpEndpoint,
  template: Config.option(
    Config.string("TRACE_URL").pipe(
      Config.validate({
        message: "TRACE_URL must be an http(s) URL containing {trace_id}",
        validation: (url) => /^https?:\/\//.test(url) && url.includes("{trace_id}")
      })
    )
  )
}).pipe(
  Config.map(({ endpoint, template }) =>
    Option.flatMap(endpoint, (otlp) =>
      Option.orElse(template, () =>
        Option.map(
          Option.liftThrowable(() => new URL(otlp))(),
          (url) => `${url.protocol}//${url.hostname}:16686/trace/{trace_id}`
        )))
  )
)

export const LogFormat = Config.literal("json", "pretty", "logfmt")("LOG_FORMAT").pipe(
  Config.withDefault("json" as const)
)

/**
 * LOG_LEVEL: Effect's labels (`Info`, `Warn`, `Error`, `Debug`, ...), any case; `Warning` is
 * accepted for `Warn`, as operators write it.
 */
export const LogLevelConfig = Config.string("LOG_LEVEL").pipe(
  Config.withDefault("Info"),
  Config.mapOrFail((text) => {
    const wanted = text.trim().toUpperCase().replace(/^WARNING$/, "WARN").replace(/^NONE$/, "OFF")
    const level = LogLevel.allLevels.find((candidate) => candidate.label === wanted)
    return level === undefined
      ? Either.left(ConfigError.InvalidData([], `LOG_LEVEL must be one of ${LogLevel.allLevels.map((l) => l.label).join(", ")}`))
      : Either.right(level)
  })
)
