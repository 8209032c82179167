// A WebSocket client on a raw socket through nginx (the frame codec of src/dev/webSocketFrames.ts),
// for the long-lived connections of the tenant-isolation checker (./isolation.ts): it opens the
// connection, hands back the first text frame (the sample gateway's greeting), then keeps what
// arrives (text frames, the close) as events for the checker to take at its own pace.
import { Effect, Either } from "effect"
import { randomBytes } from "node:crypto"
import * as net from "node:net"
import { acceptKey, closeCode, encodeFrame, messageReader, Opcode } from "../../src/dev/webSocketFrames.ts"

export type WebSocketEvent =
  /** A text message, and when it arrived (ms since the epoch). */
  | { readonly _tag: "Text"; readonly text: string; readonly at: number }
  /** The connection closed: the status of the close frame received, if one came, and the socket error, if any. */
  | { readonly _tag: "Closed"; readonly at: number; readonly closeCode: number | null; readonly error: string | null }

export interface WebSocketConnection {
  /** Sends one masked text frame; false when the connection can no longer be written. */
  readonly send: (text: string) => boolean
  /** What arrived since the last call, in order (the first text frame is not among them). */
  readonly takeEvents: () => ReadonlyArray<WebSocketEvent>
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

/**
 * `GET {path}` with `Upgrade: websocket` to nginx on loopback for `host`, bounded by `timeoutMs`
 * until the first text frame. Never fails: every ending is an UpgradeResult. Interrupted, the
 * socket is destroyed; once Upgraded, the caller owns it (`destroy`).
 */
export const openWebSocket = (options: {
  readonly port: number
  readonly host: string
  readonly path: string
  readonly timeoutMs: number
}): Effect.Effect<UpgradeResult> =>
  Effect.async<UpgradeResult>((resume) => {
    const socket = net.connect({ host: "127.0.0.1", port: options.port })
    const key = randomBytes(16).toString("base64")
    const read = messageReader({ masked: false, maxPayload: 1 << 20 })
    const events: Array<WebSocketEvent> = []
    let head: Buffer | null = Buffer.alloc(0)
    let refusal: { status: number; response: string; body: Buffer; length: number | null } | null = null
    let first: string | null = null
    let received: number | null = null
    let socketError: string | null = null
    let closed = false
    let settled = false

    const connection: WebSocketConnection = {
      send: (text) => {
        if (socket.destroyed || !socket.writable) return false
        socket.write(encodeFrame(Opcode.text, text, { mask: true }))
        return true
      },
      takeEvents: () => events.splice(0),
      isClosed: () => closed,
      destroy: () => void socket.destroy()
    }

    const settle = (result: UpgradeResult) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (result._tag !== "Upgraded") socket.destroy()
      resume(Effect.succeed(result))
    }
    // A bound on the whole opening (connect, 101, first frame), not only on idle time.
    const timer = setTimeout(() => settle({ _tag: "NoAnswer", message: `no first frame within ${options.timeoutMs} ms` }), options.timeoutMs)

    const onFrames = (chunk: Buffer) => {
      const messages = read(chunk)
      if (Either.isLeft(messages)) {
        socketError = `unreadable frames: ${messages.left.message}`
        return void socket.destroy()
      }
      for (const message of messages.right) {
        if (message.opcode === Opcode.close) received = closeCode(message.payload)
        else if (message.opcode === Opcode.text) {
          const text = message.payload.toString("utf8")
          if (first === null) {
            first = text
            settle({ _tag: "Upgraded", connection, first: text })
          } else events.push({ _tag: "Text", text, at: Date.now() })
        }
      }
    }

    const finishRefusal = () => {
      if (refusal === null) return
      settle({ _tag: "Refused", status: refusal.status, body: refusal.body.toString("utf8") })
    }

    socket.on("connect", () =>
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
      closed = true
      finishRefusal()
      if (first === null) {
        settle({
          _tag: "NoAnswer",
          message: socketError ?? (head === null ? "closed after the 101, before the first frame" : "closed before an answer")
        })
      } else events.push({ _tag: "Closed", at: Date.now(), closeCode: received, error: socketError })
    })

    return Effect.sync(() => {
      clearTimeout(timer)
      socket.destroy()
    })
  })
