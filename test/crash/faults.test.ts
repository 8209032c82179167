// Two ways a start can be left half done without a crash, against the real service (a child
// process): the client goes away mid-start (the start must finish anyway, once), and an undo fails
// during a rollback (the caller still gets the original error; the reconciler removes what the
// failed undo left once the system is back).
import { expect, layer } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { randomUUID } from "node:crypto"
import { undoOrder } from "../../src/domain/steps.ts"
import { dnsRecordOf, hasRoute, journalOf, nginxRoutes } from "../support/invariants.ts"
import { expected, reportOf, rowsOf } from "../support/journal.ts"
import { awaitValue, pollUntil } from "../support/poll.ts"
import { expectInvariants, type Served, ServedStackLive, withServedStack } from "../support/servedStack.ts"
import { gatewayStatus, nginxPids, signalPid, startGateway, stopGateway } from "../support/server.ts"
import { handshakesFor, setAllGateways } from "../support/stack.ts"

const RECONCILE_INTERVAL_MS = 1000
const STEP_TIMEOUT_MS = 3000

const FaultsLive = ServedStackLive({
  name: "faults",
  env: {
    RECONCILE_INTERVAL_MS: String(RECONCILE_INTERVAL_MS),
    STEP_TIMEOUT_MS: String(STEP_TIMEOUT_MS),
    UNDO_TIMEOUT_MS: "2000"
  },
  gateways: 2
})

/** Every invariant holds for `orgs` within two reconcile periods. */
const expectSettled = ({ db, server, stack }: Served, orgs: ReadonlyArray<string>) =>
  expectInvariants({ stack, endpoint: server, db, orgs }, { timeoutMs: 2 * RECONCILE_INTERVAL_MS })

layer(FaultsLive, { timeout: 120_000, excludeTestServices: true })("faults without a crash", (it) => {
  it.effect("a client that disconnects after 300 ms of a 1.5 s handshake: the start completes, once, and a retry reuses it", () =>
    withServedStack((faults) =>
      Effect.gen(function*() {
        const org = randomUUID()
        yield* setAllGateways(faults.stack, { handshakeDelayMs: 1500 })
        const sentAt = Date.now()
        // The client goes away 300 ms into the start: the scenario, not a wait for something.
        const answer = yield* startGateway(faults.server, org, { signal: AbortSignal.timeout(300) }).pipe(Effect.either)
        expect(answer._tag).toBe("Left")
        expect(Date.now() - sentAt).toBeLessThan(1500)

        // The allocation runs on without the client: starting now, active once the handshake answers.
        const seen = new Set<string>()
        const state = yield* pollUntil(
          gatewayStatus(faults.server, org).pipe(
            Effect.map((status) => (status.status === 200 ? String(status.json.state) : `HTTP ${status.status}`)),
            Effect.tap((state) => Effect.sync(() => seen.add(state)))
          ),
          (state) => state === "active",
          { withinMs: 15_000, spacingMs: 50 }
        )
        expect(state).toBe("active")
        expect([...seen].filter((s) => s !== "starting" && s !== "active")).toEqual([])
        const activeAfterMs = Date.now() - sentAt
        expect(activeAfterMs).toBeGreaterThanOrEqual(1500)
        yield* expectSettled(faults, [org])

        // Never rolled back, never run twice: one journal, no undo, one handshake received.
        const rows = yield* faults.db.query<{ id: string }>("select id from allocations where organization_id = $1", [org])
        expect(rows).toHaveLength(1)
        expect(rowsOf(yield* journalOf(faults.db, rows[0]!.id))).toEqual(expected.forward())
        expect(yield* handshakesFor(faults.stack, org)).toHaveLength(1)

        const retry = yield* startGateway(faults.server, org)
        expect(retry.status).toBe(200)
        expect(retry.json).toMatchObject({ organization_id: org, allocation_id: rows[0]!.id, reused: true })
        console.log(`client gone after 300 ms; the allocation was active ${activeAfterMs} ms after the request`)

        expect((yield* stopGateway(faults.server, org)).status).toBe(200)
        yield* expectSettled(faults, [org])
      })), { timeout: 60_000 })

  it.effect("PowerDNS stopped while a start rolls back: the caller gets the handshake timeout, the reconciler removes the orphan record later", () =>
    withServedStack((faults) =>
      Effect.gen(function*() {
        const { db, server, stack } = faults
        const org = randomUUID()
        yield* setAllGateways(stack, { handshake: "hang" })
        const start = yield* Effect.fork(startGateway(server, org))

        const answer = yield* Effect.gen(function*() {
          // The route is live through nginx: dns, nginx-config and nginx-reload completed, the
          // handshake waits on the gateway. Now PowerDNS goes away.
          yield* awaitValue(
            "nginx routing the org",
            nginxRoutes(stack, org).pipe(Effect.map((routed) => routed ?? undefined), Effect.orElseSucceed(() => undefined)),
            { withinMs: 15_000 }
          )
          expect((yield* dnsRecordOf(stack, org)).length).toBe(1)
          yield* stack.powerDns.stop
          const answer = yield* Fiber.join(start)

          // While PowerDNS is still down: routing and the gateway are back, the record is not.
          expect(answer.status, answer.text).toBe(504)
          expect(answer.json).toMatchObject({ _tag: "StepTimedOut", step: "handshake", timeout_ms: STEP_TIMEOUT_MS })
          expect(reportOf(answer.json.rollback)).toEqual(expected.rollback(undoOrder, { dns: "failed" }))
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
        const record = yield* pollUntil(dnsRecordOf(stack, org), (record) => record.length === 0, { withinMs: 10_000, spacingMs: 50 })
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
        yield* expectSettled(faults, [org])
      })), { timeout: 60_000 })

  it.effect("a stop that failed (nginx frozen) is finished by the reconciler even while clients keep starting the org", () =>
    withServedStack((faults) =>
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
        const state = yield* pollUntil(
          db.query<{ state: string }>("select state from allocations where id = $1", [allocationId]).pipe(
            Effect.map(([row]) => row?.state ?? "missing")
          ),
          (state) => state === "released",
          { withinMs: 8000, spacingMs: 50 }
        )
        const finishedAfterMs = Date.now() - fixedAt
        yield* Fiber.interrupt(client)
        console.log(`stopping allocation ${state} ${finishedAfterMs} ms after nginx resumed; the client's starts: ${answers.join(", ")}`)
        // The reconciler's next pass finishes it: a start that only waits for the org to settle
        // is not working on that allocation.
        expect(state).toBe("released")
        expect(finishedAfterMs).toBeLessThanOrEqual(2 * RECONCILE_INTERVAL_MS)

        // The last undo's journal row is written once the gateway is released: it may trail a little.
        const expectedUndos = expected.undone(undoOrder)
        const undone = yield* pollUntil(
          Effect.map(journalOf(db, allocationId), (journal) => rowsOf(journal.filter((row) => row.actor === "reconciler"))),
          (undone) => undone.length >= expectedUndos.length,
          { withinMs: 2000 }
        )
        expect(undone).toEqual(expectedUndos)
        // Whatever the client got meanwhile, the org is consistent once it is done.
        const settled = yield* startGateway(server, org)
        expect(settled.status, settled.text).toBe(200)
        expect((yield* stopGateway(server, org)).status).toBe(200)
        yield* expectSettled(faults, [org])
      })), { timeout: 60_000 })
})
