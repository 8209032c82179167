// The tests' one WebSocket client, on a raw socket through nginx (the frame codec of
// src/dev/webSocketFrames.ts). For the long-lived connections of the tenant-isolation checker
// (./isolation.ts), `openWebSocket` opens the connection, hands back the first text frame (the
// sample gateway's greeting), then keeps what arrives (text frames, the close) as events for the
// checker to take at its own pace; `upgradeWebSocket` hands the connection back at the 101, for a
// test that reads every text and close frame it received (test/integration/release.test.ts).
import { Effect, Either } from "effect"
import { randomBytes } from "node:crypto"
import * as net from "node:net"
import * as tls from "node:tls"
import { acceptKey, closeCode, encodeFrame, messageReader, Opcode } from "../../src/dev/webSocketFrames.ts"

export type WebSocketEvent =
  /** A text message, and when it arrived (ms since the epoch). */
  | { readonly _tag: "Text"; readonly text: string; readonly at: number }
  /** The connection closed: the status of the close frame received, if one came, and the socket error, if any. */
  | { readonly _tag: "Closed"; readonly at: number; readonly closeCode: number | null; readonly error: string | null }

export interface WebSocketConnection {
  /** Sends one masked text frame; false when the connection can no longer be written. */
  readonly send: (text: string) => boolean
  /** What arrived since the last call, in order (the first text frame of `openWebSocket` is not among them). */
  readonly takeEvents: () => ReadonlyArray<WebSocketEvent>
  /** Every text message received, in order, the first among them. */
  readonly texts: ReadonlyArray<string>
  /** The status of every close frame received. */
  readonly closeCodes: ReadonlyArray<number | null>
  /** When the connection closed (ms since the epoch), null while it is open. */
  readonly closedAt: () => number | null
  readonly isClosed: () => boolean
  /** Destroys the socket (its Closed event follows). */
  readonly destroy: () => void
}

export type UpgradeResult =
  /** 101, then the first text frame (kept out of the events). */
  | { readonly _tag: "Upgraded"; readonly connection: WebSocketConnection; readonly first: string }
  /** Anything but a 101: the status and the body (the socket is closed). */
  | { readonly _tag: "Refused"; readonly status: number; readonly body: string }
  /** No answer within the bound, connection refused or reset, or closed before the first frame. */
  | { readonly _tag: "NoAnswer"; readonly message: string }

interface WebSocketOptions {
  /** nginx's port on loopback (or a gateway's). */
  readonly port: number
  /** The Host header. */
  readonly host: string
  readonly path: string
  /** The bound on the whole opening (connect, 101, and the first frame when it is waited for). */
  readonly timeoutMs: number
  /** WSS: over TLS, trusting this CA, the Host as the server name (SNI), HTTP/1.1 by ALPN. */
  readonly tls?: { readonly ca: string }
}

/**
 * `GET {path}` with `Upgrade: websocket` to nginx on loopback for `host`, bounded by `timeoutMs`
 * until the first text frame. Never fails: every ending is an UpgradeResult. Interrupted, the
 * socket is destroyed; once Upgraded, the caller owns it (`destroy`).
 */
export const openWebSocket = (options: WebSocketOptions): Effect.Effect<UpgradeResult> =>
  connect(options, "first frame") as Effect.Effect<UpgradeResult>

/**
 * The same opening, settled at the 101 (bounded by `timeoutMs`): Upgraded without waiting for a
 * frame; every text then arrives in `texts` and the events.
 */
export const upgradeWebSocket = (
  options: WebSocketOptions
): Effect.Effect<Exclude<UpgradeResult, { _tag: "Upgraded" }> | { readonly _tag: "Upgraded"; readonly connection: WebSocketConnection }> =>
  connect(options, "upgrade")

