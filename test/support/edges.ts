// Remote nginx edges for the tests of several edges: each a real nginx of its own on loopback
// (src/dev/NginxProcess.ts), registered through the service's API (POST /edges) and running the
// file the API renders for it (GET /edges/{id}/config), as an operator would install it.
// A partitionable edge has a dropping TCP proxy (startDroppingProxy) in front of its route API:
// the replicas lose the route API while the edge keeps serving org traffic.
import { Data, Effect, type Scope } from "effect"
import * as net from "node:net"
import { type NginxHandle, startNginx } from "../../src/dev/NginxProcess.ts"
import { freePort } from "../../src/lib/ports.ts"
import { READY_PATH } from "../../src/nginx/config.ts"
import { pollUntil } from "./poll.ts"
import { rawGet } from "./rawHttp.ts"
import { type Endpoint, nginxPidsOf, request, signalPid } from "./server.ts"
import { temporaryDirectory } from "./stack.ts"

export class EdgeSetupError extends Data.TaggedError("EdgeSetupError")<{ readonly message: string }> {}

export interface RemoteEdge {
  readonly edgeId: string
  readonly name: string
  readonly nginx: NginxHandle
  /** Its org listener (what a load balancer sends traffic to). */
  readonly port: number
  /** SIGSTOP (true) or SIGCONT (false) to its master and every worker. */
  readonly freeze: (frozen: boolean) => Effect.Effect<void>
  /** The proxy in front of its route API (option `partitionable`): `setDropping(true)` cuts the replicas off. */
  readonly proxy: DroppingProxy | undefined
}

export interface DroppingProxy {
  /** Where it listens (127.0.0.1). */
  readonly port: number
  /**
   * true: the connections it holds are destroyed, and new ones are accepted and left unanswered
   * (nothing forwarded), as behind a firewall that drops packets; false: it forwards again.
   */
  readonly setDropping: (dropping: boolean) => Effect.Effect<void>
  readonly dropping: () => boolean
}

/** A TCP proxy on 127.0.0.1 to `targetPort` that can drop everything (see DroppingProxy); closed with the Scope. */
export const startDroppingProxy = (targetPort: number): Effect.Effect<DroppingProxy, EdgeSetupError, Scope.Scope> =>
  Effect.gen(function*() {
    const port = yield* freePort
    /** Every socket it holds, both sides of each forwarded connection and the unanswered ones. */
    const sockets = new Set<net.Socket>()
    let dropping = false
    const hold = (socket: net.Socket) => {
      sockets.add(socket)
      // A reset from either side is what the proxy is for: never an uncaught error.
      socket.on("error", () => {})
      socket.on("close", () => sockets.delete(socket))
    }
    const server = net.createServer((client) => {
      hold(client)
      // Dropping: accepted, never read from, never answered (the caller's own bound gives up).
      if (dropping) return
      const upstream = net.connect({ host: "127.0.0.1", port: targetPort })
      hold(upstream)
      client.on("close", () => upstream.destroy())
      upstream.on("close", () => client.destroy())
      client.pipe(upstream)
      upstream.pipe(client)
    })
    const destroyAll = () => {
      for (const socket of sockets) socket.destroy()
      sockets.clear()
    }
    yield* Effect.acquireRelease(
      Effect.async<void, EdgeSetupError>((resume) => {
        server.once("error", (error) => resume(Effect.fail(new EdgeSetupError({ message: `proxy on ${port}: ${error.message}` }))))
        server.listen(port, "127.0.0.1", () => resume(Effect.void))
      }),
      () =>
        Effect.async<void>((resume) => {
          destroyAll()
          server.close(() => resume(Effect.void))
        })
    )
    return {
      port,
      // Either way the connections held so far go: those it forwarded (cut by the partition), or
      // those it left unanswered (their bytes never arrive, as when a partition heals after the
      // caller gave up).
      setDropping: (next: boolean) =>
        Effect.sync(() => {
          if (next === dropping) return
          dropping = next
          destroyAll()
        }),
      dropping: () => dropping
    } satisfies DroppingProxy
  })

/**
 * Registers an edge named `name` and starts an nginx running the file the API rendered for it;
 * stopped with the Scope. `partitionable`: its route API is registered on a dropping proxy's
 * port, nginx listening on another one behind it (`proxy` on the edge).
 */
