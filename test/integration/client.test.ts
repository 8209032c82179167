// gateway-allocator/client (src/client) against the real service: HttpServerLive on 127.0.0.1 over
// the real stack (embedded Postgres, nginx, PowerDNS, two sample gateways). The Effect and the
// Promise API: the answers as the API types them, each typed error the service can be made to
// answer here, the retry on 503 and on no answer (and none with `retry: false`), ids refused before
// anything is sent, and the token kept out of spans.
import { FetchHttpClient, HttpClient } from "@effect/platform"
import { describe, expect, layer } from "@effect/vitest"
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Effect, Fiber, Layer, Metric, Redacted, Ref } from "effect"
import { randomUUID } from "node:crypto"
import {
  createClient,
  InvalidRequest,
  isGatewayAllocatorError,
  make,
  NoGatewayAvailableResponse,
  NotFound,
  type PromiseClient,
  type Retry,
  StepFailedResponse,
  StepTimedOutResponse,
  TransportError,
  Unauthorized
} from "../../src/client/index.ts"
import type { GatewayState } from "../../src/domain/gateway.ts"
import { undoOrder } from "../../src/domain/steps.ts"
import { freePort } from "../../src/lib/ports.ts"
import { startsTotal } from "../../src/telemetry/Metrics.ts"
import { layerTracer, ResourceLive } from "../../src/telemetry/Tracing.ts"
import { ApiServer, call, get, HttpApiLive, post } from "../support/http.ts"
import { expected, reportOf, stepsBefore, undoOrderOf } from "../support/journal.ts"
import { pollUntil } from "../support/poll.ts"
import { setAllGateways, StackLive, withStack } from "../support/stack.ts"

const STEP_TIMEOUT_MS = 2000

const newOrg = () => randomUUID()

const uuid = expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)

/** What each try of a call got: its status, or no answer. */
type Answer = number | "no answer"

interface ClientSettings {
  readonly token?: string
  readonly baseUrl?: string
  readonly retry?: Retry
}

const optionsFor = (server: { readonly baseUrl: string; readonly token: string }, settings: ClientSettings) => ({
  baseUrl: settings.baseUrl ?? server.baseUrl,
  ...(settings.retry === undefined ? {} : { retry: settings.retry })
})

/** The Effect API over fetch, and the answer of every try it sent (a retried call sends several). */
const effectClient = (settings: ClientSettings = {}) =>
  Effect.gen(function*() {
    const server = yield* ApiServer
    const answers = yield* Ref.make<ReadonlyArray<Answer>>([])
    const record = (answer: Answer) => Ref.update(answers, (all) => [...all, answer])
    const recording = Layer.effect(
      HttpClient.HttpClient,
      Effect.map(HttpClient.HttpClient, (client) =>
        client.pipe(HttpClient.tap((response) => record(response.status)), HttpClient.tapError(() => record("no answer"))))
    ).pipe(Layer.provide(FetchHttpClient.layer))
    const client = yield* make({ ...optionsFor(server, settings), token: Redacted.make(settings.token ?? server.token) }).pipe(
      Effect.provide(recording)
    )
    return { client, answers: Ref.get(answers) }
  })

