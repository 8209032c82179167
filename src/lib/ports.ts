import { Effect, Option } from "effect"
import { readFileSync } from "node:fs"
import * as net from "node:net"

/**
 * Where picked ports come from: below the kernel's ephemeral range, which is where `listen(0)`
 * and every outgoing connection's local port come from. A port picked from inside that range was
 * once handed to Postgres by the kernel while the nginx that had picked it a moment earlier had
 * not bound it yet (nginx binds its route API only at the service's install): the install's
 * reload failed with EADDRINUSE. Below the range only another explicit pick can take it.
 */
const PICK_FLOOR = 10_000

const ephemeralFloor = (): number => {
  const range = (() => {
    try {
      return readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8")
    } catch {
      return "" // not Linux: the kernel's range is unknown
    }
  })()
  const low = Number.parseInt(range.trim().split(/\s+/)[0] ?? "", 10)
  return Number.isInteger(low) && low > PICK_FLOOR + 1_000 ? low : 32_768
}

/** Ports this process has handed out: never twice, even once the first taker has closed it. */
const handedOut = new Set<number>()

const bindable = (port: number) =>
  Effect.async<boolean>((resume) => {
    const server = net.createServer()
    server.unref()
    server.once("error", () => resume(Effect.succeed(false)))
    server.listen({ port, host: "127.0.0.1", exclusive: true }, () => server.close(() => resume(Effect.succeed(true))))
  })

/**
 * A TCP port on 127.0.0.1 for a child process to bind later (a dev stack's or a test's Postgres,
 * nginx, PowerDNS): random below the ephemeral range, bindable when picked, and never handed out
 * twice by this process. Another process picking ports the same way could still take it first;
 * the dev stack and the tests pick from one process each.
 */
export const freePort: Effect.Effect<number> = Effect.suspend(() => {
  const ceiling = ephemeralFloor()
  const tryOne = Effect.suspend(() => {
    const port = PICK_FLOOR + Math.floor(Math.random() * (ceiling - PICK_FLOOR))
    return handedOut.has(port)
      ? Effect.succeedNone
      : Effect.map(bindable(port), (free) => (free ? Option.some(port) : Option.none()))
  })
  return tryOne.pipe(
    Effect.repeat({ until: Option.isSome, times: 200 }),
    Effect.flatMap(Option.match({
      // 200 random ports in a range of ~20,000 all taken: the machine's loopback is unusable.
      onNone: () => Effect.dieMessage(`no bindable port on 127.0.0.1 between ${PICK_FLOOR} and ${ceiling} after 200 tries`),
      onSome: (port) =>
        Effect.sync(() => {
          handedOut.add(port)
          return port
        })
    }))
  )
}).pipe(Effect.withSpan("ports.freePort"))