export const startRemoteEdge = (
  server: Endpoint,
  name: string,
  options: {
    readonly partitionable?: boolean
    /** The loopback address it listens on (default 127.0.0.1): another one lets it share the stack's ports (its HTTPS port, say). */
    readonly address?: string
  } = {}
): Effect.Effect<RemoteEdge, EdgeSetupError, Scope.Scope> =>
  Effect.gen(function*() {
    const [apiPort, port] = yield* Effect.all([freePort, freePort])
    const proxy = options.partitionable === true ? yield* startDroppingProxy(apiPort) : undefined
    const registeredApiPort = proxy?.port ?? apiPort
    const address = proxy === undefined ? options.address ?? "127.0.0.1" : "127.0.0.1"
    const added = yield* request(server, "POST", "/edges", {
      body: { name, route_api_url: `http://${address}:${registeredApiPort}`, probe_url: `http://${address}:${port}` },
      timeoutMs: 10_000
    })
    if (added.status !== 201) return yield* new EdgeSetupError({ message: `POST /edges answered ${added.status}: ${added.text}` })
    const edgeId = String(added.json.edge_id)
    const config = yield* request(server, "GET", `/edges/${edgeId}/config`, { timeoutMs: 10_000 })
    if (config.status !== 200) return yield* new EdgeSetupError({ message: `GET /edges/${edgeId}/config answered ${config.status}` })
    // Behind the proxy nginx listens on the real route API port: the operator's NAT, in one line.
    const text = proxy === undefined ? config.text : config.text.replace(`listen 127.0.0.1:${proxy.port};`, `listen 127.0.0.1:${apiPort};`)
    if (proxy !== undefined && !text.includes(`listen 127.0.0.1:${apiPort};`)) {
      return yield* new EdgeSetupError({ message: `the config of ${name} does not listen on 127.0.0.1:${proxy.port} for its route API` })
    }
    const nginx = yield* startNginx({
      dir: yield* temporaryDirectory(`ga-edge-${name}-`).pipe(
        Effect.mapError((error) => new EdgeSetupError({ message: `a directory for ${name}: ${error.message}` }))
      ),
      listenPort: port,
      routeApiPort: apiPort,
      workers: 2,
      confFiles: [{ name: "gateway-allocator.conf", text }]
    })
    const freeze = (frozen: boolean) =>
      Effect.forEach(nginxPidsOf(nginx.confDir), (pid) => signalPid(pid, frozen ? "SIGSTOP" : "SIGCONT"), { discard: true })
    // Thawed before it stops, so its shutdown is not stuck behind a SIGSTOP; taken out of the
    // registry first, or the next test's stops would owe it their removals.
    yield* Effect.addFinalizer(() => freeze(false))
    yield* Effect.addFinalizer(() => Effect.ignore(request(server, "DELETE", `/edges/${edgeId}`, { timeoutMs: 10_000 })))
    return { edgeId, name, nginx, port, freeze, proxy }
  }).pipe(Effect.mapError((error) => new EdgeSetupError({ message: error.message })))

/** The registry's view of an edge (GET /edges). */
export const edgeView = (server: Endpoint, edgeId: string) =>
  Effect.map(request(server, "GET", "/edges", { timeoutMs: 10_000 }), (answer) =>
    (answer.json?.edges ?? []).find((edge: { readonly edge_id: string }) => edge.edge_id === edgeId))

/** Waits until GET /edges shows the edge in `state` (within `withinMs`); returns its view. */
export const awaitEdgeState = (server: Endpoint, edgeId: string, state: string, withinMs = 15_000) =>
  Effect.flatMap(
    pollUntil(edgeView(server, edgeId), (edge) => edge?.state === state, { withinMs, spacingMs: 100 }),
    (edge) =>
      edge?.state === state
        ? Effect.succeed(edge)
        : Effect.fail(new EdgeSetupError({ message: `edge ${edgeId} is ${edge?.state ?? "missing"}, not ${state}, after ${withinMs} ms: ${JSON.stringify(edge)}` }))
  )

/** What the edge's own readiness answers (a load balancer's health check). */
export const edgeReadiness = (port: number, domain: string) =>
  rawGet({ port, path: READY_PATH, headers: { host: `org-00000000-0000-0000-0000-000000000000.${domain}` }, timeoutMs: 2000 })