/** The Promise API for one test, closed after it. */
const withPromiseClient = <A, E, R>(settings: ClientSettings, use: (client: PromiseClient) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(ApiServer, (server) =>
    Effect.acquireUseRelease(
      Effect.sync(() => createClient({ ...optionsFor(server, settings), token: settings.token ?? server.token })),
      use,
      (client) => Effect.promise(() => client.close())
    ))

/** What a Promise API call rejected with (a call that resolved fails the test). */
const rejection = <A>(call: () => Promise<A>) =>
  Effect.promise(() =>
    call().then(
      (value) => ({ resolved: value }),
      (error: unknown) => ({ rejected: error })
    )
  ).pipe(Effect.map((outcome) => {
    expect(outcome).toHaveProperty("rejected")
    return "rejected" in outcome ? outcome.rejected : undefined
  }))

/** Stops the org if a test left it running (a failed assertion must not leak a gateway). */
const stopQuietly = (org: string) => Effect.asVoid(post("/gateway/stop", { organization_id: org }))

const gatewayIds = Effect.map(get("/pool"), (response) =>
  (response.json.gateways as ReadonlyArray<{ readonly gateway_id: string }>).map((gateway) => gateway.gateway_id))

const setState = (gatewayId: string, state: GatewayState) =>
  Effect.map(call("PATCH", `/pool/gateways/${gatewayId}`, { body: { state } }), (response) => expect(response.status).toBe(200))

/** Runs `body` with every gateway draining (no start can get one), and makes them active again after it. */
const withPoolDrained = <A, E, R>(body: (gateways: ReadonlyArray<string>) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(gatewayIds, (gateways) =>
    Effect.acquireUseRelease(
      Effect.forEach(gateways, (id) => setState(id, "draining"), { discard: true }),
      () => body(gateways),
      () => Effect.forEach(gateways, (id) => setState(id, "active"), { discard: true })
    ))

const noGatewayStarts = Effect.map(Metric.value(startsTotal.pipe(Metric.tagged("outcome", "no_gateway"))), (state) => state.count)

/** Quick tries: these tests retry against a refused port or a drained pool. */
const quickRetry: Retry = { attempts: 3, baseDelay: "10 millis" }

/** Enough tries for a gateway made active after the first 503 to be found by a later try. */
const patientRetry: Retry = { attempts: 8, baseDelay: "200 millis", maxDelay: "1 second" }

layer(
  HttpApiLive({ STEP_TIMEOUT_MS: String(STEP_TIMEOUT_MS), RECONCILE_INTERVAL_MS: "3600000" }).pipe(
    Layer.provideMerge(StackLive({ gateways: 2 }))
  ),
  { timeout: 120_000, excludeTestServices: true }
)("gateway-allocator/client against the service", (it) => {
  describe("answers", () => {
    it.effect("Effect API: start (typed), start again (reused), status, allocation, stop, then stop and status NotFound; pool and ready", () =>
      withStack(() =>
        Effect.gen(function*() {
          const { answers, client } = yield* effectClient()
          const org = newOrg()
          yield* Effect.gen(function*() {
            const started = yield* client.start(org)
            expect(started).toEqual({
              organization_id: org,
              gateway_id: uuid,
              gateway_hostname: `org-${org}.domain.local`,
              allocation_id: uuid,
              reused: false
            })
            // The same org in capitals: the client sends the API's (lower-case) form.
            expect(yield* client.start(org.toUpperCase())).toEqual({ ...started, reused: true })
            expect(yield* client.status(org)).toEqual({
              organization_id: org,
              gateway_id: started.gateway_id,
              gateway_hostname: started.gateway_hostname,
              allocation_id: started.allocation_id,
              upstream: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
              state: "active"
            })
            const allocation = yield* client.allocation(started.allocation_id)
            expect(allocation).toMatchObject({ allocation_id: started.allocation_id, organization_id: org, state: "active", rollback: [] })
            const pool = yield* client.pool()
            expect({ total: pool.total, allocated: pool.allocated }).toEqual({ total: 2, allocated: 1 })
            expect(yield* client.ready()).toEqual({ status: "ready" })

            expect(yield* client.stop(org)).toEqual({
              organization_id: org,
              gateway_id: started.gateway_id,
              released: true,
              gateway_release: "done"
            })
            const stopAgain = yield* Effect.flip(client.stop(org))
            expect(stopAgain).toBeInstanceOf(NotFound)
            expect(stopAgain._tag).toBe("NotFound")
            expect((yield* Effect.flip(client.status(org)))._tag).toBe("NotFound")
            // One try each: nothing was retried.
            expect(yield* answers).toEqual([200, 200, 200, 200, 200, 200, 200, 404, 404])
          }).pipe(Effect.ensuring(stopQuietly(org)))
        })
      ))

    it.effect("Promise API: start, start again (reused), status, stop; a second stop rejects with the NotFound instance", () =>
      withPromiseClient({}, (client) => {
        const org = newOrg()
        return Effect.gen(function*() {
          const started = yield* Effect.promise(() => client.start(org))
          expect(started).toMatchObject({ organization_id: org, gateway_hostname: `org-${org}.domain.local`, reused: false })
          expect(yield* Effect.promise(() => client.start(org))).toEqual({ ...started, reused: true })
          expect(yield* Effect.promise(() => client.status(org))).toMatchObject({ allocation_id: started.allocation_id, state: "active" })
          expect(yield* Effect.promise(() => client.stop(org))).toMatchObject({ gateway_id: started.gateway_id, released: true })

          const error = yield* rejection(() => client.stop(org))
          expect(error).toBeInstanceOf(NotFound)
          expect(isGatewayAllocatorError(error) ? error._tag : error).toBe("NotFound")
        }).pipe(Effect.ensuring(stopQuietly(org)))
      }))
  })

  describe("typed errors", () => {
    it.effect("Unauthorized with a wrong token, tried once, from both APIs", () =>
      Effect.gen(function*() {
        const { answers, client } = yield* effectClient({ token: "wrong-token" })
        const error = yield* Effect.flip(client.start(newOrg()))
        expect(error).toBeInstanceOf(Unauthorized)
        expect(error._tag).toBe("Unauthorized")
        expect(yield* answers).toEqual([401])

        const rejected = yield* withPromiseClient({ token: "wrong-token" }, (promised) => rejection(() => promised.pool()))
        expect(rejected).toBeInstanceOf(Unauthorized)
      }))

    it.effect("NoGatewayAvailable with every gateway draining: at once with retry: false, after 3 tries by default", () =>
      withPoolDrained(() =>
        Effect.gen(function*() {
          const once = yield* effectClient({ retry: false })
          const error = yield* Effect.flip(once.client.start(newOrg()))
          expect(error).toBeInstanceOf(NoGatewayAvailableResponse)
          expect(error._tag).toBe("NoGatewayAvailable")
          expect(error.message).toMatch(/no gateway/i)
          expect(yield* once.answers).toEqual([503])

          const retried = yield* effectClient()
          expect((yield* Effect.flip(retried.client.start(newOrg())))._tag).toBe("NoGatewayAvailable")
          expect(yield* retried.answers).toEqual([503, 503, 503])

          const rejected = yield* withPromiseClient({ retry: false }, (client) => rejection(() => client.start(newOrg())))
          expect(rejected).toBeInstanceOf(NoGatewayAvailableResponse)
        })
      ))

    it.effect("StepFailed when the handshake answers 500: its step, rollback and attempts, not retried; the Promise API rejects with the instance", () =>
      withStack((stack) =>
        Effect.gen(function*() {
          yield* setAllGateways(stack, { handshake: "fail" })
          const { answers, client } = yield* effectClient()
          const error = yield* Effect.flip(client.start(newOrg()))
          if (!(error instanceof StepFailedResponse)) return expect.fail(`expected StepFailed, got ${error._tag}`)
          expect(error.step).toBe("handshake")
          expect(error.message).toContain("HTTP 500")
          expect(error.allocation_id).toEqual(uuid)
          // The gateway refused the handshake: every step before it undone, in reverse order.
          expect(reportOf(error.rollback)).toEqual(expected.rollback(undoOrderOf(stepsBefore("handshake"))))
          // START_ATTEMPTS=1 here (test/support/stack.ts): one gateway tried.
          expect(error.attempts).toEqual([
            {
              gateway_id: uuid,
              allocation_id: error.allocation_id,
              step: "handshake",
              message: expect.stringContaining("HTTP 500"),
              rollback: error.rollback
            }
          ])
          expect(yield* answers).toEqual([502])

          const rejected = yield* withPromiseClient({}, (promised) => rejection(() => promised.start(newOrg())))
          expect(rejected).toBeInstanceOf(StepFailedResponse)
          expect(rejected).toMatchObject({ _tag: "StepFailed", step: "handshake" })
        })
      ))

    it.effect("StepTimedOut when the handshake never answers: its step and timeout_ms", () =>
      withStack((stack) =>
        Effect.gen(function*() {
          yield* setAllGateways(stack, { handshake: "hang" })
          const { answers, client } = yield* effectClient()
          const error = yield* Effect.flip(client.start(newOrg()))
          if (!(error instanceof StepTimedOutResponse)) return expect.fail(`expected StepTimedOut, got ${error._tag}`)
          expect({ step: error.step, timeout_ms: error.timeout_ms }).toEqual({ step: "handshake", timeout_ms: STEP_TIMEOUT_MS })
          // The handshake reached the gateway (it never answered): every step undone, its release included.
          expect(reportOf(error.rollback)).toEqual(expected.rollback(undoOrder))
          expect(yield* answers).toEqual([504])
        })
      ))

    it.effect("InvalidRequest for an id that is not a UUID, before anything is sent", () =>
      Effect.gen(function*() {
        const { answers, client } = yield* effectClient()
        const error = yield* Effect.flip(client.start("not-a-uuid"))
        expect(error).toBeInstanceOf(InvalidRequest)
        expect(error.message).toBe("organization_id \"not-a-uuid\" is not a UUID")
        expect((yield* Effect.flip(client.allocation("12345")))._tag).toBe("InvalidRequest")
        expect(yield* answers).toEqual([])

        const rejected = yield* withPromiseClient({}, (promised) => rejection(() => promised.stop("../../etc")))
        expect(rejected).toBeInstanceOf(InvalidRequest)
      }))
  })

  describe("retry", () => {
    it.effect("Effect API: a start answered 503 is tried again, and a gateway made active meanwhile serves it", () =>
      withPoolDrained((gateways) =>
        Effect.gen(function*() {
          const org = newOrg()
          const { answers, client } = yield* effectClient({ retry: patientRetry })
          yield* Effect.gen(function*() {
            const start = yield* Effect.fork(client.start(org))
            // The first try was refused: free a gateway before the next.
            const seen = yield* pollUntil(answers, (all) => all.length > 0, { withinMs: 10_000 })
            expect(seen[0]).toBe(503)
            yield* setState(gateways[0] ?? "", "active")
            const started = yield* Fiber.join(start)
            expect(started).toMatchObject({ organization_id: org, gateway_id: gateways[0], reused: false })
            const tries = yield* answers
            expect(tries.at(-1)).toBe(200)
            expect(tries.slice(0, -1).every((answer) => answer === 503)).toBe(true)
            expect(tries.length).toBeGreaterThanOrEqual(2)
          }).pipe(Effect.ensuring(stopQuietly(org)))
        })
      ))

    it.effect("Promise API: a start answered 503 is tried again (the service counts it), and a gateway made active meanwhile serves it", () =>
      withPoolDrained((gateways) =>
        withPromiseClient({ retry: patientRetry }, (client) => {
          const org = newOrg()
          return Effect.gen(function*() {
            const before = yield* noGatewayStarts
            const pending = client.start(org)
            yield* pollUntil(noGatewayStarts, (count) => count > before, { withinMs: 10_000 })
            yield* setState(gateways[0] ?? "", "active")
            const started = yield* Effect.promise(() => pending)
            expect(started).toMatchObject({ organization_id: org, gateway_id: gateways[0], reused: false })
            expect(yield* noGatewayStarts).toBeGreaterThan(before)
          }).pipe(Effect.ensuring(stopQuietly(org)))
        })
      ))

    it.effect("no answer (nothing listens): TransportError Unreachable after every try, after one with retry: false", () =>
      Effect.gen(function*() {
        const baseUrl = `http://127.0.0.1:${yield* freePort}`
        const retried = yield* effectClient({ baseUrl, retry: quickRetry })
        const error = yield* Effect.flip(retried.client.start(newOrg()))
        expect(error).toBeInstanceOf(TransportError)
        expect(error).toMatchObject({ _tag: "TransportError", reason: "Unreachable", message: expect.stringContaining("ECONNREFUSED") })
        expect(yield* retried.answers).toEqual(["no answer", "no answer", "no answer"])

        const once = yield* effectClient({ baseUrl, retry: false })
        expect((yield* Effect.flip(once.client.stop(newOrg())))._tag).toBe("TransportError")
        expect(yield* once.answers).toEqual(["no answer"])

        const rejected = yield* withPromiseClient({ baseUrl, retry: quickRetry }, (client) => rejection(() => client.status(newOrg())))
        expect(rejected).toMatchObject({ _tag: "TransportError", reason: "Unreachable" })
      }))
  })

  it.effect("the token: exported spans record the authorization header redacted, never its value; Client.start is a span with the org", () =>
    Effect.gen(function*() {
      const server = yield* ApiServer
      const { client } = yield* effectClient()
      const org = newOrg()
      // The client's spans through the real OpenTelemetry SDK, as a caller exporting traces has them
      // (read before the provider's scope ends: its shutdown empties the exporter).
      const exporter = new InMemorySpanExporter()
      const spans = yield* Effect.zipRight(client.start(org), client.stop(org)).pipe(
        Effect.map(() => exporter.getFinishedSpans()),
        Effect.provide(layerTracer(new SimpleSpanProcessor(exporter)).pipe(Layer.provide(ResourceLive))),
        Effect.ensuring(stopQuietly(org))
      )
      expect(spans.find((span) => span.name === "Client.start")?.attributes["organization_id"]).toBe(org)
      const requests = spans.filter((span) => "http.request.header.authorization" in span.attributes)
      expect(requests.map((span) => [span.name, span.attributes["http.request.header.authorization"]])).toEqual([
        ["http.client POST", "<redacted>"],
        ["http.client POST", "<redacted>"]
      ])
      expect(JSON.stringify(spans.map((span) => span.attributes))).not.toContain(server.token)
    }))
})
