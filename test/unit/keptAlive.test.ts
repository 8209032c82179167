// The health wait through nginx keeps its connection alive in lua mode: a real local HTTP server
// stands in for nginx's org listener and counts the connections it is given. An answer left
// unread would hold its connection, so a wait through 503s would open a new one per ask. Live
// clock: the wait's retries really sleep (10 ms, 20 ms, ...).
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Layer } from "effect"
import http from "node:http"
import type { AddressInfo } from "node:net"
import { Settings } from "../../src/config.ts"
import { Handshake, HandshakeLive } from "../../src/handshake/Handshake.ts"

/** A server answering `statuses` in turn (then 200), each with a body, counting connections and requests. */
const countingServer = (statuses: ReadonlyArray<number>) =>
  Effect.acquireRelease(
    Effect.async<{ readonly port: number; readonly connections: () => number; readonly requests: () => number; readonly server: http.Server }>(
      (resume) => {
        let connections = 0
        let requests = 0
        const server = http.createServer((_request, response) => {
          const status = statuses[requests] ?? 200
          requests += 1
          response.writeHead(status, { "content-type": "text/plain" }).end(`status ${status} ${"x".repeat(2048)}`)
        })
        server.on("connection", () => (connections += 1))
        server.listen(0, "127.0.0.1", () =>
          resume(Effect.succeed({
            port: (server.address() as AddressInfo).port,
            connections: () => connections,
            requests: () => requests,
            server
          })))
      }
    ),
    ({ server }) => Effect.async<void>((resume) => {
      server.closeAllConnections()
      server.close(() => resume(Effect.void))
    })
  )

const handshakeFor = (port: number, routing: "lua" | "reload") =>
  HandshakeLive.pipe(
    Layer.provide(Settings.Default),
    Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map([
      ["NGINX_LISTEN", `127.0.0.1:${port}`],
      ["NGINX_ROUTING", routing],
      ["RELEASE_PATH", "/release"]
    ]))))
  )

describe("the health wait through nginx (real sockets)", () => {
  it.live("lua mode: one kept-alive connection through 503s and 404s to the 2xx, and for the next start's wait", () =>
    Effect.gen(function*() {
      const server = yield* countingServer([503, 404, 503, 503])
      yield* Effect.gen(function*() {
        const handshake = yield* Handshake
        yield* handshake.awaitHealthy("org-a.domain.local")
        yield* handshake.awaitHealthy("org-b.domain.local")
      }).pipe(Effect.provide(handshakeFor(server.port, "lua")))
      expect(server.requests()).toBe(6)
      expect(server.connections()).toBe(1)
    }).pipe(Effect.scoped))

  it.live("reload mode: a fresh connection for every ask (a kept one would stay with one generation of workers)", () =>
    Effect.gen(function*() {
      const server = yield* countingServer([503, 503])
      yield* Effect.gen(function*() {
        const handshake = yield* Handshake
        yield* handshake.awaitHealthy("org-a.domain.local")
      }).pipe(Effect.provide(handshakeFor(server.port, "reload")))
      expect(server.requests()).toBe(3)
      expect(server.connections()).toBe(3)
    }).pipe(Effect.scoped))
})
