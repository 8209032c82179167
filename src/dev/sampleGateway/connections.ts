// The sample gateway's open connections and the allocation each served: a release closes its
// allocation's connections (kept-alive sockets, streams, WebSockets), so none outlives it.
import type * as http from "node:http"
import type * as net from "node:net"
import { closePayload, encodeFrame, Opcode } from "../webSocketFrames.ts"

export interface Connections {
  /** Marks a socket as carrying `allocation`'s requests (the last one it carried wins). */
  readonly tag: (socket: net.Socket, allocation: string) => void
  /** The allocation a socket carried, or null. */
  readonly tagOf: (socket: net.Socket) => string | null
  /** Tracks a socket the http server handed over on upgrade. */
  readonly upgraded: (socket: net.Socket) => void
  /** Destroys a socket; a WebSocket is sent a close frame first, so its client knows why. */
  readonly close: (socket: net.Socket, code: number, reason: string) => void
  /** Destroys every socket tagged with `allocation` (null: every tagged one); calls back once all have closed. */
  readonly closeTagged: (allocation: string | null, onClosed: (count: number) => void) => void
  /**
   * A release or reset arriving on a connection it would close (`allocation`'s, or any tagged
   * one for null): answered first, then that connection closes.
   */
  readonly spareOwn: (req: http.IncomingMessage, res: http.ServerResponse, allocation: string | null) => void
  /** Tagged sockets still open. */
  readonly openCount: () => number
  /** Destroys every upgraded socket, on shutdown. */
  readonly destroyUpgraded: () => void
}

export const makeConnections = (): Connections => {
  // The http server stops tracking a socket once upgraded: closeAllConnections() misses these.
  const upgradedSockets = new Set<net.Socket>()
  const tags = new Map<net.Socket, string>()

  const close = (socket: net.Socket, code: number, reason: string): void => {
    if (upgradedSockets.has(socket) && socket.writable) socket.write(encodeFrame(Opcode.close, closePayload(code, reason)))
    socket.destroy()
  }

  return {
    tag: (socket, allocation) => {
      if (socket.destroyed) return
      if (!tags.has(socket)) socket.once("close", () => tags.delete(socket))
      tags.set(socket, allocation)
    },
    tagOf: (socket) => tags.get(socket) ?? null,
    upgraded: (socket) => {
      upgradedSockets.add(socket)
      socket.once("close", () => upgradedSockets.delete(socket))
    },
    close,
    closeTagged: (allocation, onClosed) => {
      const sockets = [...tags].flatMap(([socket, tagged]) => (allocation === null || tagged === allocation ? [socket] : []))
      let open = sockets.length
      if (open === 0) return onClosed(0)
      for (const socket of sockets) {
        socket.once("close", () => {
          open -= 1
          if (open === 0) onClosed(sockets.length)
        })
        close(socket, 1001, "allocation released")
      }
    },
    spareOwn: (req, res, allocation) => {
      const own = tags.get(req.socket)
      if (own === undefined || (allocation !== null && own !== allocation)) return
      tags.delete(req.socket)
      res.setHeader("connection", "close")
    },
    openCount: () => [...tags.keys()].filter((socket) => !socket.destroyed).length,
    destroyUpgraded: () => {
      for (const socket of upgradedSockets) socket.destroy()
    }
  }
}