const connect = (options: WebSocketOptions, settleAt: "upgrade" | "first frame") =>
  Effect.async<
    | Exclude<UpgradeResult, { _tag: "Upgraded" }>
    | { readonly _tag: "Upgraded"; readonly connection: WebSocketConnection; readonly first: string | null }
  >((resume) => {
    const socket = options.tls === undefined
      ? net.connect({ host: "127.0.0.1", port: options.port })
      : tls.connect({ host: "127.0.0.1", port: options.port, ca: options.tls.ca, servername: options.host, ALPNProtocols: ["http/1.1"] })
    const key = randomBytes(16).toString("base64")
    const read = messageReader({ masked: false, maxPayload: 1 << 20 })
    const events: Array<WebSocketEvent> = []
    const texts: Array<string> = []
    const closeCodes: Array<number | null> = []
    let head: Buffer | null = Buffer.alloc(0)
    let refusal: { status: number; response: string; body: Buffer; length: number | null } | null = null
    let upgraded = false
    let received: number | null = null
    let socketError: string | null = null
    let closedAt: number | null = null
    let settled = false

    const connection: WebSocketConnection = {
      send: (text) => {
        if (socket.destroyed || !socket.writable) return false
        socket.write(encodeFrame(Opcode.text, text, { mask: true }))
        return true
      },
      takeEvents: () => events.splice(0),
      texts,
      closeCodes,
      closedAt: () => closedAt,
      isClosed: () => closedAt !== null,
      destroy: () => void socket.destroy()
    }

    type Result = Effect.Effect.Success<ReturnType<typeof connect>>
    const settle = (result: Result) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (result._tag !== "Upgraded") socket.destroy()
      resume(Effect.succeed(result))
    }
    // A bound on the whole opening, not only on idle time.
    const timer = setTimeout(
      () => settle({ _tag: "NoAnswer", message: `no ${settleAt === "upgrade" ? "101" : "first frame"} within ${options.timeoutMs} ms` }),
      options.timeoutMs
    )

    const onFrames = (chunk: Buffer) => {
      const messages = read(chunk)
      if (Either.isLeft(messages)) {
        socketError = `unreadable frames: ${messages.left.message}`
        return void socket.destroy()
      }
      for (const message of messages.right) {
        if (message.opcode === Opcode.close) {
          received = closeCode(message.payload)
          closeCodes.push(received)
        } else if (message.opcode === Opcode.text) {
          const text = message.payload.toString("utf8")
          texts.push(text)
          if (!settled && settleAt === "first frame") settle({ _tag: "Upgraded", connection, first: text })
          else events.push({ _tag: "Text", text, at: Date.now() })
        }
      }
    }

    const finishRefusal = () => {
      if (refusal === null) return
      settle({ _tag: "Refused", status: refusal.status, body: refusal.body.toString("utf8") })
    }

    socket.on(options.tls === undefined ? "connect" : "secureConnect", () =>
      socket.write(
        `GET ${options.path} HTTP/1.1\r\nHost: ${options.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`
      ))
    socket.on("data", (chunk: Buffer) => {
      if (refusal !== null) {
        refusal.body = Buffer.concat([refusal.body, chunk])
        if (refusal.length !== null && refusal.body.length >= refusal.length) finishRefusal()
        return
      }
      if (head === null) return onFrames(chunk)
      head = Buffer.concat([head, chunk])
      const end = head.indexOf("\r\n\r\n")
      if (end < 0) return
      const response = head.subarray(0, end).toString("latin1")
      const rest = head.subarray(end + 4)
      head = null
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(response)?.[1] ?? 0)
      const accept = /^sec-websocket-accept:\s*(\S+)\s*$/im.exec(response)?.[1]
      if (status === 101 && accept === acceptKey(key)) {
        upgraded = true
        if (settleAt === "upgrade") settle({ _tag: "Upgraded", connection, first: null })
        if (rest.length > 0) onFrames(rest)
        return
      }
      // Refused: its body, up to its content-length (or the connection's end).
      const length = /^content-length:\s*(\d+)\s*$/im.exec(response)?.[1]
      refusal = { status, response, body: Buffer.from(rest), length: length === undefined ? null : Number(length) }
      if (status === 101) refusal.body = Buffer.from(`bad Sec-WebSocket-Accept in ${response}`)
      if (status === 101 || (refusal.length !== null && refusal.body.length >= refusal.length)) finishRefusal()
    })
    socket.on("error", (error) => {
      socketError = error.message
    })
    socket.on("close", () => {
      closedAt = Date.now()
      finishRefusal()
      if (!settled) {
        settle({
          _tag: "NoAnswer",
          message: socketError ?? (upgraded ? "closed after the 101, before the first frame" : "closed before an answer")
        })
      } else if (upgraded) events.push({ _tag: "Closed", at: closedAt, closeCode: received, error: socketError })
    })

    return Effect.sync(() => {
      clearTimeout(timer)
      socket.destroy()
    })
  })
