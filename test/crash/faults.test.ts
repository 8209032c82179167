// Two ways a start can be left half done without a crash, against the real service (a child
// process): the client goes away mid-start (the start must finish anyway, once), and an undo fails
// during a rollback (the caller still gets the original error; the reconciler removes what the
// failed undo left once the system is back).
import { expect, layer } from "@effect/vitest"
import { Context, Duration, Effect, Fiber, Layer } from "effect"
import { randomUUID } from "node:crypto"
import type { LocalStack } from "../../src/dev/stack.ts"
import {
  awaitInvariants,
  type Db,
  describeReport,
  dnsRecordOf,
  journalOf,
  nginxRoutes,
  hasRoute,
  openDb
} from "../support/invariants.ts"
import {
  gatewayStatus,
  nginxPids,
  registerGateways,
  type ServiceProcess,
  startGateway,
  signalPid,
  startServer,
  stopGateway
} from "../support/server.ts"
import { Stack, StackLive } from "../support/stack.ts"

const RECONCILE_INTERVAL_MS = 1000
const STEP_TIMEOUT_MS = 3000

interface Faults {
  readonly stack: LocalStack
  readonly server: ServiceProcess
  readonly db: Db
}
class FaultsContext extends Context.Tag("test/FaultsContext")<FaultsContext, Faults>() {}

const FaultsLive = Layer.scoped(
  FaultsContext,
  Effect.gen(function*() {
    const stack = yield* Stack
    const server = yield* startServer(stack, {
      name: "faults",
      env: {
        RECONCILE_INTERVAL_MS: String(RECONCILE_INTERVAL_MS),
        STEP_TIMEOUT_MS: String(STEP_TIMEOUT_MS),
        UNDO_TIMEOUT_MS: "2000"
      }
    })
    yield* registerGateways(server, stack)
    const db = yield* openDb(stack.env["DATABASE_URL"]!)
    return { stack, server, db }
  })
).pipe(Layer.provideMerge(StackLive({ gateways: 2 })))

const withFaults = <A, E>(body: (faults: Faults) => Effect.Effect<A, E>) =>
  Effect.flatMap(FaultsContext, (faults) =>
    body(faults).pipe(
      Effect.ensuring(Effect.forEach(faults.stack.gateways, (gateway) => gateway.reset, { discard: true }))
    ))

const expectInvariants = (faults: Faults, orgs: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const report = yield* awaitInvariants({ stack: faults.stack, endpoint: faults.server, db: faults.db, orgs }, {
      timeoutMs: 2 * RECONCILE_INTERVAL_MS
    })
    expect(report.violations, describeReport(report)).toEqual([])
    return report
  })

