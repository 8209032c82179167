// `EDGES=N npm run dev`: N nginx edges instead of one. The stack's nginx is the local edge; each
// other one is an nginx of its own under DATA_DIR, on the next ports (edge 2: org listener
// 8091, route API 8099; edge 3: 8101, 8109; ...), registered with the service as an operator
// would (the registry, then the file rendered for it) and started with that file.
import { Config, Effect, Either, Redacted } from "effect"
import path from "node:path"
import { NginxConfig, Settings } from "../config.ts"
import { EdgeName } from "../domain/edge.ts"
import { renderEdgeConfig } from "../edges/edgeConfig.ts"
import { EdgeRegistry } from "../edges/EdgeRegistry.ts"
import { EdgeSet } from "../edges/EdgeSet.ts"
import { startNginx } from "./NginxProcess.ts"

/** How many edges the dev stack runs (EDGES, default 1: the local one). */
export const DevEdges = Config.integer("EDGES").pipe(
  Config.withDefault(1),
  Config.validate({ message: "EDGES must be 1 to 5", validation: (n) => n >= 1 && n <= 5 })
)

export interface DevEdge {
  readonly name: string
  readonly listenPort: number
  readonly routeApiPort: number
}

/** The ports of the dev stack's edge number `n` (2 and up), next to the local edge's 8081 and 8089. */
const portsOf = (n: number) => ({ listenPort: 8081 + 10 * (n - 1), routeApiPort: 8089 + 10 * (n - 1) })

/** Registers (once; later runs find them by name) and starts edges 2..EDGES under `dataDir`; stopped with the Scope. */
export const startDevEdges = (dataDir: string) => Effect.gen(function*() {
  const count = yield* DevEdges
  const config = yield* NginxConfig
  const registry = yield* EdgeRegistry
  // Edges an earlier run with a larger EDGES registered, whose nginx this run does not start: left
  // registered, they would owe every removal and hold every gateway.
  for (const edge of yield* registry.list()) {
    const n = /^edge-(\d+)$/.exec(edge.name)?.[1]
    if (!edge.local && n !== undefined && Number(n) > (config.routing === "lua" ? count : 1)) {
      yield* registry.remove(edge.edgeId).pipe(Effect.catchTag("EdgeIsLocal", () => Effect.succeed(0)))
      yield* Effect.logInfo(`edge ${edge.name} of an earlier run with more EDGES is no longer registered`)
    }
  }
  if (count > 1 && config.routing !== "lua") {
    yield* Effect.logWarning("EDGES needs NGINX_ROUTING=lua: the dev stack runs its one local edge")
    return []
  }
  const { domain } = yield* Settings
  const started: Array<DevEdge> = []
  for (let n = 2; n <= count; n++) {
    const name = EdgeName.make(`edge-${n}`)
    const ports = portsOf(n)
    const known = (yield* registry.list()).find((edge) => edge.name === name)
    if (known === undefined) {
      yield* registry.add({
        name,
        routeApiUrl: `http://127.0.0.1:${ports.routeApiPort}`,
        probeUrl: `http://127.0.0.1:${ports.listenPort}`
      })
    }
    const endpoint = (yield* registry.endpoints()).find((edge) => edge.name === name)
    if (endpoint === undefined) return yield* Effect.dieMessage(`edge ${name} vanished from the registry`)
    const file = renderEdgeConfig(
      { routeApiUrl: endpoint.routeApiUrl, probeUrl: endpoint.probeUrl, secret: Redacted.value(endpoint.secret) },
      { domain, tableSize: config.routeTableSize, fenceTableSize: config.fenceTableSize }
    )
    if (Either.isLeft(file)) return yield* Effect.dieMessage(`edge ${name}: ${file.left}`)
    yield* startNginx({
      dir: path.join(dataDir, `nginx-${name}`),
      listenPort: ports.listenPort,
      routeApiPort: ports.routeApiPort,
      workers: 2,
      confFiles: [{ name: "gateway-allocator.conf", text: file.right }]
    })
    started.push({ name, ...ports })
  }
  // Taken up at once (the watcher reads the registry every second anyway).
  yield* Effect.flatMap(EdgeSet, (set) => set.refresh)
  return started
})
