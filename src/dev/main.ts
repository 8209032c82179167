import { FileSystem } from "@effect/platform"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { SqlClient } from "@effect/sql"
import { Config, ConfigProvider, Console, Effect, Layer, Option, Redacted, Schema } from "effect"
import { ApiToken, DatabaseConfig, ListenConfig } from "../config.ts"
import { randomBytes, randomUUID } from "node:crypto"
import path from "node:path"
import { AppLive, ServicesLive } from "../app.ts"
import { AllocationStore } from "../allocation/AllocationStore.ts"
import { GatewayName, OrganizationId, Upstream } from "../domain/ids.ts"
import { GatewayStore } from "../pool/GatewayStore.ts"
import { LoggingLive } from "../telemetry/Logging.ts"
import { TracingLive } from "../telemetry/Tracing.ts"
import { startDevEdges } from "./edges.ts"
import { type LocalStack, startLocalStack } from "./stack.ts"
import { type ClaimOutlook, DEMO_ORG, welcome } from "./welcome.ts"

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

/**
 * The sample gateways join the pool once; later runs find them by name. Each run starts them
 * afresh, so a quarantine (and its backoff) an earlier run gave one is stale: it is lifted, and
 * the welcome's demos find every sample gateway free.
 */
const registerSampleGateways = (stack: LocalStack) =>
  Layer.effectDiscard(
    Effect.gen(function*() {
      const gateways = yield* GatewayStore
      const known = new Map((yield* gateways.listGateways()).map((gateway) => [gateway.name, gateway]))
      for (const sample of stack.gateways) {
        const name = GatewayName.make(sample.name)
        const gateway = known.get(name)
        if (gateway === undefined) yield* gateways.addGateway(name, Upstream.make(sample.upstream))
        else yield* gateways.markHealthy(gateway.gatewayId, true)
      }
    })
  )

const decodeNames = Schema.decodeUnknown(Schema.Array(Schema.Struct({ name: Schema.String })))

/** What the welcome predicts from: the gateway DEMO_ORG holds, and the next free ones in claim order. */
const claimOutlook = Effect.fn("DevStack.claimOutlook")(function*() {
  const sql = yield* SqlClient.SqlClient
  const allocations = yield* AllocationStore
  const gateways = yield* GatewayStore
  const live = yield* allocations.findLive(OrganizationId.make(DEMO_ORG))
  const pool = yield* gateways.listGateways()
  // The claim's own view, so the prediction follows the claim (database/0009).
  const next = yield* decodeNames(yield* sql`select c.name from gateways_claim_order c limit 3`)
  const held = Option.flatMap(live, (allocation) =>
    Option.fromNullable(pool.find((gateway) => gateway.gatewayId === allocation.gatewayId)))
  return {
    orgHolds: Option.match(held, { onNone: () => null, onSome: (gateway) => gateway.name }),
    claimOrder: next.map((row) => row.name)
  } satisfies ClaimOutlook
})

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
      ports: { nginx: 8081, nginxRouteApi: 8089, nginxTls: 8443, powerDnsApi: 8082, powerDnsDns: 8053, firstGateway: 9001 },
      // HTTPS as in production: a wildcard certificate for the domain, signed by a dev CA.
      tls: true,
      ...(Option.isSome(database.url) ? { databaseUrl: database.url.value } : {})
    })
    // What the stack manages wins; the rest (PORT, LOG_FORMAT, timeouts...) comes from the env.
    const config = ConfigProvider.fromMap(new Map(Object.entries(stack.env))).pipe(
      ConfigProvider.orElse(() => ConfigProvider.fromEnv()),
      ConfigProvider.orElse(() => ConfigProvider.fromMap(new Map([["LOG_FORMAT", "pretty"], ["HOST", "127.0.0.1"]])))
    )
    // A new second org each run: an earlier run's may still hold a gateway, and its start would be reused.
    const secondOrg = randomUUID()
    // Logging and tracing wrap everything, so services built for the registration log alike. The
    // welcome reads the pool once the API listens and the sample gateways are registered.
    const printWelcome = Effect.gen(function*() {
      const edges = yield* startDevEdges(dataDir)
      const outlook = yield* claimOutlook()
      yield* Console.log(welcome(stack, port, outlook, secondOrg, edges))
    })
    return Layer.scopedDiscard(printWelcome).pipe(
      Layer.provide(Layer.mergeAll(AppLive, registerSampleGateways(stack)).pipe(Layer.provideMerge(ServicesLive))),
      Layer.provide(Layer.merge(LoggingLive, TracingLive)),
      Layer.provide(Layer.setConfigProvider(config))
    )
  })
)

DevLive.pipe(Layer.provide(NodeContext.layer), Layer.launch, NodeRuntime.runMain({ disablePrettyLogger: true }))
