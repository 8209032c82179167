// A gateway that speaks the gateway protocol (see src/handshake/Handshake.ts) the way a real one
// should, with switchable faults, for tests, `npm run dev` and the benchmark. Also runnable alone:
//   tsx src/dev/SampleGateway.ts --port 9001 [--name gw-1] [--health fail] [--handshake hang] [--delay 500]
//     [--release fail] [--health-path P] [--handshake-path P] [--release-path P]
import { NodeRuntime } from "@effect/platform-node"
import { Data, Effect, Either, Schema } from "effect"
import * as http from "node:http"
import type * as net from "node:net"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import { acceptKey, closeCode, closePayload, encodeFrame, type Message, messageReader, Opcode } from "./webSocketFrames.ts"

export class SampleGatewayError extends Data.TaggedError("SampleGatewayError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

const Mode = Schema.Literal("ok", "fail", "hang")

export const Behaviour = Schema.Struct({
  /** `GET {healthPath}`: "ok" = 200, "fail" = 500, "hang" = never answer (socket kept open). */
  health: Mode,
  /**
   * `POST {handshakePath}`: "ok" = take the allocation, answer 200 after `handshakeDelayMs`;
   * "fail" = 500 after the delay, nothing taken; "hang" = take it and never answer (the
   * handshake took effect, its answer was lost: the service must release it).
   */
  handshake: Mode,
  handshakeDelayMs: Schema.NonNegativeInt,
  /** `POST {releasePath}`, after `releaseDelayMs`: "ok" = release; "fail" = 500, "hang" = never answer, both changing nothing. */
  release: Mode,
  releaseDelayMs: Schema.NonNegativeInt,
  /**
   * "enforce": the allocation header, a release's closing of connections, and the per-message
   * and per-event checks. "off": a broken gateway that ignores them all (a negative control).
   */
  isolation: Schema.Literal("enforce", "off")
})
export type Behaviour = typeof Behaviour.Type

export const defaultBehaviour: Behaviour = {
  health: "ok",
  handshake: "ok",
  handshakeDelayMs: 0,
  release: "ok",
  releaseDelayMs: 0,
  isolation: "enforce"
}

const ids = {
  organization_id: Schema.NonEmptyString,
  gateway_id: Schema.NonEmptyString,
  allocation_id: Schema.NonEmptyString
}
/** A handshake's body: what the gateway holds until that allocation is released. */
export const Held = Schema.Struct({ ...ids, gateway_hostname: Schema.NonEmptyString })
export type Held = typeof Held.Type
export const ReleaseRequest = Schema.Struct(ids)

/** nginx names the allocation of the route it used on every request it proxies (src/nginx/config.ts). */
export const ALLOCATION_HEADER = "x-gateway-allocation"

export interface SampleGatewayHandle {
  readonly name: string
  readonly port: number
  /** `127.0.0.1:PORT`, the pool's `upstream` for this gateway. */
  readonly upstream: string
  readonly setBehaviour: (behaviour: Partial<Behaviour>) => Effect.Effect<void>
  readonly behaviour: Effect.Effect<Behaviour>
  /** Handshake bodies received (every JSON one), in order, whatever the behaviour answered. */
  readonly handshakes: Effect.Effect<ReadonlyArray<unknown>>
  /** Release bodies received (every JSON one), in order, whatever the behaviour answered. */
  readonly releases: Effect.Effect<ReadonlyArray<unknown>>
  /** The handshake body of the allocation it holds, or null. */
  readonly held: Effect.Effect<Held | null>
  /** Open sockets tagged with an allocation (they carried its requests, streams or WebSockets). */
  readonly openConnections: Effect.Effect<number>
  /** Back to the initial behaviour, nothing held or received; every tagged connection closed. */
  readonly reset: Effect.Effect<void>
}

export interface SampleGatewayOptions {
  readonly port?: number
  readonly host?: string
  readonly name?: string
  readonly healthPath?: string
  readonly handshakePath?: string
  readonly releasePath?: string
  /** Between two events of `GET /stream` (default 50). */
  readonly streamIntervalMs?: number
  readonly behaviour?: Partial<Behaviour>
}

/** A WebSocket message larger than this closes the connection (1009). */
const MAX_MESSAGE_BYTES = 1 << 20

const isLoopback = (address: string | undefined): boolean =>
  address !== undefined && (address.startsWith("127.") || address.startsWith("::ffff:127.") || address === "::1")

const decodeControl = Schema.decodeUnknownEither(Schema.parseJson(Schema.partialWith(Behaviour, { exact: true })))
const decodeJson = Schema.decodeUnknownEither(Schema.parseJson(Schema.Unknown))
const decodeHandshake = Schema.decodeUnknownEither(Held)
const decodeRelease = Schema.decodeUnknownEither(ReleaseRequest)

const send = (res: http.ServerResponse, status: number, body: unknown): void => {
  const text = JSON.stringify(body)
  // A length, not chunks: a raw client (or a test) reading a kept-alive connection knows where it ends.
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) })
  res.end(text)
}

