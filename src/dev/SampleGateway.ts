// A gateway that speaks the gateway protocol (see src/handshake/Handshake.ts) the way a real one
// should, with switchable faults, for tests, `npm run dev` and the benchmark. Also runnable alone:
//   tsx src/dev/SampleGateway.ts --port 9001 [--name gw-1] [--health fail] [--handshake hang] [--delay 500]
//     [--release fail] [--health-path P] [--handshake-path P] [--release-path P]
// Its parts, under src/dev/sampleGateway/: model (behaviour, bodies, options, handle), protocol (the
// HTTP requests), streams (server-sent events, WebSockets), connections (closed by a release),
// context (shared state, isolation checks), http (JSON in and out), cli.
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Either } from "effect"
import * as http from "node:http"
import type * as net from "node:net"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import { parseArgs } from "./sampleGateway/cli.ts"
import { makeContext } from "./sampleGateway/context.ts"
import {
  type Behaviour,
  defaultBehaviour,
  SampleGatewayError,
  type SampleGatewayHandle,
  type SampleGatewayOptions
} from "./sampleGateway/model.ts"
import { makeRequestHandler } from "./sampleGateway/protocol.ts"
import { makeUpgradeHandler } from "./sampleGateway/streams.ts"

export {
  ALLOCATION_HEADER,
  Behaviour,
  defaultBehaviour,
  Held,
  ReleaseRequest,
  SampleGatewayError
} from "./sampleGateway/model.ts"
export type { SampleGatewayHandle, SampleGatewayOptions } from "./sampleGateway/model.ts"

const isLoopback = (address: string | undefined): boolean =>
  address !== undefined && (address.startsWith("127.") || address.startsWith("::ffff:127.") || address === "::1")

/**
 * Listens on `host:port` (default 127.0.0.1 and a free port) until the Scope closes; closing
 * destroys hanging requests, streams and WebSockets so it never waits on them.
 *
 * - `GET {healthPath}`: per the behaviour, whatever it holds and whatever the headers.
 * - `POST {handshakePath}`: takes the allocation (409 while it holds another one).
 * - `POST {releasePath}`: closes every connection of the allocation, forgets it if held, then 200.
 * - Anything else must carry `X-Gateway-Allocation: {the held allocation}`, or gets a 421:
 *   `GET /stream` (server-sent events), a WebSocket upgrade (101, then an echo), or any other
 *   path: 200 `{gateway, path, method, host, allocation, organization_id}`.
 * - `/__control` (POST a `Partial<Behaviour>`, GET), `GET /__handshakes`, `GET /__releases`,
 *   `GET /__held`, `POST /__reset`: drive it from another process (no header needed).
 */
export const startSampleGateway = Effect.fn("SampleGateway.start")(function*(options: SampleGatewayOptions = {}) {
  const initial: Behaviour = { ...defaultBehaviour, ...options.behaviour }
  const ctx = makeContext({
    name: options.name ?? "sample-gateway",
    initial,
    paths: {
      health: options.healthPath ?? "/collab/ping",
      handshake: options.handshakePath ?? "/collab/start",
      release: options.releasePath ?? "/collab/stop"
    },
    streamIntervalMs: options.streamIntervalMs ?? 50
  })
  const { state, connections, timers } = ctx

  const server = yield* Effect.acquireRelease(
    Effect.async<http.Server, SampleGatewayError>((resume) => {
      const server = http.createServer(makeRequestHandler(ctx))
      server.on("upgrade", makeUpgradeHandler(ctx))
      // Bound to every address (to answer on all of 127/8), it still serves loopback only.
      server.on("connection", (socket: net.Socket) => {
        if (!isLoopback(socket.remoteAddress)) socket.destroy()
      })
      server.once("error", (cause) =>
        resume(Effect.fail(new SampleGatewayError({ message: `sample gateway cannot listen: ${cause.message}`, cause }))))
      server.listen(options.port ?? 0, options.host ?? "127.0.0.1", () => resume(Effect.succeed(server)))
    }),
    (server) =>
      Effect.async<void>((resume) => {
        timers.clear()
        server.close(() => resume(Effect.void))
        // Hanging requests, streams and idle keep-alive sockets would hold close() open.
        server.closeAllConnections()
        connections.destroyUpgraded()
      })
  )
  const address = server.address()
  const port = typeof address === "object" && address !== null ? address.port : 0
  if (options.name === undefined) state.name = `sample-gateway-${port}`
  const host = options.host === undefined || options.host === "0.0.0.0" ? "127.0.0.1" : options.host

  return {
    name: state.name,
    port,
    upstream: `${host}:${port}`,
    setBehaviour: (behaviour) =>
      Effect.sync(() => {
        state.behaviour = { ...state.behaviour, ...behaviour }
      }),
    behaviour: Effect.sync(() => state.behaviour),
    handshakes: Effect.sync(() => [...state.handshakes]),
    releases: Effect.sync(() => [...state.releases]),
    held: Effect.sync(() => state.held),
    openConnections: Effect.sync(() => connections.openCount()),
    reset: Effect.async<void>((resume) => ctx.reset(() => resume(Effect.void)))
  } satisfies SampleGatewayHandle
})

const isMain = process.argv[1] !== undefined &&
  import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href

if (isMain) {
  Effect.gen(function*() {
    const options = parseArgs(process.argv.slice(2))
    if (Either.isLeft(options)) return yield* new SampleGatewayError({ message: options.left })
    const gateway = yield* startSampleGateway(options.right)
    yield* Effect.log(`${gateway.name} listening on ${gateway.upstream}`)
    return yield* Effect.never
  }).pipe(Effect.scoped, NodeRuntime.runMain)
}
