import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Schedule } from "effect"
import * as childProcess from "node:child_process"
import * as net from "node:net"
import { freePort } from "../../src/lib/ports.ts"
import { startSampleGateway } from "../../src/dev/SampleGateway.ts"

const request = (url: string, init: RequestInit & { readonly timeoutMs?: number } = {}) =>
  Effect.tryPromise(() =>
    fetch(url, { ...init, signal: AbortSignal.timeout(init.timeoutMs ?? 2000) }).then(async (response) => ({
      status: response.status,
      body: await response.json() as unknown
    }))
  )

const handshakeBody = {
  organization_id: "11111111-1111-4111-8111-111111111111",
  gateway_id: "22222222-2222-4222-8222-222222222222",
  allocation_id: "33333333-3333-4333-8333-333333333333",
  gateway_hostname: "org-11111111-1111-4111-8111-111111111111.domain.local"
}

const post = (url: string, body: unknown, timeoutMs?: number) =>
  request(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    ...(timeoutMs === undefined ? {} : { timeoutMs })
  })

/** The request is aborted by the client: the gateway never answered. */
const timesOut = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.map(Effect.either(effect), (result) => Either.isLeft(result))

describe("SampleGateway", () => {
  it.scopedLive("ok: health 200, handshake 200 with the body recorded, other paths name the gateway", () =>
    Effect.gen(function*() {
      const gw = yield* startSampleGateway({ name: "gw-a" })
      const base = `http://${gw.upstream}`
      expect(gw.upstream).toBe(`127.0.0.1:${gw.port}`)
      expect(yield* request(`${base}/collab/ping`)).toEqual({ status: 200, body: { status: "ok", gateway: "gw-a" } })
      expect(yield* post(`${base}/collab/start`, handshakeBody)).toEqual({
        status: 200,
        body: { initialised: true, gateway: "gw-a" }
      })
      expect(yield* gw.handshakes).toEqual([handshakeBody])
      expect(yield* request(`${base}/some/page`)).toEqual({
        status: 200,
        body: { gateway: "gw-a", path: "/some/page", method: "GET", host: gw.upstream }
      })
      yield* gw.reset
      expect(yield* gw.handshakes).toEqual([])
    }))

  it.scopedLive("fail: 500 on health and handshake", () =>
    Effect.gen(function*() {
      const gw = yield* startSampleGateway({ behaviour: { health: "fail", handshake: "fail" } })
      const base = `http://${gw.upstream}`
      expect((yield* request(`${base}/collab/ping`)).status).toBe(500)
      expect((yield* post(`${base}/collab/start`, handshakeBody)).status).toBe(500)
      expect(yield* gw.handshakes).toEqual([handshakeBody])
    }))

  it.scopedLive("hang: requests time out on the client side, and the scope still closes promptly", () =>
    Effect.gen(function*() {
      const closedIn = yield* Effect.scoped(
        Effect.gen(function*() {
          const gw = yield* startSampleGateway({ healthPath: "/health", handshakePath: "/init" })
          yield* gw.setBehaviour({ health: "hang", handshake: "hang" })
          const base = `http://${gw.upstream}`
          expect(yield* timesOut(request(`${base}/health`, { timeoutMs: 300 }))).toBe(true)
          expect(yield* timesOut(post(`${base}/init`, handshakeBody, 300))).toBe(true)
          expect(yield* gw.handshakes).toEqual([handshakeBody])
          // A hanging request whose client is still waiting when the scope closes.
          const socket = net.connect(gw.port, "127.0.0.1")
          socket.write(`GET /health HTTP/1.1\r\nHost: x\r\n\r\n`)
          yield* Effect.sleep("50 millis")
          return Date.now()
        })
      ).pipe(Effect.map((start) => Date.now() - start))
      expect(closedIn).toBeLessThan(500)
    }))

  it.scopedLive("handshakeDelayMs delays the answer", () =>
    Effect.gen(function*() {
      const gw = yield* startSampleGateway({ behaviour: { handshakeDelayMs: 400 } })
      const base = `http://${gw.upstream}`
      expect(yield* timesOut(post(`${base}/collab/start`, handshakeBody, 200))).toBe(true)
      const started = Date.now()
      expect((yield* post(`${base}/collab/start`, handshakeBody, 2000)).status).toBe(200)
      expect(Date.now() - started).toBeGreaterThanOrEqual(350)
    }))

  it.scopedLive("is driven over HTTP through /__control, /__handshakes and /__reset", () =>
    Effect.gen(function*() {
      const gw = yield* startSampleGateway()
      const base = `http://${gw.upstream}`
      expect(yield* post(`${base}/__control`, { health: "fail" })).toEqual({
        status: 200,
        body: { health: "fail", handshake: "ok", handshakeDelayMs: 0 }
      })
      expect((yield* request(`${base}/collab/ping`)).status).toBe(500)
      expect((yield* post(`${base}/__control`, { health: "sometimes" })).status).toBe(400)
      yield* post(`${base}/collab/start`, handshakeBody)
      expect(yield* request(`${base}/__handshakes`)).toEqual({ status: 200, body: [handshakeBody] })
      yield* post(`${base}/__reset`, {})
      expect(yield* gw.behaviour).toEqual({ health: "ok", handshake: "ok", handshakeDelayMs: 0 })
      expect(yield* gw.handshakes).toEqual([])
    }))

  it.scopedLive("answers a WebSocket upgrade with 101 and one frame naming the gateway", () =>
    Effect.gen(function*() {
      const gw = yield* startSampleGateway({ name: "gw-ws" })
      const received = yield* Effect.async<string, Error>((resume) => {
        const socket = net.connect(gw.port, "127.0.0.1", () =>
          socket.write(
            "GET /socket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
          ))
        let data = Buffer.alloc(0)
        socket.on("data", (chunk: Buffer) => {
          data = Buffer.concat([data, chunk])
          const end = data.indexOf("\r\n\r\n")
          if (end >= 0 && data.length > end + 4 + 2 && data.length >= end + 4 + 2 + (data[end + 5] ?? 0)) {
            socket.destroy()
            resume(Effect.succeed(data.toString("latin1")))
          }
        })
        socket.on("error", (error) => resume(Effect.fail(error)))
      })
      expect(received).toContain("HTTP/1.1 101 Switching Protocols")
      expect(received).toContain("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
      expect(received).toContain(`{"gateway":"gw-ws","path":"/socket"}`)
    }))

  it.live("runs standalone with tsx and answers on the given port", () =>
    Effect.gen(function*() {
      const port = yield* freePort
      const child = yield* Effect.acquireRelease(
        Effect.sync(() =>
          // `node --import tsx` is what the tsx CLI does, minus its extra parent process.
          childProcess.spawn(
            process.execPath,
            ["--import", "tsx", "src/dev/SampleGateway.ts", "--port", String(port), "--name", "gw-cli"],
            { stdio: "ignore" }
          )
        ),
        (child) => Effect.sync(() => child.kill("SIGTERM"))
      )
      expect(child.pid).toBeDefined()
      const answer = yield* request(`http://127.0.0.1:${port}/collab/ping`).pipe(
        Effect.retry({ schedule: Schedule.spaced("100 millis"), times: 150 })
      )
      expect(answer).toEqual({ status: 200, body: { status: "ok", gateway: "gw-cli" } })
    }).pipe(Effect.scoped))
})
