import { Effect } from "effect"
import * as net from "node:net"

/**
 * A TCP port that was free on 127.0.0.1 a moment ago: the kernel picks it
 * (listen on port 0), we read it and close. Another process may still take it
 * before the caller binds, which is acceptable for a dev stack and tests.
 */
export const freePort: Effect.Effect<number> = Effect.async<number, Error>((resume) => {
  const server = net.createServer()
  server.unref()
  server.once("error", (error) => resume(Effect.fail(error)))
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() =>
      resume(port > 0 ? Effect.succeed(port) : Effect.fail(new Error("no port from listen(0)")))
    )
  })
}).pipe(
  // Failing to bind 127.0.0.1:0 means the machine has no usable loopback: nothing to recover.
  Effect.orDie,
  Effect.withSpan("ports.freePort")
)
