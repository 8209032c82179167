import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Either, Exit, Fiber, Queue, Schedule, type Scope } from "effect"
import * as childProcess from "node:child_process"
import * as http from "node:http"
import * as net from "node:net"
import { freePort } from "../../src/lib/ports.ts"
import { ALLOCATION_HEADER, type SampleGatewayHandle, startSampleGateway } from "../../src/dev/SampleGateway.ts"
import { closeCode, closePayload, encodeFrame, type Message, messageReader, Opcode } from "../../src/dev/webSocketFrames.ts"

// Plain node:http, one connection per request (`agent: false`): a kept-alive connection of a
// shared pool could be the one a release closes, and the next request would fail on it.
const call = (
  base: string,
  method: string,
  path: string,
  options: { readonly allocation?: string; readonly body?: unknown; readonly raw?: string; readonly timeoutMs?: number } = {}
) =>
  Effect.async<{ readonly status: number; readonly body: unknown }, Error>((resume) => {
    const text = options.raw ?? (options.body === undefined ? undefined : JSON.stringify(options.body))
    const req = http.request(`${base}${path}`, {
      method,
      agent: false,
      headers: {
        ...(options.allocation === undefined ? {} : { [ALLOCATION_HEADER]: options.allocation }),
        ...(text === undefined ? {} : { "content-type": "application/json" })
      },
      timeout: options.timeoutMs ?? 2000
    }, (res) => {
      const chunks: Array<Buffer> = []
      res.on("data", (chunk: Buffer) => chunks.push(chunk))
      res.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8")
        resume(Effect.try({ try: () => ({ status: res.statusCode ?? 0, body: JSON.parse(body) as unknown }), catch: (e) => new Error(String(e)) }))
      })
    })
    req.on("timeout", () => req.destroy(new Error("timed out")))
    req.on("error", (error) => resume(Effect.fail(error)))
    req.end(text)
    return Effect.sync(() => req.destroy())
  })

const get = (gw: SampleGatewayHandle, path: string, allocation?: string) =>
  call(`http://${gw.upstream}`, "GET", path, allocation === undefined ? {} : { allocation })
const post = (gw: SampleGatewayHandle, path: string, body: unknown, timeoutMs?: number) =>
  call(`http://${gw.upstream}`, "POST", path, { body, ...(timeoutMs === undefined ? {} : { timeoutMs }) })

/** The request is aborted by the client: the gateway never answered. */
const timesOut = <A, E>(effect: Effect.Effect<A, E>) => Effect.map(Effect.either(effect), (result) => Either.isLeft(result))

/** Polls a condition (every 10 ms, at most 3 s). */
const until = <E>(condition: Effect.Effect<boolean, E>, what: string) =>
  condition.pipe(
    Effect.filterOrFail((ok) => ok, () => new Error(`never came true: ${what}`)),
    Effect.retry(Schedule.spaced("10 millis").pipe(Schedule.intersect(Schedule.recurs(300)))),
    Effect.asVoid
  )

const orgA = "11111111-1111-4111-8111-111111111111"
const handshakeBody = {
  organization_id: orgA,
  gateway_id: "22222222-2222-4222-8222-222222222222",
  allocation_id: "33333333-3333-4333-8333-333333333333",
  gateway_hostname: `org-${orgA}.domain.local`
}
const orgB = "44444444-4444-4444-8444-444444444444"
const handshakeB = {
  organization_id: orgB,
  gateway_id: handshakeBody.gateway_id,
  allocation_id: "55555555-5555-4555-8555-555555555555",
  gateway_hostname: `org-${orgB}.domain.local`
}
const A = handshakeBody.allocation_id
const B = handshakeB.allocation_id
const releaseOf = (h: typeof handshakeBody) => ({ organization_id: h.organization_id, gateway_id: h.gateway_id, allocation_id: h.allocation_id })

/** A gateway (streams every 20 ms) holding allocation A. */
const gatewayHoldingA = (options: Parameters<typeof startSampleGateway>[0] = {}) =>
  Effect.gen(function*() {
    const gw = yield* startSampleGateway({ streamIntervalMs: 20, ...options })
    expect((yield* post(gw, "/collab/start", handshakeBody)).status).toBe(200)
    return gw
  })

// A WebSocket client over a raw socket: masked frames out, unmasked frames in.
interface WebSocketClient {
  readonly socket: net.Socket
  /** The next message, within 2 s. */
  readonly receive: Effect.Effect<Message, Error>
  readonly receiveJson: Effect.Effect<unknown, Error>
  readonly sendFrame: (opcode: Opcode, payload: Buffer | string, fin?: boolean) => Effect.Effect<void>
  /** Every message received so far, taken from the queue. */
  readonly drain: Effect.Effect<ReadonlyArray<Message>>
  /** The socket closed (within 2 s). */
  readonly closed: Effect.Effect<void, Error>
  readonly isClosed: Effect.Effect<boolean>
}

