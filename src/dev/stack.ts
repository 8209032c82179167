import { FileSystem } from "@effect/platform"
import { Effect, Redacted } from "effect"
import { randomBytes } from "node:crypto"
import path from "node:path"
import { startEmbeddedPostgres } from "../db/EmbeddedPostgres.ts"
import { type DevCertificate, devCertificate } from "./certificate.ts"
import { type NginxHandle, startNginx } from "./NginxProcess.ts"
import { ensureDebianPackages } from "./packages.ts"
import { type PowerDnsHandle, startPowerDns } from "./PowerDnsProcess.ts"
import { type SampleGatewayHandle, startSampleGateway } from "./SampleGateway.ts"

export interface LocalStack {
  /** The service's configuration (environment variables) pointing at this stack. */
  readonly env: Readonly<Record<string, string>>
  readonly databaseUrl: Redacted.Redacted<string>
  readonly nginx: NginxHandle
  readonly powerDns: PowerDnsHandle
  readonly gateways: ReadonlyArray<SampleGatewayHandle>
  readonly apiToken: string
  /** With `tls`: the wildcard certificate nginx serves HTTPS with, and the CA that signed it. */
  readonly certificate?: DevCertificate
}

/**
 * Postgres (embedded), nginx and PowerDNS on loopback under `dataDir`, plus sample gateways:
 * what `npm run dev` runs and what the integration tests start. Everything stops with the Scope.
 */
export const startLocalStack = Effect.fn("LocalStack.start")(function*(options: {
  readonly dataDir: string
  readonly domain?: string
  readonly gateways?: number
  /** Where the sample gateways listen (127.0.0.1 by default; the bench uses 0.0.0.0 to reach them on all of 127/8). */
  readonly gatewayHost?: string
  readonly apiToken?: string
  /** NGINX_ROUTING for the service (default lua). */
  readonly routing?: "lua" | "reload"
  /**
   * HTTPS on the org server block (NGINX_TLS_*): a wildcard certificate for the domain, signed by
   * a dev CA under `{dataDir}/tls`; `redirect` also sets NGINX_HTTP=redirect.
   */
  readonly tls?: boolean | "redirect"
  /** nginx's worker_processes. */
  readonly nginxWorkers?: number
  /** A Postgres the caller brings (DATABASE_URL); an embedded one is started otherwise. */
  readonly databaseUrl?: Redacted.Redacted<string>
  /** Fixed ports (stable across `npm run dev` runs); free ports are picked when absent. */
  readonly ports?: {
    readonly nginx?: number
    readonly nginxRouteApi?: number
    readonly nginxTls?: number
    readonly powerDnsApi?: number
    readonly powerDnsDns?: number
    readonly firstGateway?: number
  }
}) {
  const fs = yield* FileSystem.FileSystem
  yield* ensureDebianPackages
  const dataDir = path.resolve(options.dataDir)
  yield* fs.makeDirectory(dataDir, { recursive: true, mode: 0o755 })
  const domain = options.domain ?? "domain.local"
  const apiToken = options.apiToken ?? randomBytes(24).toString("base64url")
  const pdnsKey = Redacted.make(randomBytes(16).toString("hex"))

  const [databaseUrl, nginx, powerDns] = yield* Effect.all([
    options.databaseUrl === undefined
      ? Effect.map(startEmbeddedPostgres({ dataDir }), (pg) => pg.url)
      : Effect.succeed(options.databaseUrl),
    startNginx({
      dir: path.join(dataDir, "nginx"),
      ...optional("listenPort", options.ports?.nginx),
      ...optional("routeApiPort", options.ports?.nginxRouteApi),
      ...optional("tlsPort", options.ports?.nginxTls),
      // lua: several workers, as in production, since a route must reach every one without a reload.
      workers: options.nginxWorkers ?? ((options.routing ?? "lua") === "lua" ? 4 : 1)
    }),
    startPowerDns({
      dir: path.join(dataDir, "powerdns"),
      zone: `${domain}.`,
      apiKey: pdnsKey,
      ...optional("apiPort", options.ports?.powerDnsApi),
      ...optional("dnsPort", options.ports?.powerDnsDns)
    })
  ], { concurrency: "unbounded" })

  const gateways = yield* Effect.forEach(
    Array.from({ length: options.gateways ?? 3 }, (_, i) => `gateway-${i + 1}`),
    (name, i) =>
      startSampleGateway({
        name,
        ...optional("host", options.gatewayHost),
        ...optional("port", options.ports?.firstGateway === undefined ? undefined : options.ports.firstGateway + i)
      }),
    { concurrency: "unbounded" }
  )

  const certificate = options.tls === undefined || options.tls === false
    ? undefined
    : yield* devCertificate(path.join(dataDir, "tls"), domain)

  const env: Record<string, string> = {
    API_TOKEN: apiToken,
    DATABASE_URL: Redacted.value(databaseUrl),
    DATA_DIR: dataDir,
    DOMAIN: domain,
    DNS_PROVIDER: "powerdns",
    PDNS_API_URL: powerDns.apiUrl,
    PDNS_API_KEY: Redacted.value(pdnsKey),
    PDNS_SERVER_ID: powerDns.serverId,
    PDNS_ZONE: powerDns.zone,
    NGINX_CONF_DIR: nginx.confDir,
    NGINX_MAIN_CONF: nginx.mainConf,
    NGINX_BIN: nginx.bin,
    NGINX_LISTEN: `127.0.0.1:${nginx.listenPort}`,
    NGINX_ROUTE_API_LISTEN: `127.0.0.1:${nginx.routeApiPort}`,
    NGINX_ROUTING: options.routing ?? "lua",
    ...(certificate === undefined ? {} : {
      NGINX_TLS_CERT: certificate.certPath,
      NGINX_TLS_KEY: certificate.keyPath,
      NGINX_TLS_LISTEN: `127.0.0.1:${nginx.tlsPort}`,
      ...(options.tls === "redirect" ? { NGINX_HTTP: "redirect" } : {})
    })
  }
  return {
    env,
    databaseUrl,
    nginx,
    powerDns,
    gateways,
    apiToken,
    ...(certificate === undefined ? {} : { certificate })
  } satisfies LocalStack
})

const optional = <K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } =>
  (value === undefined ? {} : { [key]: value }) as { [P in K]?: V }
