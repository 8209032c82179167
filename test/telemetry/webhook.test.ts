// The rollback webhook against a real HTTP receiver on 127.0.0.1: one report per incomplete
// rollback, none for a clean one, retries with backoff, a bounded queue that never blocks, and
// no secret of the URL in the logs.
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Exit, Layer, Redacted, Ref } from "effect"
import { randomUUID } from "node:crypto"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { type Notice, Notifier, NotifierLive, NotifierWebhook } from "../../src/telemetry/Notifier.ts"
import { awaitThat } from "../support/poll.ts"
import { configFrom } from "../support/stack.ts"
import { setFault, TestWorld } from "../support/TestLayers.ts"
import { captureLogs, startFailure, TestServices } from "./harness.ts"

interface Received {
  readonly path: string
  readonly headers: IncomingMessage["headers"]
  readonly body: any
}

type Answer = (request: Received, index: number) => number | "hang"

/** A webhook receiver on 127.0.0.1 for the scope of the test; answers with `answer`'s status. */
const receiver = (answer: Answer = () => 204) =>
  Effect.acquireRelease(
    Effect.async<{
      readonly url: (path: string) => string
      readonly received: Array<Received>
      readonly server: ReturnType<typeof createServer>
    }>((resume) => {
      const received: Array<Received> = []
      const hanging: Array<ServerResponse> = []
      const server = createServer((request, response) => {
        let text = ""
        request.setEncoding("utf8")
        request.on("data", (chunk: string) => (text += chunk))
        request.on("end", () => {
          const entry: Received = { path: request.url ?? "", headers: request.headers, body: JSON.parse(text) }
          received.push(entry)
          const status = answer(entry, received.length - 1)
          if (status === "hang") hanging.push(response)
          else response.writeHead(status).end()
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const port = (server.address() as AddressInfo).port
        resume(Effect.succeed({ url: (path: string) => `http://127.0.0.1:${port}${path}`, received, server }))
      })
    }),
    ({ server }) =>
      Effect.async<void>((resume) => {
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  )

const notice = (n: number): Notice => ({
  kind: "rollback_incomplete",
  organization_id: `org-${n}`,
  allocation_id: null,
  gateway_id: null,
  message: `notice ${n}`,
  undos: []
})

describe("rollback webhook", () => {
  it.live("an incomplete rollback is reported exactly once; a clean rollback is not reported", () =>
    Effect.gen(function*() {
      const hook = yield* receiver()
      const services = TestServices({
        env: { ROLLBACK_WEBHOOK_URL: hook.url("/hooks/rollbacks") },
        outside: NotifierLive
      })
      yield* Effect.gen(function*() {
        // Clean rollback first: if it were reported, its report would arrive first (one queue).
        yield* setFault("handshake.handshake", "fail")
        const clean = randomUUID() as OrganizationId
        const cleanError = yield* startFailure(clean)
        expect(cleanError._tag).toBe("StepFailed")

        yield* setFault("dns.remove", "fail")
        const org = randomUUID() as OrganizationId
        const error = yield* startFailure(org)
        if (error._tag !== "StepFailed") return expect.fail("expected StepFailed")

        yield* awaitThat("the report", () => hook.received.length >= 1, { withinMs: 5000 })
        // Not a wait for something: the window in which a second report (the clean rollback's) must not come.
        yield* Effect.sleep(Duration.millis(300))
        expect(hook.received).toHaveLength(1)
        const [report] = hook.received
        expect(report!.path).toBe("/hooks/rollbacks")
        expect(report!.headers["content-type"]).toMatch(/^application\/json/)
        expect(report!.headers["idempotency-key"]).toMatch(/^[0-9a-f-]{36}$/)
        expect(report!.body).toMatchObject({
          kind: "rollback_incomplete",
          organization_id: org,
          allocation_id: error.allocationId,
          gateway_id: expect.stringMatching(/^[0-9a-f-]{36}$/),
          step: "handshake",
          message: expect.stringMatching(/HTTP 500/),
          undos: [
            { step: "nginx-reload", status: "done" },
            { step: "nginx-config", status: "done" },
            { step: "dns", status: "failed" },
            { step: "allocate", status: "done" }
          ]
        })
        // The webhook notifier replaced the test layers' recording one.
        const world = yield* TestWorld
        expect(yield* Ref.get(world.notices)).toEqual([])
      }).pipe(Effect.provide(services))
    }).pipe(Effect.scoped))

  it.live("a failed delivery is retried with backoff, with the same idempotency key", () =>
    Effect.gen(function*() {
      const hook = yield* receiver((_, index) => (index < 2 ? 503 : 200))
      const logs = captureLogs()
      yield* Effect.gen(function*() {
        const notifier = yield* Notifier
        yield* notifier.notify(notice(1))
        yield* awaitThat("three attempts", () => hook.received.length >= 3, { withinMs: 5000 })
        yield* awaitThat("the delivery's log line", () => logs.lines.some((l) => String(l.message).startsWith("webhook delivered")), {
          withinMs: 5000
        })
      }).pipe(
        Effect.provide(
          NotifierWebhook({ url: Redacted.make(hook.url("/h")), backoff: Duration.millis(20), maxAttempts: 5 })
        ),
        Effect.provide(logs.layer),
        Effect.scoped
      )
      expect(hook.received).toHaveLength(3)
      expect(new Set(hook.received.map((r) => r.headers["idempotency-key"])).size).toBe(1)
      expect(logs.lines.find((l) => String(l.message).startsWith("webhook delivered"))?.message)
        .toMatch(/after 3 attempts/)
    }).pipe(Effect.scoped))

  it.live("delivery gives up after the attempt bound and logs it, without the URL's secret parts", () =>
    Effect.gen(function*() {
      const hook = yield* receiver(() => 500)
      const logs = captureLogs()
      const secretUrl = hook.url("/hooks/s3cr3t-path-token?key=s3cr3t-query-key").replace(
        "http://",
        "http://user:s3cr3t-password@"
      )
      yield* Effect.gen(function*() {
        const notifier = yield* Notifier
        yield* notifier.notify(notice(2))
        yield* awaitThat("the failure's log line", () => logs.lines.some((l) => String(l.message).startsWith("webhook delivery")), {
          withinMs: 5000
        })
      }).pipe(
        Effect.provide(NotifierWebhook({ url: Redacted.make(secretUrl), backoff: Duration.millis(10), maxAttempts: 3 })),
        Effect.provide(logs.layer),
        Effect.scoped
      )
      expect(hook.received).toHaveLength(3)
      const failure = logs.lines.find((l) => String(l.message).startsWith("webhook delivery"))!
      expect(failure).toMatchObject({ level: "ERROR", notice_kind: "rollback_incomplete", organization_id: "org-2" })
      expect(failure.message).toBe(
        `webhook delivery to ${hook.url("")} failed after 3 attempt(s): HTTP 500`
      )
      const everything = JSON.stringify(logs.lines)
      expect(everything).not.toContain("s3cr3t")
    }).pipe(Effect.scoped))

  it.live("a 4xx answer is not retried", () =>
    Effect.gen(function*() {
      const hook = yield* receiver(() => 400)
      const logs = captureLogs()
      yield* Effect.gen(function*() {
        yield* Effect.flatMap(Notifier, (notifier) => notifier.notify(notice(3)))
        yield* awaitThat("the failure's log line", () => logs.lines.some((l) => String(l.message).startsWith("webhook delivery")), {
          withinMs: 5000
        })
      }).pipe(
        Effect.provide(NotifierWebhook({ url: Redacted.make(hook.url("/h")), backoff: Duration.millis(10) })),
        Effect.provide(logs.layer),
        Effect.scoped
      )
      expect(hook.received).toHaveLength(1)
      expect(logs.lines.find((l) => String(l.message).startsWith("webhook delivery"))?.message).toMatch(
        /failed after 1 attempt\(s\): HTTP 400 \(not retried\)/
      )
    }).pipe(Effect.scoped))

  it.live("notify never blocks: a hung receiver and a full queue drop notices (logged), callers go on", () =>
    Effect.gen(function*() {
      const hook = yield* receiver(() => "hang")
      const logs = captureLogs()
      yield* Effect.gen(function*() {
        const notifier = yield* Notifier
        const before = Date.now()
        // One in flight (hung), two queued, the rest dropped.
        for (let n = 0; n < 6; n++) yield* notifier.notify(notice(n))
        expect(Date.now() - before).toBeLessThan(200)
        yield* awaitThat("the hung delivery", () => hook.received.length === 1, { withinMs: 5000 })
      }).pipe(
        Effect.provide(
          NotifierWebhook({
            url: Redacted.make(hook.url("/h")),
            capacity: 2,
            attemptTimeout: Duration.seconds(30),
            drainTimeout: Duration.millis(100)
          })
        ),
        Effect.provide(logs.layer),
        Effect.scoped
      )
      const dropped = logs.lines.filter((l) => String(l.message).startsWith("webhook queue full"))
      expect(dropped.length).toBeGreaterThanOrEqual(2)
      expect(dropped[0]).toMatchObject({ level: "WARN", notice_kind: "rollback_incomplete" })
      // Shutdown waited a bounded time for the rest, then said what was lost.
      expect(logs.lines.some((l) => /^shutdown: \d+ webhook message\(s\) to .* dropped$/.test(String(l.message))))
        .toBe(true)
    }).pipe(Effect.scoped))

  it.effect("ROLLBACK_WEBHOOK_URL must be an absolute http(s) URL; unset means log-only", () =>
    Effect.gen(function*() {
      for (const bad of ["not a url", "ftp://example.com/hook", "/relative"]) {
        const exit = yield* Layer.build(NotifierLive).pipe(
          Effect.provide(configFrom({ ROLLBACK_WEBHOOK_URL: bad })),
          Effect.scoped,
          Effect.exit
        )
        expect(Exit.isFailure(exit), bad).toBe(true)
      }
      const logOnly = yield* Effect.flatMap(Notifier, (notifier) => notifier.notify(notice(9))).pipe(
        Effect.provide(NotifierLive.pipe(Layer.provide(configFrom({})))),
        Effect.exit
      )
      expect(Exit.isSuccess(logOnly)).toBe(true)
    }))
})