const upgradeRequest = (path: string, allocation: string | undefined) =>
  `GET ${path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
  (allocation === undefined ? "" : `${ALLOCATION_HEADER}: ${allocation}\r\n`) + "\r\n"

const openWebSocket = (
  gw: SampleGatewayHandle,
  allocation: string | undefined,
  path = "/socket"
): Effect.Effect<{ readonly head: string; readonly client: WebSocketClient }, Error, Scope.Scope> =>
  Effect.gen(function*() {
    const messages = yield* Queue.unbounded<Message>()
    const closed = yield* Deferred.make<void>()
    const socket = yield* Effect.acquireRelease(
      Effect.sync(() => net.connect(gw.port, "127.0.0.1")),
      (socket) => Effect.sync(() => socket.destroy())
    )
    const read = messageReader({ masked: false, maxPayload: 1 << 24 })
    const feed = (chunk: Buffer) => {
      const result = read(chunk)
      if (Either.isLeft(result)) return void socket.destroy(result.left)
      for (const message of result.right) Queue.unsafeOffer(messages, message)
    }
    socket.on("close", () => Deferred.unsafeDone(closed, Exit.void))
    socket.on("error", () => {}) // a close follows
    const head = yield* Effect.async<string, Error>((resume) => {
      let buffered = Buffer.alloc(0)
      let upgraded = false
      socket.on("data", (chunk: Buffer) => {
        if (upgraded) return feed(chunk)
        buffered = Buffer.concat([buffered, chunk])
        const end = buffered.indexOf("\r\n\r\n")
        if (end < 0) return
        upgraded = true
        resume(Effect.succeed(buffered.subarray(0, end).toString("latin1")))
        feed(buffered.subarray(end + 4))
      })
      socket.once("close", () => {
        if (!upgraded) resume(Effect.fail(new Error(`closed before an answer: ${buffered.toString("latin1")}`)))
      })
      socket.write(upgradeRequest(path, allocation))
    })
    if (!head.startsWith("HTTP/1.1 101")) return yield* Effect.fail(new Error(`not upgraded: ${head}`))
    const receive = Queue.take(messages).pipe(
      Effect.timeoutFail({ duration: Duration.seconds(2), onTimeout: () => new Error("no message within 2 s") })
    )
    const client: WebSocketClient = {
      socket,
      receive,
      receiveJson: Effect.flatMap(receive, (message) =>
        message.opcode === Opcode.text
          ? Effect.try({ try: () => JSON.parse(message.payload.toString("utf8")) as unknown, catch: (e) => new Error(String(e)) })
          : Effect.fail(new Error(`expected a text frame, got opcode ${message.opcode}`))),
      sendFrame: (opcode, payload, fin = true) =>
        Effect.sync(() => void socket.write(encodeFrame(opcode, payload, { mask: true, fin }))),
      drain: Queue.takeAll(messages).pipe(Effect.map((chunk) => [...chunk])),
      closed: Deferred.await(closed).pipe(
        Effect.timeoutFail({ duration: Duration.seconds(2), onTimeout: () => new Error("still open after 2 s") })
      ),
      isClosed: Deferred.isDone(closed)
    }
    return { head, client }
  })

/** An upgrade the gateway refuses: its whole answer, read until the gateway hangs up. */
const refusedUpgrade = (gw: SampleGatewayHandle, allocation: string | undefined) =>
  Effect.async<string, Error>((resume) => {
    const socket = net.connect(gw.port, "127.0.0.1", () => socket.write(upgradeRequest("/socket", allocation)))
    let data = ""
    socket.on("data", (chunk: Buffer) => (data += chunk.toString("latin1")))
    socket.on("close", () => resume(Effect.succeed(data)))
    socket.on("error", (error) => resume(Effect.fail(error)))
    return Effect.sync(() => socket.destroy())
  }).pipe(Effect.timeoutFail({ duration: Duration.seconds(2), onTimeout: () => new Error("the gateway never hung up") }))

/** `GET /stream`: its answer's head, then its events as they come, and whether it ended. */
const openStream = (gw: SampleGatewayHandle, allocation: string) =>
  Effect.gen(function*() {
    const events = yield* Queue.unbounded<Record<string, unknown>>()
    const ended = yield* Deferred.make<void>()
    const response = yield* Effect.acquireRelease(
      Effect.async<http.IncomingMessage, Error>((resume) => {
        const req = http.get(`http://${gw.upstream}/stream`, { agent: false, headers: { [ALLOCATION_HEADER]: allocation } }, (res) =>
          resume(Effect.succeed(res)))
        req.on("error", (error) => resume(Effect.fail(error)))
      }),
      (res) => Effect.sync(() => res.destroy())
    )
    let buffered = ""
    response.on("data", (chunk: Buffer) => {
      buffered += chunk.toString("utf8")
      for (let end = buffered.indexOf("\n\n"); end >= 0; end = buffered.indexOf("\n\n")) {
        const line = buffered.slice(0, end)
        buffered = buffered.slice(end + 2)
        Queue.unsafeOffer(events, JSON.parse(line.replace(/^data: /, "")) as Record<string, unknown>)
      }
    })
    response.on("error", () => {}) // "aborted" when the gateway destroys the stream; close follows
    response.socket.on("close", () => Deferred.unsafeDone(ended, Exit.void))
    return {
      response,
      next: Queue.take(events).pipe(
        Effect.timeoutFail({ duration: Duration.seconds(2), onTimeout: () => new Error("no event within 2 s") })
      ),
      drain: Queue.takeAll(events).pipe(Effect.map((chunk) => [...chunk])),
      ended: Deferred.await(ended).pipe(
        Effect.timeoutFail({ duration: Duration.seconds(2), onTimeout: () => new Error("stream still open after 2 s") })
      ),
      isEnded: Deferred.isDone(ended)
    }
  })

