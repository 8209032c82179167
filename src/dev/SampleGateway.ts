// A gateway that speaks the gateway protocol (see src/handshake/Handshake.ts), with switchable
// faults, for tests and `npm run dev`. Also runnable on its own:
//   tsx src/dev/SampleGateway.ts --port 9001 [--name gw-1] [--health fail] [--handshake hang] [--delay 500]
import { NodeRuntime } from "@effect/platform-node"
import { Data, Effect, Either, Schema } from "effect"
import * as crypto from "node:crypto"
import * as http from "node:http"
import type * as net from "node:net"
import * as path from "node:path"
import { pathToFileURL } from "node:url"

export class SampleGatewayError extends Data.TaggedError("SampleGatewayError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

const Mode = Schema.Literal("ok", "fail", "hang")

export const Behaviour = Schema.Struct({
  /** `GET {healthPath}`: "ok" = 200, "fail" = 500, "hang" = never answer (socket kept open). */
  health: Mode,
  /** `POST {handshakePath}`, after `handshakeDelayMs`: same meanings. */
  handshake: Mode,
  handshakeDelayMs: Schema.NonNegativeInt
})
export type Behaviour = typeof Behaviour.Type

export const defaultBehaviour: Behaviour = { health: "ok", handshake: "ok", handshakeDelayMs: 0 }

export interface SampleGatewayHandle {
  readonly name: string
  readonly port: number
  /** `127.0.0.1:PORT`, the pool's `upstream` for this gateway. */
  readonly upstream: string
  readonly setBehaviour: (behaviour: Partial<Behaviour>) => Effect.Effect<void>
  readonly behaviour: Effect.Effect<Behaviour>
  /** Handshake bodies received, in order (whatever the behaviour answered). */
  readonly handshakes: Effect.Effect<ReadonlyArray<unknown>>
  /** Back to the initial behaviour, handshakes forgotten. */
  readonly reset: Effect.Effect<void>
}

export interface SampleGatewayOptions {
  readonly port?: number
  readonly host?: string
  readonly name?: string
  readonly healthPath?: string
  readonly handshakePath?: string
  readonly behaviour?: Partial<Behaviour>
}

const isLoopback = (address: string | undefined): boolean =>
  address !== undefined && (address.startsWith("127.") || address.startsWith("::ffff:127.") || address === "::1")

const decodeControl = Schema.decodeUnknownEither(Schema.parseJson(Schema.partialWith(Behaviour, { exact: true })))
const decodeJson = Schema.decodeUnknownEither(Schema.parseJson(Schema.Unknown))

const send = (res: http.ServerResponse, status: number, body: unknown): void => {
  res.writeHead(status, { "content-type": "application/json" })
  res.end(JSON.stringify(body))
}

const readBody = (req: http.IncomingMessage, onBody: (text: string) => void): void => {
  const chunks: Array<Buffer> = []
  req.on("data", (chunk: Buffer) => chunks.push(chunk))
  req.on("end", () => onBody(Buffer.concat(chunks).toString("utf8")))
}

/**
 * Listens on `host:port` (default 127.0.0.1 and a free port) until the Scope
 * closes; closing destroys hanging requests so it never waits on them.
 *
 * - `GET {healthPath}` / `POST {handshakePath}`: answer per the behaviour.
 * - `POST /__control` (JSON `Partial<Behaviour>`), `GET /__control`,
 *   `GET /__handshakes`, `POST /__reset`: drive it from another process.
 * - WebSocket upgrade on any path: 101, then one text frame
 *   `{"gateway","path"}`, so a test can see an upgrade pass through nginx.
 * - Anything else: 200 `{"gateway","path","method","host"}`, so a request
 *   proxied through nginx shows which gateway it reached.
 */
export const startSampleGateway = Effect.fn("SampleGateway.start")(function*(options: SampleGatewayOptions = {}) {
  const healthPath = options.healthPath ?? "/collab/ping"
  const handshakePath = options.handshakePath ?? "/collab/start"
  const initial: Behaviour = { ...defaultBehaviour, ...options.behaviour }
  const state = { behaviour: initial, handshakes: [] as Array<unknown> }
  const timers = new Set<NodeJS.Timeout>()
  const upgraded = new Set<net.Socket>()
  let name = options.name ?? "sample-gateway"

  const answer = (res: http.ServerResponse, mode: Behaviour["health"], body: unknown): void => {
    // "hang": leave the response open; the client must give up by itself.
    if (mode === "ok") send(res, 200, body)
    else if (mode === "fail") send(res, 500, { error: "sample gateway told to fail", gateway: name })
  }

  const handle = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const url = new URL(req.url ?? "/", "http://gateway")
    const method = req.method ?? "GET"
    if (url.pathname === healthPath && (method === "GET" || method === "HEAD")) {
      return answer(res, state.behaviour.health, { status: "ok", gateway: name })
    }
    if (url.pathname === handshakePath && method === "POST") {
      return readBody(req, (text) => {
        const body = decodeJson(text)
        if (Either.isLeft(body)) return send(res, 400, { error: "body is not JSON" })
        state.handshakes.push(body.right)
        const { handshake, handshakeDelayMs } = state.behaviour
        if (handshakeDelayMs === 0) return answer(res, handshake, { initialised: true, gateway: name })
        const timer = setTimeout(() => {
          timers.delete(timer)
          answer(res, handshake, { initialised: true, gateway: name })
        }, handshakeDelayMs)
        timers.add(timer)
      })
    }
    if (url.pathname === "/__control" && method === "POST") {
      return readBody(req, (text) => {
        const patch = decodeControl(text)
        if (Either.isLeft(patch)) return send(res, 400, { error: String(patch.left) })
        state.behaviour = { ...state.behaviour, ...patch.right }
        send(res, 200, state.behaviour)
      })
    }
    if (url.pathname === "/__control" && method === "GET") return send(res, 200, state.behaviour)
    if (url.pathname === "/__handshakes" && method === "GET") return send(res, 200, state.handshakes)
    if (url.pathname === "/__reset" && method === "POST") {
      state.behaviour = initial
      state.handshakes = []
      return send(res, 200, state.behaviour)
    }
    send(res, 200, { gateway: name, path: url.pathname, method, host: req.headers.host ?? null })
  }

  const upgrade = (req: http.IncomingMessage, socket: net.Socket): void => {
    const key = req.headers["sec-websocket-key"]
    if (typeof key !== "string") return void socket.destroy()
    upgraded.add(socket)
    socket.on("close", () => upgraded.delete(socket))
    socket.on("error", () => socket.destroy())
    const accept = crypto.createHash("sha1").update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest("base64")
    const payload = Buffer.from(JSON.stringify({ gateway: name, path: req.url ?? "/" }))
    // Unmasked text frame (FIN + opcode 1), payloads under 126 bytes.
    const frame = Buffer.concat([Buffer.from([0x81, Math.min(payload.length, 125)]), payload.subarray(0, 125)])
    socket.write(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        `Sec-WebSocket-Accept: ${accept}\r\n\r\n`
    )
    socket.write(frame)
  }

  const server = yield* Effect.acquireRelease(
    Effect.async<http.Server, SampleGatewayError>((resume) => {
      const server = http.createServer(handle)
      server.on("upgrade", upgrade)
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
        for (const timer of timers) clearTimeout(timer)
        timers.clear()
        server.close(() => resume(Effect.void))
        // Hanging requests and idle keep-alive sockets would hold close() open.
        server.closeAllConnections()
        for (const socket of upgraded) socket.destroy()
      })
  )
  const address = server.address()
  const port = typeof address === "object" && address !== null ? address.port : 0
  if (options.name === undefined) name = `sample-gateway-${port}`
  const host = options.host === undefined || options.host === "0.0.0.0" ? "127.0.0.1" : options.host

  return {
    name,
    port,
    upstream: `${host}:${port}`,
    setBehaviour: (behaviour) =>
      Effect.sync(() => {
        state.behaviour = { ...state.behaviour, ...behaviour }
      }),
    behaviour: Effect.sync(() => state.behaviour),
    handshakes: Effect.sync(() => [...state.handshakes]),
    reset: Effect.sync(() => {
      state.behaviour = initial
      state.handshakes = []
    })
  } satisfies SampleGatewayHandle
})

