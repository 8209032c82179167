import { FileSystem } from "@effect/platform"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Config, ConfigProvider, Console, Effect, Layer, Option, Redacted } from "effect"
import { ApiToken, DatabaseConfig, ListenConfig } from "../config.ts"
import { randomBytes } from "node:crypto"
import path from "node:path"
import { AppLive, ServicesLive } from "../app.ts"
import { GatewayName, Upstream } from "../domain/ids.ts"
import { GatewayStore } from "../pool/GatewayStore.ts"
import { LoggingLive } from "../telemetry/Logging.ts"
import { TracingLive } from "../telemetry/Tracing.ts"
import { type LocalStack, startLocalStack } from "./stack.ts"

/** A token kept under DATA_DIR, so curl lines keep working across restarts of the dev stack. */
const devToken = (dataDir: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    yield* fs.makeDirectory(dataDir, { recursive: true, mode: 0o755 })
    const file = path.join(dataDir, "dev-api-token")
    if (yield* fs.exists(file)) return (yield* fs.readFileString(file)).trim()
    const token = randomBytes(24).toString("base64url")
    yield* fs.writeFileString(file, `${token}\n`, { mode: 0o600 })
    return token
  })

/** The sample gateways join the pool once; later runs find them by name. */
const registerSampleGateways = (stack: LocalStack) =>
  Layer.effectDiscard(
    Effect.gen(function*() {
      const gateways = yield* GatewayStore
      const known = new Set((yield* gateways.listGateways()).map((gateway) => gateway.name))
      for (const gateway of stack.gateways) {
        const name = GatewayName.make(gateway.name)
        if (!known.has(name)) yield* gateways.addGateway(name, Upstream.make(gateway.upstream))
      }
    })
  )

const welcome = (stack: LocalStack, port: number) => {
  const api = `http://127.0.0.1:${port}`
  const auth = `-H 'authorization: Bearer ${stack.apiToken}'`
  const org = "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"
  const randomUUIDForDemo = "7c0d5b8e-2f41-4c7a-9e36-5a1b2c3d4e5f"
  return [
    "",
    "gateway-allocator dev stack is up",
    `  API          ${api}   (token: ${stack.apiToken})`,
    `  console      ${api}/console   (enter the token above)`,
    stack.env.NGINX_ROUTING === "reload"
      ? `  nginx        http://127.0.0.1:${stack.nginx.listenPort}   (routes in ${stack.nginx.confDir}/routes)`
      : `  nginx        http://127.0.0.1:${stack.nginx.listenPort}   (routes in its shared memory; route API on 127.0.0.1:${stack.nginx.routeApiPort})`,
    `  PowerDNS     ${stack.powerDns.apiUrl}   (DNS on 127.0.0.1:${stack.powerDns.dnsPort}, zone ${stack.powerDns.zone})`,
    `  gateways     ${stack.gateways.map((g) => `${g.name}=${g.upstream}`).join("  ")}`,
    "",
    "Try:",
    `  curl -s ${auth} ${api}/pool`,
    `  curl -s ${auth} -H 'content-type: application/json' -d '{"organization_id":"${org}"}' ${api}/gateway/start`,
    `  curl -s -H 'host: org-${org}.domain.local' http://127.0.0.1:${stack.nginx.listenPort}/hello`,
    `  dig +short @127.0.0.1 -p ${stack.powerDns.dnsPort} org-${org}.domain.local`,
    `  curl -s ${auth} -H 'content-type: application/json' -d '{"organization_id":"${org}"}' ${api}/gateway/stop`,
    "A dead gateway (the first one refuses its handshake): a new org's start sets it aside and succeeds on another;",
    "the pool shows it quarantined, and it comes back once it answers again:",
    ...stack.gateways.slice(0, 1).map((g) => `  curl -s -d '{"handshake":"fail"}' http://${g.upstream}/__control`),
    `  curl -s ${auth} -H 'content-type: application/json' -d '{"organization_id":"${randomUUIDForDemo}"}' ${api}/gateway/start`,
    `  curl -s ${auth} ${api}/pool`,
    "Force a failure (every sample gateway refuses the handshake), start, and watch every attempt roll back:",
    ...stack.gateways.map((g) =>
      `  curl -s -d '{"handshake":"fail"}' http://${g.upstream}/__control`
    ),
    `  curl -s ${auth} -H 'content-type: application/json' -d '{"organization_id":"${org}"}' ${api}/gateway/start`,
    ""
  ].join("\n")
}

/**
 * `npm run dev`: embedded Postgres, a private nginx and PowerDNS, three sample gateways, and the
 * service itself on PORT (8080), all on loopback under DATA_DIR (./.data).
 */
const DevLive = Layer.unwrapScoped(
  Effect.gen(function*() {
    const database = yield* DatabaseConfig
    const dataDir = path.resolve(database.dataDir)
    const { port } = yield* ListenConfig
    const apiToken = yield* Config.option(ApiToken)
    yield* Effect.logInfo(`starting the dev stack under ${dataDir}`)
    const stack = yield* startLocalStack({
      dataDir,
      apiToken: Option.isSome(apiToken) ? Redacted.value(apiToken.value) : yield* devToken(dataDir),
      ports: { nginx: 8081, nginxRouteApi: 8089, powerDnsApi: 8082, powerDnsDns: 8053, firstGateway: 9001 },
      ...(Option.isSome(database.url) ? { databaseUrl: database.url.value } : {})
    })
    // What the stack manages wins; the rest (PORT, LOG_FORMAT, timeouts...) comes from the env.
    const config = ConfigProvider.fromMap(new Map(Object.entries(stack.env))).pipe(
      ConfigProvider.orElse(() => ConfigProvider.fromEnv()),
      ConfigProvider.orElse(() => ConfigProvider.fromMap(new Map([["LOG_FORMAT", "pretty"], ["HOST", "127.0.0.1"]])))
    )
    // Logging and tracing wrap everything, so services built for the registration log alike.
    return Layer.effectDiscard(Console.log(welcome(stack, port))).pipe(
      Layer.provide(Layer.mergeAll(AppLive, registerSampleGateways(stack).pipe(Layer.provide(ServicesLive)))),
      Layer.provide(Layer.merge(LoggingLive, TracingLive)),
      Layer.provide(Layer.setConfigProvider(config))
    )
  })
)

DevLive.pipe(Layer.provide(NodeContext.layer), Layer.launch, NodeRuntime.runMain({ disablePrettyLogger: true }))