layer(FaultsLive, { timeout: 120_000, excludeTestServices: true })("faults without a crash", (it) => {
  it.effect("a client that disconnects after 300 ms of a 1.5 s handshake: the start completes, once, and a retry reuses it", () =>
    withFaults((faults) =>
      Effect.gen(function*() {
        const org = randomUUID()
        yield* Effect.forEach(faults.stack.gateways, (gateway) => gateway.setBehaviour({ handshakeDelayMs: 1500 }), {
          discard: true
        })
        const controller = new AbortController()
        const sentAt = Date.now()
        const timer = setTimeout(() => controller.abort(), 300)
        const answer = yield* startGateway(faults.server, org, { signal: controller.signal }).pipe(Effect.either)
        clearTimeout(timer)
        expect(answer._tag).toBe("Left")
        expect(Date.now() - sentAt).toBeLessThan(1500)

        // The allocation runs on without the client: starting now, active once the handshake answers.
        let state = "absent"
        const seen = new Set<string>()
        while (state !== "active" && Date.now() - sentAt < 15_000) {
          const status = yield* gatewayStatus(faults.server, org)
          state = status.status === 200 ? status.json.state : `HTTP ${status.status}`
          seen.add(state)
          if (state !== "active") yield* Effect.sleep(Duration.millis(50))
        }
        expect(state).toBe("active")
        expect([...seen].filter((s) => s !== "starting" && s !== "active")).toEqual([])
        const activeAfterMs = Date.now() - sentAt
        expect(activeAfterMs).toBeGreaterThanOrEqual(1500)
        yield* expectInvariants(faults, [org])

        // Never rolled back, never run twice: one journal, no undo, one handshake received.
        const rows = yield* faults.db.query<{ id: string }>("select id from allocations where organization_id = $1", [org])
        expect(rows).toHaveLength(1)
        const journal = yield* journalOf(faults.db, rows[0]!.id)
        expect(journal.map((row) => `${row.step}:${row.event}`)).toEqual([
          "allocate:completed",
          "dns:started",
          "dns:completed",
          "nginx-config:started",
          "nginx-config:completed",
          "nginx-reload:started",
          "nginx-reload:completed",
          "handshake:started",
          "handshake:completed"
        ])
        const handshakes = yield* Effect.forEach(faults.stack.gateways, (gateway) => gateway.handshakes)
        expect(handshakes.flat().filter((body) => (body as { organization_id?: string }).organization_id === org))
          .toHaveLength(1)

        const retry = yield* startGateway(faults.server, org)
        expect(retry.status).toBe(200)
        expect(retry.json).toMatchObject({ organization_id: org, allocation_id: rows[0]!.id, reused: true })
        console.log(`client gone after 300 ms; the allocation was active ${activeAfterMs} ms after the request`)

        expect((yield* stopGateway(faults.server, org)).status).toBe(200)
        yield* expectInvariants(faults, [org])
      })), { timeout: 60_000 })

  it.effect("PowerDNS stopped while a start rolls back: the caller gets the handshake timeout, the reconciler removes the orphan record later", () =>
    withFaults((faults) =>
      Effect.gen(function*() {
        const { db, server, stack } = faults
        const org = randomUUID()
        yield* Effect.forEach(stack.gateways, (gateway) => gateway.setBehaviour({ handshake: "hang" }), { discard: true })
        const start = yield* Effect.fork(startGateway(server, org))

        const answer = yield* Effect.gen(function*() {
          // The route is live through nginx: dns, nginx-config and nginx-reload completed, the
          // handshake waits on the gateway. Now PowerDNS goes away.
          let routed: string | null = null
          while (routed === null) {
            routed = yield* nginxRoutes(stack, org).pipe(Effect.orElseSucceed(() => null))
            if (routed === null) yield* Effect.sleep(Duration.millis(20))
          }
          expect((yield* dnsRecordOf(stack, org)).length).toBe(1)
          yield* stack.powerDns.stop
          const answer = yield* Fiber.join(start)

          // While PowerDNS is still down: routing and the gateway are back, the record is not.
          expect(answer.status, answer.text).toBe(504)
          expect(answer.json).toMatchObject({ _tag: "StepTimedOut", step: "handshake", timeout_ms: STEP_TIMEOUT_MS })
          expect(answer.json.rollback.map((o: { step: string; status: string }) => `${o.step}:${o.status}`)).toEqual([
            "nginx-reload:done",
            "nginx-config:done",
            "handshake:done",
            "dns:failed",
            "allocate:done"
          ])
          expect((yield* hasRoute(stack, org))).toBe(false)
          expect(yield* nginxRoutes(stack, org)).toBeNull()
          expect((yield* gatewayStatus(server, org)).status).toBe(404)
          const pool = yield* db.query<{ free: number }>(
            "select count(*) filter (where allocation_id is null)::int as free from gateways"
          )
          expect(pool[0]!.free).toBe(stack.gateways.length)
          return answer
        }).pipe(Effect.ensuring(stack.powerDns.start.pipe(Effect.orDie)))

        // PowerDNS is back with the record the failed undo left; the reconciler deletes it.
        const backAt = Date.now()
        let record = yield* dnsRecordOf(stack, org)
        while (record.length > 0 && Date.now() - backAt < 10_000) {
          yield* Effect.sleep(Duration.millis(50))
          record = yield* dnsRecordOf(stack, org)
        }
        const removedAfterMs = Date.now() - backAt
        expect(record).toEqual([])
        expect(removedAfterMs).toBeLessThanOrEqual(2 * RECONCILE_INTERVAL_MS)
        console.log(`orphan record removed ${removedAfterMs} ms after PowerDNS was back`)

        const journal = yield* journalOf(db, answer.json.allocation_id)
        expect(journal.filter((row) => row.step === "dns" && row.event.startsWith("undo")).map((row) => row.event))
          .toEqual(["undo_started", "undo_failed"])
        const [allocation] = yield* db.query<{ state: string }>("select state from allocations where id = $1", [
          answer.json.allocation_id
        ])
        expect(allocation?.state).toBe("rolled_back")
        yield* expectInvariants(faults, [org])
      })), { timeout: 60_000 })

  it.effect("a stop that failed (nginx frozen) is finished by the reconciler even while clients keep starting the org", () =>
    withFaults((faults) =>
      Effect.gen(function*() {
        const { db, server, stack } = faults
        const org = randomUUID()
        const first = yield* startGateway(server, org)
        expect(first.status, first.text).toBe(200)
        const allocationId: string = first.json.allocation_id

        // nginx frozen whole (master and workers): the route removal times out, so the stop
        // cannot prove the route gone and the allocation stays `stopping` ("a retry, or the
        // reconciler, finishes it").
        const pids = nginxPids(stack)
        const stop = yield* Effect.forEach(pids, (pid) => signalPid(pid, "SIGSTOP")).pipe(
          Effect.zipRight(stopGateway(server, org)),
          Effect.ensuring(Effect.forEach(pids, (pid) => signalPid(pid, "SIGCONT")))
        )
        expect(stop.status, stop.text).toBe(502)
        expect(stop.json).toMatchObject({ _tag: "StopFailed", step: "nginx-reload" })
        expect((yield* gatewayStatus(server, org)).json?.state).toBe("stopping")

        // nginx runs again. A client keeps asking for the org meanwhile (its start waits for
        // the stop to settle, up to the step timeout, and it asks again).
        const fixedAt = Date.now()
        const answers: Array<string> = []
        const client = yield* Effect.fork(
          Effect.gen(function*() {
            while (true) {
              const answer = yield* startGateway(server, org).pipe(Effect.either)
              answers.push(answer._tag === "Left" ? "no answer" : `${answer.right.status} ${answer.right.json?.step ?? ""}`)
              if (answer._tag === "Right" && answer.right.status === 200) return
            }
          })
        )
        let state = "stopping"
        while (state !== "released" && Date.now() - fixedAt < 8000) {
          yield* Effect.sleep(Duration.millis(50))
          const [row] = yield* db.query<{ state: string }>("select state from allocations where id = $1", [allocationId])
          state = row?.state ?? "missing"
        }
        const finishedAfterMs = Date.now() - fixedAt
        yield* Fiber.interrupt(client)
        console.log(`stopping allocation ${state} ${finishedAfterMs} ms after nginx resumed; the client's starts: ${answers.join(", ")}`)
        // The reconciler's next pass finishes it: a start that only waits for the org to settle
        // is not working on that allocation.
        expect(state).toBe("released")
        expect(finishedAfterMs).toBeLessThanOrEqual(2 * RECONCILE_INTERVAL_MS)

        // The last undo's journal row is written once the gateway is released: it may trail a little.
        const expectedUndos = ["nginx-reload", "nginx-config", "handshake", "dns", "allocate"].flatMap((step) => [
          `${step}:undo_started`,
          `${step}:undone`
        ])
        const reconcilerRows = () =>
          Effect.map(journalOf(db, allocationId), (journal) =>
            journal.filter((row) => row.actor === "reconciler").map((row) => `${row.step}:${row.event}`))
        let undone = yield* reconcilerRows()
        const journaledBy = Date.now() + 2000
        while (undone.length < expectedUndos.length && Date.now() < journaledBy) {
          yield* Effect.sleep(Duration.millis(20))
          undone = yield* reconcilerRows()
        }
        expect(undone).toEqual(expectedUndos)
        // Whatever the client got meanwhile, the org is consistent once it is done.
        const settled = yield* startGateway(server, org)
        expect(settled.status, settled.text).toBe(200)
        expect((yield* stopGateway(server, org)).status).toBe(200)
        yield* expectInvariants(faults, [org])
      })), { timeout: 60_000 })
})