const parseArgs = (argv: ReadonlyArray<string>): Either.Either<SampleGatewayOptions, string> => {
  const flags = new Map<string, string>()
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i] ?? ""
    const value = argv[i + 1]
    if (!flag.startsWith("--") || value === undefined) return Either.left(`expected --flag value pairs, got ${flag}`)
    flags.set(flag.slice(2), value)
  }
  const known = new Set(["port", "host", "name", "health-path", "handshake-path", "health", "handshake", "delay"])
  const unknown = [...flags.keys()].filter((flag) => !known.has(flag))
  if (unknown.length > 0) return Either.left(`unknown flags: ${unknown.map((f) => `--${f}`).join(", ")}`)
  const port = flags.get("port")
  const behaviour = Schema.decodeUnknownEither(Schema.partialWith(Behaviour, { exact: true }))({
    ...(flags.has("health") ? { health: flags.get("health") } : {}),
    ...(flags.has("handshake") ? { handshake: flags.get("handshake") } : {}),
    ...(flags.has("delay") ? { handshakeDelayMs: Number(flags.get("delay")) } : {})
  })
  if (Either.isLeft(behaviour)) return Either.left(String(behaviour.left))
  if (port !== undefined && !/^\d+$/.test(port)) return Either.left(`--port must be a number, got ${port}`)
  const host = flags.get("host")
  const name = flags.get("name")
  const healthPath = flags.get("health-path")
  const handshakePath = flags.get("handshake-path")
  return Either.right({
    ...(port === undefined ? {} : { port: Number(port) }),
    ...(host === undefined ? {} : { host }),
    ...(name === undefined ? {} : { name }),
    ...(healthPath === undefined ? {} : { healthPath }),
    ...(handshakePath === undefined ? {} : { handshakePath }),
    behaviour: behaviour.right
  })
}

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
