// The sample gateway's long-lived connections: server-sent events and WebSockets, each fenced
// per event or message, so none keeps serving an allocation the gateway no longer holds.
import { Either } from "effect"
import type * as http from "node:http"
import type * as net from "node:net"
import {
  acceptKey,
  closeCode,
  closePayload,
  encodeFrame,
  type Message,
  messageReader,
  Opcode
} from "../webSocketFrames.ts"
import { admit, fenced, type GatewayContext, holding } from "./context.ts"
import { refuseUpgrade } from "./http.ts"

/** A WebSocket message larger than this closes the connection (1009). */
const MAX_MESSAGE_BYTES = 1 << 20

/** Server-sent events until the connection closes, or (enforce) until its allocation is no longer held. */
export const stream = (ctx: GatewayContext, res: http.ServerResponse, connection: string | null): void => {
  const { state } = ctx
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store" })
  let seq = 0
  const emit = () => {
    if (res.destroyed) return
    if (fenced(state, connection)) return void res.socket?.destroy()
    const event = { gateway: state.name, ...holding(state), connection_allocation: connection, seq: seq++ }
    res.write(`data: ${JSON.stringify(event)}\n\n`)
  }
  const stop = ctx.timers.every(ctx.streamIntervalMs, emit)
  res.once("close", stop)
  emit()
}

/** The `upgrade` listener of one sample gateway's server: a WebSocket that echoes, fenced per message. */
export const makeUpgradeHandler = (ctx: GatewayContext) => {
  const { state, connections } = ctx

  const onMessage = (socket: net.Socket, message: Message): void => {
    if (message.opcode === Opcode.close) {
      // Close handshake: the status echoed, then hang up once it is written.
      const code = closeCode(message.payload)
      return void socket.end(encodeFrame(Opcode.close, code === null ? Buffer.alloc(0) : closePayload(code)), () =>
        socket.destroy())
    }
    if (message.opcode === Opcode.pong) return
    // Per-message fence: a connection opened for an allocation the gateway no longer holds gets nothing more.
    const connection = connections.tagOf(socket)
    if (fenced(state, connection)) return connections.close(socket, 1008, "allocation no longer held")
    if (message.opcode === Opcode.ping) return void socket.write(encodeFrame(Opcode.pong, message.payload))
    const reply = {
      gateway: state.name,
      ...holding(state),
      connection_allocation: connection,
      echo: message.payload.toString("utf8")
    }
    socket.write(encodeFrame(Opcode.text, JSON.stringify(reply)))
  }

  return (req: http.IncomingMessage, socket: net.Socket, head: Buffer): void => {
    socket.on("error", () => socket.destroy())
    const url = new URL(req.url ?? "/", "http://gateway")
    if (url.pathname.startsWith("/__")) return refuseUpgrade(socket, 404, { error: "no WebSocket here", gateway: state.name })
    const key = req.headers["sec-websocket-key"]
    if (typeof key !== "string") return refuseUpgrade(socket, 400, { error: "no Sec-WebSocket-Key", gateway: state.name })
    const admitted = admit(state, req)
    if (Either.isLeft(admitted)) return refuseUpgrade(socket, 421, admitted.left)
    connections.upgraded(socket)
    if (admitted.right !== null) connections.tag(socket, admitted.right)
    socket.write(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        `Sec-WebSocket-Accept: ${acceptKey(key)}\r\n\r\n`
    )
    socket.write(encodeFrame(Opcode.text, JSON.stringify({ gateway: state.name, path: req.url ?? "/", ...holding(state) })))
    const read = messageReader({ masked: true, maxPayload: MAX_MESSAGE_BYTES })
    const onData = (chunk: Buffer) => {
      const messages = read(chunk)
      if (Either.isLeft(messages)) return connections.close(socket, messages.left.closeCode, messages.left.message)
      for (const message of messages.right) {
        if (socket.destroyed || !socket.writable) return
        onMessage(socket, message)
      }
    }
    socket.on("data", onData)
    if (head.length > 0) onData(head)
  }
}
