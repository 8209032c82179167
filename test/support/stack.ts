import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { ConfigProvider, Context, Effect, Layer } from "effect"
import { makeServices, OutsideLive, ServicesLive as AppServicesLive } from "../../src/app.ts"
import { Nginx } from "../../src/nginx/Nginx.ts"
import type { Behaviour } from "../../src/dev/SampleGateway.ts"
import { type LocalStack, startLocalStack } from "../../src/dev/stack.ts"
import type { GatewayName, Upstream } from "../../src/domain/ids.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"

/** A real Postgres, nginx, PowerDNS and sample gateways, started for one test file. */
export class Stack extends Context.Tag("test/Stack")<Stack, LocalStack>() {}

export const StackLive = (
  options: {
    readonly gateways?: number
    readonly routing?: "lua" | "reload"
    readonly nginxWorkers?: number
    /** HTTPS on nginx with a dev CA's wildcard certificate (NGINX_TLS_*); `redirect`: NGINX_HTTP=redirect too. */
    readonly tls?: boolean | "redirect"
  } = {}
) =>
  Layer.scoped(
    Stack,
    Effect.flatMap(temporaryDirectory("gateway-allocator-"), (dataDir) =>
      startLocalStack({
        dataDir,
        gateways: options.gateways ?? 3,
        routing: options.routing ?? "lua",
        ...(options.nginxWorkers === undefined ? {} : { nginxWorkers: options.nginxWorkers }),
        ...(options.tls === undefined ? {} : { tls: options.tls })
      }))
  ).pipe(Layer.provide(NodeContext.layer))

/**
 * A temporary directory, removed when the scope closes: after what was started in it (its
 * finalizer runs last). An embedded Postgres cluster kept for it elsewhere (as root, under
 * /var/lib/gateway-allocator) is then swept by the next embedded start, which removes the clusters
 * whose DATA_DIR is gone: test runs do not pile up clusters.
 */
export const temporaryDirectory = (prefix: string) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) => fs.makeTempDirectoryScoped({ prefix })).pipe(Effect.provide(NodeContext.layer))

export const setAllGateways = (stack: LocalStack, behaviour: Partial<Behaviour>) =>
  Effect.forEach(stack.gateways, (gateway) => gateway.setBehaviour(behaviour), { discard: true })

/** Every sample gateway back to its initial behaviour, nothing held or received. */
export const resetGateways = (stack: LocalStack) => Effect.forEach(stack.gateways, (gateway) => gateway.reset, { discard: true })

/** The handshake bodies for `org` that the stack's sample gateways received, all of them together. */
export const handshakesFor = (stack: LocalStack, org: string) =>
  Effect.map(
    Effect.forEach(stack.gateways, (gateway) => gateway.handshakes),
    (received) => received.flat().filter((body) => (body as { organization_id?: string }).organization_id === org)
  )

/** Runs a test body with the stack, and puts every sample gateway back to "ok" afterwards. */
export const withStack = <A, E, R>(body: (stack: LocalStack) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(Stack, (stack) => body(stack).pipe(Effect.ensuring(resetGateways(stack))))

export const configFrom = (env: Readonly<Record<string, string>>) =>
  Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

/** `configFrom(env)` with DATA_DIR a temporary directory of its own, removed when the layer is released. */
export const configWithDataDir = (prefix: string, env: Readonly<Record<string, string>> = {}) =>
  Layer.unwrapScoped(Effect.map(temporaryDirectory(prefix), (dataDir) => configFrom({ ...env, DATA_DIR: dataDir })))

/**
 * The service's own layers (allocator, pool, journal, PowerDNS, nginx, handshake) configured for
 * the stack, nginx installed, the sample gateways registered in the pool.
 */
type NginxService = Context.Tag.Service<typeof Nginx>

/** The service's own layers, with its real Nginx wrapped when a test asks. */
const servicesFor = (stack: LocalStack, wrap: ((nginx: NginxService, stack: LocalStack) => NginxService) | undefined) =>
  wrap === undefined
    ? AppServicesLive
    : makeServices(Layer.effect(Nginx, Effect.map(Nginx, (nginx) => wrap(nginx, stack))).pipe(Layer.provideMerge(OutsideLive)))

export const ServicesLive = (
  overrides: Readonly<Record<string, string>> = {},
  options: {
    /** Wraps the service's real Nginx (to act on the real nginx at a precise point of a start). */
    readonly nginx?: (nginx: NginxService, stack: LocalStack) => NginxService
  } = {}
) =>
  Layer.unwrapEffect(
    Effect.map(Stack, (stack) =>
      Layer.effectDiscard(
        Effect.flatMap(GatewayStore, (pool) =>
          Effect.forEach(stack.gateways, (gateway) =>
            pool.addGateway(gateway.name as GatewayName, gateway.upstream as Upstream)))
      ).pipe(
        Layer.provideMerge(servicesFor(stack, options.nginx)),
        Layer.provide(configFrom({
          STEP_TIMEOUT_MS: "3000",
          UNDO_TIMEOUT_MS: "3000",
          // One gateway per start, no quarantine: these suites fail gateways on purpose.
          START_ATTEMPTS: "1",
          GATEWAY_QUARANTINE_MS: "1",
          ...stack.env,
          ...overrides
        }))
      ))
  )
