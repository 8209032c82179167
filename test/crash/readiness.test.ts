// A dependency that goes away is told once, not on every tick, and /readyz says so: the real
// service (a child process) over the real stack, nginx stopped for a while, then started again.
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Schedule } from "effect"
import { readFileSync } from "node:fs"
import { request, startServer } from "../support/server.ts"
import { Stack, StackLive } from "../support/stack.ts"

const OUTAGE_MS = 12_000

/** The service's log lines (JSON) written since `offset` bytes. */
const linesSince = (file: string, offset: number) =>
  readFileSync(file, "utf8").slice(offset).split("\n").filter((line) => line.startsWith("{")).map((line) =>
    JSON.parse(line) as { level: string; message: string; dependency?: string }
  )

layer(StackLive({ gateways: 1 }), { timeout: 120_000, excludeTestServices: true })("readiness", (it) => {
  it.scoped("nginx gone: a bounded number of log lines, /readyz 503 naming the edge, /healthz still 200; back: /readyz 200", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const server = yield* startServer(stack, { name: "readiness" })
      const readyz = request(server, "GET", "/readyz", { timeoutMs: 5000 })
      expect(yield* readyz).toMatchObject({ status: 200, json: { status: "ready" } })

      const offset = readFileSync(server.logFile, "utf8").length
      yield* stack.nginx.stop
      const notReady = yield* readyz.pipe(
        Effect.filterOrFail((answer) => answer.status === 503),
        Effect.retry(Schedule.spaced(Duration.millis(200))),
        Effect.timeout(Duration.seconds(10))
      )
      expect(notReady.json).toMatchObject({
        _tag: "NotReady",
        not_ready: [{ dependency: "edge", reason: expect.any(String), since: expect.any(String) }]
      })
      expect((yield* request(server, "GET", "/healthz")).status).toBe(200)
      // The wait is what is tested: an outage that lasts, over which the log must stay quiet.
      yield* Effect.sleep(Duration.millis(OUTAGE_MS))

      // Told once when it went (and a route-table watcher that meets it every 250 ms adds nothing).
      const during = linesSince(server.logFile, offset)
      const aboutTheEdge = during.filter((line) => line.level !== "INFO" && /nginx|edge|route table/i.test(line.message))
      expect(aboutTheEdge.length).toBeLessThanOrEqual(2)
      expect(during.some((line) => line.dependency === "edge" && line.message.startsWith("edge is failing"))).toBe(true)
      // Far fewer than one a tick: each line short.
      expect(during.length).toBeLessThan(10)

      yield* Effect.orDie(stack.nginx.start)
      yield* readyz.pipe(
        Effect.filterOrFail((answer) => answer.status === 200),
        Effect.retry(Schedule.spaced(Duration.millis(200))),
        Effect.timeout(Duration.seconds(10))
      )
      expect(linesSince(server.logFile, offset).some((line) => line.message.startsWith("edge is back after"))).toBe(true)
    }))
})