/** A raw kept-alive connection that carried one request with `allocation`; resolves with its answer. */
const keptAlive = (gw: SampleGatewayHandle, allocation: string) =>
  Effect.gen(function*() {
    const closed = yield* Deferred.make<void>()
    const socket = yield* Effect.acquireRelease(
      Effect.sync(() => net.connect(gw.port, "127.0.0.1")),
      (socket) => Effect.sync(() => socket.destroy())
    )
    socket.on("close", () => Deferred.unsafeDone(closed, Exit.void))
    socket.on("error", () => {})
    const exchange = (request: string) =>
      Effect.async<string, Error>((resume) => {
        let data = ""
        const onData = (chunk: Buffer) => {
          data += chunk.toString("latin1")
          const end = data.indexOf("\r\n\r\n")
          const length = /content-length: (\d+)/i.exec(data)
          if (end >= 0 && length !== null && data.length >= end + 4 + Number(length[1])) {
            socket.off("data", onData)
            resume(Effect.succeed(data))
          }
        }
        socket.on("data", onData)
        socket.write(request)
      }).pipe(Effect.timeoutFail({ duration: Duration.seconds(2), onTimeout: () => new Error("no answer within 2 s") }))
    const first = yield* exchange(`GET /page HTTP/1.1\r\nHost: x\r\n${ALLOCATION_HEADER}: ${allocation}\r\n\r\n`)
    return {
      first,
      exchange,
      closed: Deferred.await(closed).pipe(
        Effect.timeoutFail({ duration: Duration.seconds(2), onTimeout: () => new Error("still open after 2 s") })
      ),
      isClosed: Deferred.isDone(closed)
    }
  })