const readBody = (req: http.IncomingMessage, onBody: (text: string) => void): void => {
  const chunks: Array<Buffer> = []
  req.on("data", (chunk: Buffer) => chunks.push(chunk))
  req.on("end", () => onBody(Buffer.concat(chunks).toString("utf8")))
}

/** Reads a JSON body, records it, then decodes it: 400 when it is not JSON or lacks a field. */
const readRequest = <A>(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  decode: (json: unknown) => Either.Either<A, unknown>,
  record: (json: unknown) => void,
  onBody: (body: A) => void
): void =>
  readBody(req, (text) => {
    const json = decodeJson(text)
    if (Either.isLeft(json)) return send(res, 400, { error: "body is not JSON" })
    record(json.right)
    const body = decode(json.right)
    if (Either.isLeft(body)) return send(res, 400, { error: String(body.left) })
    onBody(body.right)
  })

/** Refuses an upgrade with a plain HTTP answer, then hangs up once it is written. */
const refuseUpgrade = (socket: net.Socket, status: number, body: unknown): void => {
  const text = JSON.stringify(body)
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ""}\r\ncontent-type: application/json\r\n` +
      `content-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
    () => socket.destroy()
  )
}

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
  const healthPath = options.healthPath ?? "/collab/ping"
  const handshakePath = options.handshakePath ?? "/collab/start"
  const releasePath = options.releasePath ?? "/collab/stop"
  const streamIntervalMs = options.streamIntervalMs ?? 50
  const initial: Behaviour = { ...defaultBehaviour, ...options.behaviour }
  const state = {
    behaviour: initial,
    handshakes: [] as Array<unknown>,
    releases: [] as Array<unknown>,
    held: null as Held | null
  }
  // Delayed answers and stream ticks, cleared when the scope closes.
  const timers = new Set<NodeJS.Timeout>()
  // The http server stops tracking a socket once upgraded: closeAllConnections() misses these.
  const upgraded = new Set<net.Socket>()
  // Open sockets and the allocation whose requests they carried: that allocation's release closes them.
  const tags = new Map<net.Socket, string>()
  let name = options.name ?? "sample-gateway"

  const heldId = (): string | null => state.held?.allocation_id ?? null
  /** What a connection of `allocation` may no longer be answered (nothing is, with isolation "off"). */
  const fenced = (allocation: string | null): boolean =>
    state.behaviour.isolation === "enforce" && (allocation === null || allocation !== heldId())
  const holding = () => ({ allocation: heldId(), organization_id: state.held?.organization_id ?? null })

  const later = (delayMs: number, run: () => void): void => {
    if (delayMs === 0) return run()
    const timer = setTimeout(() => {
      timers.delete(timer)
      run()
    }, delayMs)
    timers.add(timer)
  }

  const fail = (res: http.ServerResponse) => send(res, 500, { error: "sample gateway told to fail", gateway: name })

  const answer = (res: http.ServerResponse, mode: Behaviour["health"], body: unknown): void => {
    // "hang": leave the response open; the client must give up by itself.
    if (mode === "ok") send(res, 200, body)
    else if (mode === "fail") fail(res)
  }

  const tag = (socket: net.Socket, allocation: string): void => {
    if (socket.destroyed) return
    if (!tags.has(socket)) socket.once("close", () => tags.delete(socket))
    tags.set(socket, allocation)
  }

  /** Destroys a socket; a WebSocket is sent a close frame first, so its client knows why. */
  const closeSocket = (socket: net.Socket, code: number, reason: string): void => {
    if (upgraded.has(socket) && socket.writable) socket.write(encodeFrame(Opcode.close, closePayload(code, reason)))
    socket.destroy()
  }

  /** Destroys every socket tagged with `allocation` (null: every tagged one); calls back once all have closed. */
  const closeTagged = (allocation: string | null, onClosed: (count: number) => void): void => {
    const sockets = [...tags].flatMap(([socket, tagged]) => (allocation === null || tagged === allocation ? [socket] : []))
    let open = sockets.length
    if (open === 0) return onClosed(0)
    for (const socket of sockets) {
      socket.once("close", () => {
        open -= 1
        if (open === 0) onClosed(sockets.length)
      })
      closeSocket(socket, 1001, "allocation released")
    }
  }

  /** A release or reset arriving on a connection it would close: answered first, then that connection closes. */
  const spareOwnConnection = (req: http.IncomingMessage, res: http.ServerResponse, allocation: string | null) => {
    const own = tags.get(req.socket)
    if (own === undefined || (allocation !== null && own !== allocation)) return
    tags.delete(req.socket)
    res.setHeader("connection", "close")
  }

  const reset = (onDone: () => void): void => {
    state.behaviour = initial
    state.handshakes = []
    state.releases = []
    state.held = null
    closeTagged(null, () => onDone())
  }

  const handshake = (req: http.IncomingMessage, res: http.ServerResponse) =>
    readRequest(req, res, decodeHandshake, (json) => state.handshakes.push(json), (body) => {
      const held = state.held
      if (held !== null && held.allocation_id !== body.allocation_id) {
        return send(res, 409, {
          error: `this gateway holds allocation ${held.allocation_id}`,
          gateway: name,
          held: held.allocation_id
        })
      }
      const { handshake, handshakeDelayMs } = state.behaviour
      // Taken on receipt, as a real gateway starts initialising: "hang" takes it too, only its answer is lost.
      if (handshake !== "fail") state.held = body
      if (handshake === "hang") return
      later(handshakeDelayMs, () => (handshake === "ok" ? send(res, 200, { initialised: true, gateway: name }) : fail(res)))
    })

  const release = (req: http.IncomingMessage, res: http.ServerResponse) =>
    readRequest(req, res, decodeRelease, (json) => state.releases.push(json), (body) => {
      const { release, releaseDelayMs } = state.behaviour
      if (release === "hang") return
      later(releaseDelayMs, () => {
        if (release === "fail") return fail(res)
        // Forgotten first: from here on no request of that allocation passes the header check.
        if (heldId() === body.allocation_id) state.held = null
        if (state.behaviour.isolation === "off") return send(res, 200, { released: true, closed: 0, gateway: name })
        spareOwnConnection(req, res, body.allocation_id)
        closeTagged(body.allocation_id, (closed) => send(res, 200, { released: true, closed, gateway: name }))
      })
    })

  const control = (req: http.IncomingMessage, res: http.ServerResponse, pathname: string, method: string) => {
    if (pathname === "/__control" && method === "POST") {
      return readBody(req, (text) => {
        const patch = decodeControl(text)
        if (Either.isLeft(patch)) return send(res, 400, { error: String(patch.left) })
        state.behaviour = { ...state.behaviour, ...patch.right }
        send(res, 200, state.behaviour)
      })
    }
    if (pathname === "/__control" && method === "GET") return send(res, 200, state.behaviour)
    if (pathname === "/__handshakes" && method === "GET") return send(res, 200, state.handshakes)
    if (pathname === "/__releases" && method === "GET") return send(res, 200, state.releases)
    if (pathname === "/__held" && method === "GET") return send(res, 200, state.held)
    if (pathname === "/__reset" && method === "POST") {
      spareOwnConnection(req, res, null)
      return reset(() => send(res, 200, state.behaviour))
    }
    send(res, 404, { error: `no control endpoint ${method} ${pathname}`, gateway: name })
  }

  /** The allocation a proxied request is served for (null: none named, isolation "off" only), or the 421 body. */
  const admit = (req: http.IncomingMessage): Either.Either<string | null, Record<string, unknown>> => {
    const header = req.headers[ALLOCATION_HEADER]
    const allocation = typeof header === "string" ? header : null
    const held = heldId()
    if (state.behaviour.isolation === "off" || (allocation !== null && allocation === held)) return Either.right(allocation)
    const error = allocation === null
      ? `misdirected request: no ${ALLOCATION_HEADER} header`
      : held === null
      ? `misdirected request: this gateway holds no allocation, not ${allocation}`
      : `misdirected request: this gateway holds allocation ${held}, not ${allocation}`
    return Either.left({ error, gateway: name, allocation, held })
  }

  /** Server-sent events until the connection closes, or (enforce) until its allocation is no longer held. */
  const stream = (res: http.ServerResponse, connection: string | null) => {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store" })
    let seq = 0
    const emit = () => {
      if (res.destroyed) return
      if (fenced(connection)) return void res.socket?.destroy()
      const event = { gateway: name, ...holding(), connection_allocation: connection, seq: seq++ }
      res.write(`data: ${JSON.stringify(event)}\n\n`)
    }
    const interval = setInterval(emit, streamIntervalMs)
    timers.add(interval)
    res.once("close", () => {
      clearInterval(interval)
      timers.delete(interval)
    })
    emit()
  }

  const handle = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const url = new URL(req.url ?? "/", "http://gateway")
    const method = req.method ?? "GET"
    // The protocol calls come without the header: health through nginx before the handshake (and
    // straight when idle), handshake and release straight from the service.
    if (url.pathname === healthPath && (method === "GET" || method === "HEAD")) {
      return answer(res, state.behaviour.health, { status: "ok", gateway: name })
    }
    if (url.pathname === handshakePath && method === "POST") return handshake(req, res)
    if (url.pathname === releasePath && method === "POST") return release(req, res)
    if (url.pathname.startsWith("/__")) return control(req, res, url.pathname, method)
    const admitted = admit(req)
    if (Either.isLeft(admitted)) return send(res, 421, admitted.left)
    // A kept-alive connection that carried this allocation's requests is closed by its release.
    if (admitted.right !== null) tag(req.socket, admitted.right)
    if (url.pathname === "/stream" && method === "GET") return stream(res, admitted.right)
    send(res, 200, { gateway: name, path: url.pathname, method, host: req.headers.host ?? null, ...holding() })
  }

  const onMessage = (socket: net.Socket, message: Message): void => {
    if (message.opcode === Opcode.close) {
      // Close handshake: the status echoed, then hang up once it is written.
      const code = closeCode(message.payload)
      return void socket.end(encodeFrame(Opcode.close, code === null ? Buffer.alloc(0) : closePayload(code)), () =>
        socket.destroy())
    }
    if (message.opcode === Opcode.pong) return
    // Per-message fence: a connection opened for an allocation the gateway no longer holds gets nothing more.
    const connection = tags.get(socket) ?? null
    if (fenced(connection)) return closeSocket(socket, 1008, "allocation no longer held")
    if (message.opcode === Opcode.ping) return void socket.write(encodeFrame(Opcode.pong, message.payload))
    const reply = { gateway: name, ...holding(), connection_allocation: connection, echo: message.payload.toString("utf8") }
    socket.write(encodeFrame(Opcode.text, JSON.stringify(reply)))
  }

  const upgrade = (req: http.IncomingMessage, socket: net.Socket, head: Buffer): void => {
    socket.on("error", () => socket.destroy())
    const url = new URL(req.url ?? "/", "http://gateway")
    if (url.pathname.startsWith("/__")) return refuseUpgrade(socket, 404, { error: "no WebSocket here", gateway: name })
    const key = req.headers["sec-websocket-key"]
    if (typeof key !== "string") return refuseUpgrade(socket, 400, { error: "no Sec-WebSocket-Key", gateway: name })
    const admitted = admit(req)
    if (Either.isLeft(admitted)) return refuseUpgrade(socket, 421, admitted.left)
    upgraded.add(socket)
    socket.once("close", () => upgraded.delete(socket))
    if (admitted.right !== null) tag(socket, admitted.right)
    socket.write(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        `Sec-WebSocket-Accept: ${acceptKey(key)}\r\n\r\n`
    )
    socket.write(encodeFrame(Opcode.text, JSON.stringify({ gateway: name, path: req.url ?? "/", ...holding() })))
    const read = messageReader({ masked: true, maxPayload: MAX_MESSAGE_BYTES })
    const onData = (chunk: Buffer) => {
      const messages = read(chunk)
      if (Either.isLeft(messages)) return closeSocket(socket, messages.left.closeCode, messages.left.message)
      for (const message of messages.right) {
        if (socket.destroyed || !socket.writable) return
        onMessage(socket, message)
      }
    }
    socket.on("data", onData)
    if (head.length > 0) onData(head)
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
        // Hanging requests, streams and idle keep-alive sockets would hold close() open.
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
    releases: Effect.sync(() => [...state.releases]),
    held: Effect.sync(() => state.held),
    openConnections: Effect.sync(() => [...tags.keys()].filter((socket) => !socket.destroyed).length),
    reset: Effect.async<void>((resume) => reset(() => resume(Effect.void)))
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
  const known = new Set(["port", "host", "name", "health-path", "handshake-path", "release-path"])
  for (const flag of ["health", "handshake", "release", "delay"]) known.add(flag)
  const unknown = [...flags.keys()].filter((flag) => !known.has(flag))
  if (unknown.length > 0) return Either.left(`unknown flags: ${unknown.map((f) => `--${f}`).join(", ")}`)
  const port = flags.get("port")
  const behaviour = Schema.decodeUnknownEither(Schema.partialWith(Behaviour, { exact: true }))({
    ...(flags.has("health") ? { health: flags.get("health") } : {}),
    ...(flags.has("handshake") ? { handshake: flags.get("handshake") } : {}),
    ...(flags.has("release") ? { release: flags.get("release") } : {}),
    ...(flags.has("delay") ? { handshakeDelayMs: Number(flags.get("delay")) } : {})
  })
  if (Either.isLeft(behaviour)) return Either.left(String(behaviour.left))
  if (port !== undefined && !/^\d+$/.test(port)) return Either.left(`--port must be a number, got ${port}`)
  const host = flags.get("host")
  const name = flags.get("name")
  const healthPath = flags.get("health-path")
  const handshakePath = flags.get("handshake-path")
  const releasePath = flags.get("release-path")
  return Either.right({
    ...(port === undefined ? {} : { port: Number(port) }),
    ...(host === undefined ? {} : { host }),
    ...(name === undefined ? {} : { name }),
    ...(healthPath === undefined ? {} : { healthPath }),
    ...(handshakePath === undefined ? {} : { handshakePath }),
    ...(releasePath === undefined ? {} : { releasePath }),
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
