// Invariant 7: in lua mode, starting or stopping one org never breaks another org's connections.
// A reload makes nginx close its old workers' idle kept-alive connections, so a client that sends
// on one of them at that moment gets ECONNRESET (or an empty reply) for an org nobody touched;
// the route table changes no connection at all. Run in both modes with real nginx and gateways:
// a bystander org's clients use kept-alive connections while other orgs start and stop.
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { randomUUID } from "node:crypto"
import * as http from "node:http"
import { Allocator } from "../../src/allocation/Allocator.ts"
import type { LocalStack } from "../../src/dev/stack.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { hostnameOf } from "../support/rawHttp.ts"
import { ServicesLive, StackLive, withStack } from "../support/stack.ts"

const OPERATIONS = 20
const CONNECTIONS = 4

interface Tally {
  ok: number
  broken: number
  /** Requests sent on a connection that had already carried one (kept alive). */
  reused: number
}

/** One GET for the org through nginx on the agent's kept-alive connections. */
const get = (stack: LocalStack, agent: http.Agent, org: OrganizationId, tally: Tally) =>
  Effect.async<void>((resume) => {
    const request = http.request({
      host: "127.0.0.1",
      port: stack.nginx.listenPort,
      path: "/bystander",
      headers: { host: hostnameOf(stack, org) },
      agent
    }, (response) => {
      response.resume()
      response.on("end", () => {
        if (response.statusCode === 200) tally.ok += 1
        else tally.broken += 1
        resume(Effect.void)
      })
      response.on("error", () => {
        tally.broken += 1
        resume(Effect.void)
      })
    })
    request.on("socket", () => {
      if (request.reusedSocket) tally.reused += 1
    })
    request.on("error", () => {
      tally.broken += 1
      resume(Effect.void)
    })
    request.end()
  })

const measure = Effect.gen(function*() {
  const allocator = yield* Allocator
  const bystander = randomUUID() as OrganizationId
  return yield* withStack((stack) =>
    Effect.gen(function*() {
      yield* allocator.start(bystander)
      const agent = new http.Agent({ keepAlive: true, maxSockets: CONNECTIONS })
      const tally: Tally = { ok: 0, broken: 0, reused: 0 }
      // The bystander's clients send all along, a few ms apart, on their kept-alive connections.
      let running = true
      const client = Effect.gen(function*() {
        while (running) {
          yield* get(stack, agent, bystander, tally)
          // Not a wait for something: the clients' pace, a request every few ms all along.
          yield* Effect.sleep("5 millis")
        }
      })
      const clients = yield* Effect.fork(Effect.all(Array.from({ length: CONNECTIONS }, () => client), { concurrency: "unbounded" }))
      for (let i = 0; i < OPERATIONS; i++) {
        const other = randomUUID() as OrganizationId
        yield* allocator.start(other)
        yield* allocator.stop(other)
      }
      running = false
      yield* clients.await
      agent.destroy()
      yield* allocator.stop(bystander)
      return tally
    })
  )
})

const suite = (routing: "lua" | "reload") =>
  layer(ServicesLive().pipe(Layer.provideMerge(StackLive({ routing }))), { timeout: 120_000, excludeTestServices: true })(
    `a bystander org's kept-alive connections (NGINX_ROUTING=${routing})`,
    (it) => {
      it.effect(`${OPERATIONS} starts and stops of other orgs`, () =>
        Effect.gen(function*() {
          const tally = yield* measure
          // Printed for comparison: in reload mode, how many requests a reload broke is a race.
          yield* Effect.log(`${routing}: ${JSON.stringify(tally)}`)
          expect(tally.ok).toBeGreaterThan(CONNECTIONS * OPERATIONS)
          if (routing === "lua") {
            // Nothing broken, and kept-alive connections carried nearly every request.
            expect(tally.broken).toBe(0)
            expect(tally.reused).toBeGreaterThan(tally.ok * 0.9)
          }
        }))
    }
  )

describe("no reload, no collateral damage", () => {
  suite("lua")
  suite("reload")
})
