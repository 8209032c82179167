// Ports picked for the dev stack's and the tests' child processes (Postgres, nginx, PowerDNS):
// a port handed out must stay ours until the child binds it, which can be seconds later (nginx
// binds its route API only when the service installs its file).
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { readFileSync } from "node:fs"
import * as net from "node:net"
import { freePort } from "../../src/lib/ports.ts"

const ephemeralLow = Number.parseInt(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0] ?? "", 10)

const listenOn = (port: number) =>
  Effect.acquireRelease(
    Effect.async<net.Server, Error>((resume) => {
      const server = net.createServer()
      server.once("error", (error) => resume(Effect.fail(error)))
      server.listen(port, "127.0.0.1", () => resume(Effect.succeed(server)))
    }),
    (server) => Effect.async<void>((resume) => void server.close(() => resume(Effect.void)))
  )

describe("freePort", () => {
  it.effect("never hands out a port twice, and only ports below the kernel's ephemeral range", () =>
    Effect.gen(function*() {
      const ports = yield* Effect.all(Array.from({ length: 300 }, () => freePort))
      expect(new Set(ports).size).toBe(ports.length)
      for (const port of ports) {
        expect(port).toBeGreaterThanOrEqual(10_000)
        expect(port).toBeLessThan(ephemeralLow)
      }
    }))

  it.scoped("a port handed out but not yet bound is not what the kernel gives listen(0)", () =>
    Effect.gen(function*() {
      const picked = yield* freePort
      // Everything that binds port 0 (sample gateways, the tests' HTTP servers) or connects out
      // takes its port from the ephemeral range, so it cannot take ours before its owner binds it.
      const kernelPorts = yield* Effect.forEach(Array.from({ length: 50 }), () =>
        Effect.map(listenOn(0), (server) => {
          const address = server.address()
          return typeof address === "object" && address !== null ? address.port : 0
        }))
      expect(kernelPorts).not.toContain(picked)
      expect(kernelPorts.every((port) => port >= ephemeralLow)).toBe(true)
      // And it is really free: its owner can bind it.
      yield* listenOn(picked)
    }))
})