describe("SampleGateway", () => {
  it.scopedLive("ok: health 200, handshake takes the allocation, requests for it name the gateway and what it holds", () =>
    Effect.gen(function*() {
      const gw = yield* startSampleGateway({ name: "gw-a" })
      expect(gw.upstream).toBe(`127.0.0.1:${gw.port}`)
      expect(yield* get(gw, "/collab/ping")).toEqual({ status: 200, body: { status: "ok", gateway: "gw-a" } })
      expect(yield* gw.held).toBeNull()
      expect(yield* post(gw, "/collab/start", handshakeBody)).toEqual({
        status: 200,
        body: { initialised: true, gateway: "gw-a" }
      })
      expect(yield* gw.handshakes).toEqual([handshakeBody])
      expect(yield* gw.held).toEqual(handshakeBody)
      expect(yield* get(gw, "/some/page", A)).toEqual({
        status: 200,
        body: { gateway: "gw-a", path: "/some/page", method: "GET", host: gw.upstream, allocation: A, organization_id: orgA }
      })
      yield* gw.reset
      expect(yield* gw.handshakes).toEqual([])
      expect(yield* gw.held).toBeNull()
    }))

  it.scopedLive("handshake: 409 while holding another allocation, idempotent for the held one, 400 when malformed", () =>
    Effect.gen(function*() {
      const gw = yield* gatewayHoldingA({ name: "gw-409" })
      expect(yield* post(gw, "/collab/start", handshakeB)).toEqual({
        status: 409,
        body: { error: `this gateway holds allocation ${A}`, gateway: "gw-409", held: A }
      })
      expect(yield* gw.held).toEqual(handshakeBody)
      expect((yield* post(gw, "/collab/start", handshakeBody)).status).toBe(200)
      expect(yield* gw.held).toEqual(handshakeBody)
      expect((yield* call(`http://${gw.upstream}`, "POST", "/collab/start", { raw: "not json" })).status).toBe(400)
      const { gateway_hostname: _, ...missing } = handshakeB
      expect((yield* post(gw, "/collab/start", missing)).status).toBe(400)
      expect((yield* post(gw, "/collab/start", { ...handshakeB, allocation_id: 7 })).status).toBe(400)
      expect(yield* gw.held).toEqual(handshakeBody)
      // Released, it takes the next one.
      expect((yield* post(gw, "/collab/stop", releaseOf(handshakeBody))).status).toBe(200)
      expect((yield* post(gw, "/collab/start", handshakeB)).status).toBe(200)
      expect(yield* gw.held).toEqual(handshakeB)
    }))

  it.scopedLive("the allocation header: 421 when missing, wrong or nothing is held; health and control paths are exempt", () =>
    Effect.gen(function*() {
      const gw = yield* startSampleGateway({ name: "gw-421" })
      expect(yield* get(gw, "/page", A)).toEqual({
        status: 421,
        body: { error: `misdirected request: this gateway holds no allocation, not ${A}`, gateway: "gw-421", allocation: A, held: null }
      })
      expect(yield* get(gw, "/collab/ping", B)).toEqual({ status: 200, body: { status: "ok", gateway: "gw-421" } })
      yield* post(gw, "/collab/start", handshakeBody)
      expect(yield* get(gw, "/page")).toEqual({
        status: 421,
        body: { error: `misdirected request: no ${ALLOCATION_HEADER} header`, gateway: "gw-421", allocation: null, held: A }
      })
      expect(yield* get(gw, "/page", B)).toEqual({
        status: 421,
        body: { error: `misdirected request: this gateway holds allocation ${A}, not ${B}`, gateway: "gw-421", allocation: B, held: A }
      })
      expect((yield* get(gw, "/page", A)).status).toBe(200)
      expect((yield* get(gw, "/collab/ping")).status).toBe(200)
      expect((yield* get(gw, "/collab/ping", B)).status).toBe(200)
      expect(yield* get(gw, "/__held", B)).toEqual({ status: 200, body: handshakeBody })
      expect((yield* get(gw, "/__nothing")).status).toBe(404)
      // A WebSocket upgrade is checked too, and refused with a plain HTTP answer.
      const refused = yield* refusedUpgrade(gw, B)
      expect(refused).toMatch(/^HTTP\/1\.1 421 Misdirected Request\r\n/)
      expect(JSON.parse(refused.slice(refused.indexOf("\r\n\r\n") + 4))).toMatchObject({ gateway: "gw-421", allocation: B, held: A })
      expect(yield* refusedUpgrade(gw, undefined)).toMatch(/^HTTP\/1\.1 421 /)
      expect(yield* gw.openConnections).toBe(0)
    }))

  it.scopedLive("fail: 500 on health and handshake, and a failed handshake takes nothing", () =>
    Effect.gen(function*() {
      const gw = yield* startSampleGateway({ behaviour: { health: "fail", handshake: "fail" } })
      expect((yield* get(gw, "/collab/ping")).status).toBe(500)
      expect((yield* post(gw, "/collab/start", handshakeBody)).status).toBe(500)
      expect(yield* gw.handshakes).toEqual([handshakeBody])
      expect(yield* gw.held).toBeNull()
    }))

  it.scopedLive("hang: requests time out on the client side, and the scope still closes promptly", () =>
    Effect.gen(function*() {
      const closedIn = yield* Effect.scoped(
        Effect.gen(function*() {
          const gw = yield* startSampleGateway({ healthPath: "/health", handshakePath: "/init" })
          yield* gw.setBehaviour({ health: "hang", handshake: "hang" })
          const base = `http://${gw.upstream}`
          expect(yield* timesOut(call(base, "GET", "/health", { timeoutMs: 300 }))).toBe(true)
          expect(yield* timesOut(call(base, "POST", "/init", { body: handshakeBody, timeoutMs: 300 }))).toBe(true)
          expect(yield* gw.handshakes).toEqual([handshakeBody])
          // A hanging request whose client is still waiting when the scope closes.
          const socket = net.connect(gw.port, "127.0.0.1")
          socket.on("error", () => {})
          socket.write(`GET /health HTTP/1.1\r\nHost: x\r\n\r\n`)
          yield* until(Effect.sync(() => socket.bytesWritten > 0), "the hanging request is sent")
          return Date.now()
        })
      ).pipe(Effect.map((start) => Date.now() - start))
      expect(closedIn).toBeLessThan(500)
    }))

  it.scopedLive("handshake hang takes the allocation: it took effect, only its answer is lost", () =>
    Effect.gen(function*() {
      const gw = yield* startSampleGateway({ behaviour: { handshake: "hang" } })
      expect(yield* timesOut(post(gw, "/collab/start", handshakeBody, 300))).toBe(true)
      expect(yield* gw.held).toEqual(handshakeBody)
      expect((yield* get(gw, "/page", A)).status).toBe(200)
      expect((yield* post(gw, "/collab/start", handshakeB)).status).toBe(409)
      // The service's undo.
      expect((yield* post(gw, "/collab/stop", releaseOf(handshakeBody))).status).toBe(200)
      expect(yield* gw.held).toBeNull()
    }))

  it.scopedLive("handshakeDelayMs delays the answer", () =>
    Effect.gen(function*() {
      const gw = yield* startSampleGateway({ behaviour: { handshakeDelayMs: 400 } })
      expect(yield* timesOut(post(gw, "/collab/start", handshakeBody, 200))).toBe(true)
      const started = Date.now()
      expect((yield* post(gw, "/collab/start", handshakeBody, 2000)).status).toBe(200)
      expect(Date.now() - started).toBeGreaterThanOrEqual(350)
    }))

  it.scopedLive("is driven over HTTP through /__control, /__handshakes, /__releases, /__held and /__reset", () =>
    Effect.gen(function*() {
      const gw = yield* startSampleGateway()
      expect(yield* post(gw, "/__control", { health: "fail", release: "hang", releaseDelayMs: 5, isolation: "off" })).toEqual({
        status: 200,
        body: { health: "fail", handshake: "ok", handshakeDelayMs: 0, release: "hang", releaseDelayMs: 5, isolation: "off" }
      })
      expect((yield* get(gw, "/collab/ping")).status).toBe(500)
      expect((yield* post(gw, "/__control", { health: "sometimes" })).status).toBe(400)
      expect((yield* post(gw, "/__control", { isolation: "partly" })).status).toBe(400)
      yield* post(gw, "/__control", { release: "ok" })
      yield* post(gw, "/collab/start", handshakeBody)
      yield* post(gw, "/collab/stop", releaseOf(handshakeB))
      expect(yield* get(gw, "/__handshakes")).toEqual({ status: 200, body: [handshakeBody] })
      expect(yield* get(gw, "/__releases")).toEqual({ status: 200, body: [releaseOf(handshakeB)] })
      expect(yield* get(gw, "/__held")).toEqual({ status: 200, body: handshakeBody })
      yield* post(gw, "/__control", { isolation: "enforce" })
      // /__reset closes the allocation's connections, and answers on a connection that carried A's requests.
      const { client } = yield* openWebSocket(gw, A)
      const kept = yield* keptAlive(gw, A)
      const reset = yield* kept.exchange("POST /__reset HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n")
      expect(reset).toMatch(/^HTTP\/1\.1 200 /)
      yield* client.closed
      yield* kept.closed
      expect(yield* gw.behaviour).toEqual({
        health: "ok",
        handshake: "ok",
        handshakeDelayMs: 0,
        release: "ok",
        releaseDelayMs: 0,
        isolation: "enforce"
      })
      expect(yield* gw.handshakes).toEqual([])
      expect(yield* gw.releases).toEqual([])
      expect(yield* gw.held).toBeNull()
      expect(yield* gw.openConnections).toBe(0)
    }))

  it.scopedLive("a WebSocket: 101, a first frame naming what it holds, then echoes, ping/pong, long messages, close", () =>
    Effect.gen(function*() {
      const gw = yield* gatewayHoldingA({ name: "gw-ws" })
      const { client, head } = yield* openWebSocket(gw, A, "/socket?x=1")
      expect(head).toContain("HTTP/1.1 101 Switching Protocols")
      expect(head).toContain("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
      expect(yield* client.receiveJson).toEqual({ gateway: "gw-ws", path: "/socket?x=1", allocation: A, organization_id: orgA })
      expect(yield* gw.openConnections).toBe(1)

      yield* client.sendFrame(Opcode.text, "hello")
      expect(yield* client.receiveJson).toEqual({
        gateway: "gw-ws",
        allocation: A,
        organization_id: orgA,
        connection_allocation: A,
        echo: "hello"
      })
      yield* client.sendFrame(Opcode.ping, "are you there")
      const pong = yield* client.receive
      expect({ opcode: pong.opcode, payload: pong.payload.toString() }).toEqual({ opcode: Opcode.pong, payload: "are you there" })

      // 16-bit and 64-bit lengths both ways (the answers are longer than what they echo).
      for (const size of [300, 70_000]) {
        const text = "é".repeat(size / 2)
        yield* client.sendFrame(Opcode.text, text)
        expect(yield* client.receiveJson).toMatchObject({ echo: text, connection_allocation: A })
      }
      // A frame split across reads, and a fragmented message with a ping between its fragments.
      const frame = encodeFrame(Opcode.text, "split", { mask: true })
      client.socket.setNoDelay(true)
      client.socket.write(frame.subarray(0, 3))
      yield* until(Effect.sync(() => client.socket.writableLength === 0), "the first half is written")
      client.socket.write(frame.subarray(3))
      expect(yield* client.receiveJson).toMatchObject({ echo: "split" })
      yield* client.sendFrame(Opcode.text, "frag", false)
      yield* client.sendFrame(Opcode.ping, "between")
      yield* client.sendFrame(Opcode.continuation, "mented")
      expect((yield* client.receive).opcode).toBe(Opcode.pong)
      expect(yield* client.receiveJson).toMatchObject({ echo: "fragmented" })

      // Close handshake: the status comes back, then the gateway hangs up.
      yield* client.sendFrame(Opcode.close, closePayload(1000, "bye"))
      const close = yield* client.receive
      expect({ opcode: close.opcode, code: closeCode(close.payload) }).toEqual({ opcode: Opcode.close, code: 1000 })
      yield* client.closed
      yield* until(Effect.map(gw.openConnections, (n) => n === 0), "the gateway forgets the socket")
    }))

  it.scopedLive("a WebSocket that breaks the protocol is closed with 1002, and the gateway keeps serving", () =>
    Effect.gen(function*() {
      const gw = yield* gatewayHoldingA()
      const { client } = yield* openWebSocket(gw, A)
      yield* client.receive
      client.socket.write(encodeFrame(Opcode.text, "unmasked"))
      const close = yield* client.receive
      expect({ opcode: close.opcode, code: closeCode(close.payload) }).toEqual({ opcode: Opcode.close, code: 1002 })
      yield* client.closed
      expect((yield* get(gw, "/page", A)).status).toBe(200)
    }))

  it.scopedLive("GET /stream: server-sent events naming the allocation, every streamIntervalMs", () =>
    Effect.gen(function*() {
      const gw = yield* gatewayHoldingA({ name: "gw-sse" })
      const stream = yield* openStream(gw, A)
      expect(stream.response.statusCode).toBe(200)
      expect(stream.response.headers["content-type"]).toBe("text/event-stream")
      expect(stream.response.headers["cache-control"]).toBe("no-store")
      const events = [yield* stream.next, yield* stream.next, yield* stream.next]
      expect(events).toEqual([0, 1, 2].map((seq) => ({
        gateway: "gw-sse",
        allocation: A,
        organization_id: orgA,
        connection_allocation: A,
        seq
      })))
      expect((yield* call(`http://${gw.upstream}`, "GET", "/stream", { allocation: B })).status).toBe(421)
    }))

  it.scopedLive("release closes the allocation's WebSocket, stream and kept-alive connection, then answers, and forgets the org", () =>
    Effect.gen(function*() {
      const gw = yield* gatewayHoldingA({ name: "gw-rel" })
      const { client } = yield* openWebSocket(gw, A)
      yield* client.receive
      const stream = yield* openStream(gw, A)
      yield* stream.next
      const kept = yield* keptAlive(gw, A)
      expect(kept.first).toMatch(/^HTTP\/1\.1 200 /)
      expect(yield* gw.openConnections).toBe(3)

      const answer = yield* post(gw, "/collab/stop", releaseOf(handshakeBody))
      // Answered only once they were closed: none of them is left open at the gateway.
      expect(yield* gw.openConnections).toBe(0)
      expect(answer).toEqual({ status: 200, body: { released: true, closed: 3, gateway: "gw-rel" } })
      expect(yield* gw.held).toBeNull()
      expect(yield* gw.releases).toEqual([releaseOf(handshakeBody)])
      // Every client sees its connection end; the WebSocket's says why first.
      yield* client.closed
      yield* stream.ended
      yield* kept.closed
      const [close] = (yield* client.drain).filter((message) => message.opcode === Opcode.close)
      expect(close === undefined ? null : closeCode(close.payload)).toBe(1001)
      expect((yield* get(gw, "/page", A)).status).toBe(421)
      // Idempotent: nothing of it is open any more.
      expect(yield* post(gw, "/collab/stop", releaseOf(handshakeBody))).toEqual({
        status: 200,
        body: { released: true, closed: 0, gateway: "gw-rel" }
      })
    }))

  it.scopedLive("a release arriving on a connection that carried the allocation's requests is answered, then that connection closes", () =>
    Effect.gen(function*() {
      const gw = yield* gatewayHoldingA()
      const kept = yield* keptAlive(gw, A)
      const body = JSON.stringify(releaseOf(handshakeBody))
      const answer = yield* kept.exchange(
        `POST /collab/stop HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`
      )
      expect(answer).toMatch(/^HTTP\/1\.1 200 /)
      expect(answer.toLowerCase()).toContain("connection: close")
      yield* kept.closed
      expect(yield* gw.held).toBeNull()
    }))

  it.scopedLive("a release naming another allocation closes that one's connections only and leaves the held one alone", () =>
    Effect.gen(function*() {
      const gw = yield* gatewayHoldingA({ name: "gw-other" })
      const { client } = yield* openWebSocket(gw, A)
      yield* client.receive
      expect(yield* post(gw, "/collab/stop", releaseOf(handshakeB))).toEqual({
        status: 200,
        body: { released: true, closed: 0, gateway: "gw-other" }
      })
      expect(yield* gw.held).toEqual(handshakeBody)
      yield* client.sendFrame(Opcode.text, "still here")
      expect(yield* client.receiveJson).toMatchObject({ allocation: A, echo: "still here" })
      expect(yield* client.isClosed).toBe(false)
      expect((yield* post(gw, "/collab/stop", { allocation_id: A })).status).toBe(400)
      expect(yield* gw.held).toEqual(handshakeBody)
    }))

  it.scopedLive("release fail and hang change nothing; releaseDelayMs holds the answer and the closing back", () =>
    Effect.gen(function*() {
      const gw = yield* gatewayHoldingA()
      const { client } = yield* openWebSocket(gw, A)
      yield* client.receive
      const stillServed = Effect.gen(function*() {
        expect(yield* gw.held).toEqual(handshakeBody)
        yield* client.sendFrame(Opcode.text, "ping")
        expect(yield* client.receiveJson).toMatchObject({ allocation: A, echo: "ping" })
      })

      yield* gw.setBehaviour({ release: "fail" })
      expect((yield* post(gw, "/collab/stop", releaseOf(handshakeBody))).status).toBe(500)
      yield* stillServed

      yield* gw.setBehaviour({ release: "hang" })
      expect(yield* timesOut(post(gw, "/collab/stop", releaseOf(handshakeBody), 300))).toBe(true)
      yield* stillServed

      yield* gw.setBehaviour({ release: "ok", releaseDelayMs: 1000 })
      const started = Date.now()
      const releasing = yield* Effect.fork(post(gw, "/collab/stop", releaseOf(handshakeBody)))
      yield* until(Effect.map(gw.releases, (received) => received.length === 3), "the slow release is received")
      // Received, not done yet: the org is still held and its connection still served.
      yield* stillServed
      expect((yield* Fiber.join(releasing)).body).toMatchObject({ released: true, closed: 1 })
      expect(Date.now() - started).toBeGreaterThanOrEqual(950)
      yield* client.closed
      expect(yield* gw.held).toBeNull()
    }))

  it.scopedLive("enforce: a WebSocket of a released allocation never hears the next allocation", () =>
    Effect.gen(function*() {
      const gw = yield* gatewayHoldingA()
      const { client } = yield* openWebSocket(gw, A)
      expect(yield* client.receiveJson).toMatchObject({ allocation: A })
      yield* post(gw, "/collab/stop", releaseOf(handshakeBody))
      expect((yield* post(gw, "/collab/start", handshakeB)).status).toBe(200)
      // The connection is gone: a message written now reaches nobody, and nothing ever names B.
      yield* client.sendFrame(Opcode.text, "who are you now?")
      yield* client.closed
      const heard = (yield* client.drain).map((message) => message.payload.toString("utf8"))
      expect(heard.some((text) => text.includes(B) || text.includes(orgB))).toBe(false)
      expect(yield* gw.openConnections).toBe(0)
    }))

  it.scopedLive("enforce: the per-message and per-event fences end connections their allocation's release left open", () =>
    Effect.gen(function*() {
      // Released while isolation was "off" (closes nothing), then enforced again.
      const gw = yield* gatewayHoldingA({ behaviour: { isolation: "off" } })
      const { client } = yield* openWebSocket(gw, A)
      yield* client.receive
      const stream = yield* openStream(gw, A)
      yield* stream.next
      expect((yield* post(gw, "/collab/stop", releaseOf(handshakeBody))).body).toMatchObject({ closed: 0 })
      yield* gw.setBehaviour({ isolation: "enforce" })
      // The stream's next event finds A no longer held: it ends instead.
      yield* stream.ended
      expect((yield* post(gw, "/collab/start", handshakeB)).status).toBe(200)
      expect((yield* stream.drain).some((event) => event.allocation === B)).toBe(false)
      // The WebSocket's next message finds B held, not A: closed with 1008 instead of an answer.
      yield* client.sendFrame(Opcode.text, "who are you now?")
      const close = yield* client.receive
      expect({ opcode: close.opcode, code: closeCode(close.payload) }).toEqual({ opcode: Opcode.close, code: 1008 })
      yield* client.closed
      expect(yield* client.drain).toEqual([])
    }))

  it.scopedLive("isolation off (the negative control): no header check, a release closes nothing, old connections hear the next allocation", () =>
    Effect.gen(function*() {
      const gw = yield* gatewayHoldingA({ name: "gw-off", behaviour: { isolation: "off" } })
      expect(yield* get(gw, "/page", B)).toMatchObject({ status: 200, body: { allocation: A } })
      expect(yield* get(gw, "/page")).toMatchObject({ status: 200, body: { allocation: A } })
      const { client } = yield* openWebSocket(gw, A)
      yield* client.receive
      const stream = yield* openStream(gw, A)
      expect(yield* post(gw, "/collab/stop", releaseOf(handshakeBody))).toEqual({
        status: 200,
        body: { released: true, closed: 0, gateway: "gw-off" }
      })
      expect(yield* gw.held).toBeNull()
      yield* post(gw, "/collab/start", handshakeB)
      yield* client.sendFrame(Opcode.text, "who are you now?")
      expect(yield* client.receiveJson).toEqual({
        gateway: "gw-off",
        allocation: B,
        organization_id: orgB,
        connection_allocation: A,
        echo: "who are you now?"
      })
      yield* until(
        Effect.map(stream.next, (event) => event.allocation === B && event.connection_allocation === A),
        "the old stream carries B's events"
      )
    }))

  it.scopedLive("closing the scope ends WebSockets, streams and hanging releases promptly", () =>
    Effect.gen(function*() {
      const outcome = yield* Effect.scoped(
        Effect.gen(function*() {
          const gw = yield* gatewayHoldingA({ behaviour: { release: "hang" } })
          const { client } = yield* openWebSocket(gw, A)
          yield* client.receive
          const stream = yield* openStream(gw, A)
          yield* stream.next
          const releasing = yield* Effect.fork(Effect.either(post(gw, "/collab/stop", releaseOf(handshakeBody), 5000)))
          yield* until(Effect.map(gw.releases, (received) => received.length === 1), "the release is received")
          return { started: Date.now(), client, stream, releasing }
        })
      )
      const closedIn = Date.now() - outcome.started
      expect(closedIn).toBeLessThan(500)
      yield* outcome.client.closed
      yield* outcome.stream.ended
      expect(Either.isLeft(yield* Fiber.join(outcome.releasing))).toBe(true)
    }))

  it.live("runs standalone with tsx and answers on the given port", () =>
    Effect.gen(function*() {
      const port = yield* freePort
      const child = yield* Effect.acquireRelease(
        Effect.sync(() =>
          // `node --import tsx` is what the tsx CLI does, minus its extra parent process.
          childProcess.spawn(
            process.execPath,
            [
              "--import",
              "tsx",
              "src/dev/SampleGateway.ts",
              "--port",
              String(port),
              "--name",
              "gw-cli",
              "--release-path",
              "/stop",
              "--release",
              "fail"
            ],
            { stdio: "ignore" }
          )
        ),
        (child) => Effect.sync(() => child.kill("SIGTERM"))
      )
      expect(child.pid).toBeDefined()
      const base = `http://127.0.0.1:${port}`
      const answer = yield* call(base, "GET", "/collab/ping").pipe(
        Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 150 })
      )
      expect(answer).toEqual({ status: 200, body: { status: "ok", gateway: "gw-cli" } })
      expect((yield* call(base, "POST", "/stop", { body: releaseOf(handshakeBody) })).status).toBe(500)
    }).pipe(Effect.scoped))
})
