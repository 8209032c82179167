// kill -9 of the real service (a child process) in the middle of a start, at each point of the
// pipeline, then a restart: within two reconcile periods the reconciler has undone the orphaned
// start (actor "reconciler" in the journal) and nothing is left in PowerDNS, routes/ or nginx,
// and the gateway is free again. The real systems are asked, not the service.
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Fiber } from "effect"
import { randomUUID } from "node:crypto"
import { undoOrder } from "../../src/domain/steps.ts"
import { type Db, dnsRecordOf, hasRoute, journalOf, type JournalRow, nginxRoutes } from "../support/invariants.ts"
import { expected, reportOf, rowsOf } from "../support/journal.ts"
import { awaitValue, NotYet, pollUntil } from "../support/poll.ts"
import { expectInvariants, type Served, ServedStack, ServedStackLive } from "../support/servedStack.ts"
import {
  localPortsOf,
  nginxPids,
  powerDnsPid,
  request,
  type ServiceProcess,
  signalPid,
  startGateway,
  startServer
} from "../support/server.ts"
import { resetGateways, setAllGateways } from "../support/stack.ts"

const RECONCILE_INTERVAL_MS = 1000
// Long step timeouts: the held step must still be held when the process is killed.
const SERVER_ENV = { RECONCILE_INTERVAL_MS: String(RECONCILE_INTERVAL_MS), STEP_TIMEOUT_MS: "30000", UNDO_TIMEOUT_MS: "5000" }

const CrashLive = ServedStackLive({ name: "kill", env: SERVER_ENV, gateways: 2 })

/** What the journal holds of a start killed in its handshake: every step before it, and its start. */
const FORWARD = expected.startedAt("handshake")
const RECONCILER_UNDOS = expected.undone(undoOrder)

/** Polls the journal (every `pollMs`) until the org's allocation has `step:event`; returns its id. */
const awaitJournal = (db: Db, org: string, step: string, event: string, options: { pollMs?: number; timeoutMs?: number } = {}) =>
  awaitValue(
    `the journal of org ${org} showing ${step} ${event}`,
    Effect.map(
      db.query<{ id: string }>(
        `select a.id from allocations a join allocation_steps s on s.allocation_id = a.id
          where a.organization_id = $1 and s.step = $2 and s.event = $3 limit 1`,
        [org, step, event]
      ),
      (rows) => rows[0]?.id
    ),
    { withinMs: options.timeoutMs ?? 20_000, spacingMs: options.pollMs ?? 20 }
  )

const allocationOf = (db: Db, org: string) =>
  Effect.flatMap(
    db.query<{ id: string; state: string; gateway_id: string; runner: string }>(
      "select id, state, gateway_id, runner from allocations where organization_id = $1",
      [org]
    ),
    (rows) => {
      expect(rows).toHaveLength(1)
      return Effect.succeed(rows[0]!)
    }
  )

const gatewayHolder = (db: Db, gatewayId: string) =>
  Effect.map(
    db.query<{ allocation_id: string | null }>("select allocation_id from gateways where id = $1", [gatewayId]),
    (rows) => rows[0]?.allocation_id ?? null
  )

/** What the real systems hold for the org right now. */
const leftBehind = (crash: Served, org: string, gatewayId: string): Effect.Effect<LeftBehind, unknown> =>
  Effect.gen(function*() {
    const [dns, nginx, holder] = yield* Effect.all([
      dnsRecordOf(crash.stack, org),
      nginxRoutes(crash.stack, org).pipe(Effect.orElseSucceed(() => "error")),
      gatewayHolder(crash.db, gatewayId)
    ], { concurrency: 3 })
    return { dns: dns.length > 0, route: (yield* hasRoute(crash.stack, org)), nginx, gatewayHeld: holder !== null }
  })

interface LeftBehind {
  readonly dns: boolean
  readonly route: boolean
  /** The gateway nginx reaches for the org's hostname, null for 404. */
  readonly nginx: string | null
  readonly gatewayHeld: boolean
}

const clean: LeftBehind = { dns: false, route: false, nginx: null, gatewayHeld: false }

/** `step:event` rows of one actor. */
const rowsBy = (rows: ReadonlyArray<{ step: string; event: string; actor: string }>, actor: string) =>
  rowsOf(rows.filter((row) => row.actor === actor))

/**
 * The common second half: the process is dead; `afterKill` runs (SIGCONT a daemon...), then the
 * test looks at what was left behind, restarts the service and waits (at most two reconcile
 * periods from the moment it answers /healthz) until nothing is left.
 */
const restartAndRecover = (
  crash: Served,
  org: string,
  start: Fiber.RuntimeFiber<unknown, unknown>,
  options: { readonly afterKill?: Effect.Effect<void>; readonly inspect?: (left: LeftBehind) => Effect.Effect<void, unknown> } = {}
) =>
  Effect.gen(function*() {
    // The caller of the killed start gets no answer (the connection dies), never a success.
    const answer = yield* Fiber.join(start).pipe(Effect.either)
    expect(answer._tag).toBe("Left")
    if (options.afterKill !== undefined) yield* options.afterKill
    const allocation = yield* allocationOf(crash.db, org)
    expect(allocation.state).toBe("starting")
    const journalAtKill = yield* journalOf(crash.db, allocation.id)
    const left = yield* leftBehind(crash, org, allocation.gateway_id)
    // Nothing cleans up while the service is down: the gateway is still held.
    expect(left.gatewayHeld).toBe(true)
    if (options.inspect !== undefined) yield* options.inspect(left)

    yield* crash.server.restart
    const restartedAt = Date.now()
    const now = yield* pollUntil(
      leftBehind(crash, org, allocation.gateway_id),
      (now) => JSON.stringify(now) === JSON.stringify(clean),
      { withinMs: 2 * RECONCILE_INTERVAL_MS, spacingMs: 25 }
    )
    const recoveryMs = Date.now() - restartedAt
    expect(now, `${crash.server.tail(30)}`).toEqual(clean)
    expect(recoveryMs).toBeLessThanOrEqual(2 * RECONCILE_INTERVAL_MS)

    const after = yield* allocationOf(crash.db, org)
    expect(after.state).toBe("rolled_back")
    // Each undo's journal row is written once the undo is done: the last one may trail the release.
    const journal = yield* pollUntil(
      journalOf(crash.db, allocation.id),
      (journal) => rowsBy(journal, "reconciler").length >= RECONCILER_UNDOS.length,
      { withinMs: 2000 }
    )
    // The dead process wrote nothing more; the reconciler undid every step, in reverse order.
    expect(rowsBy(journal, "request")).toEqual(rowsBy(journalAtKill, "request"))
    expect(rowsBy(journal, "reconciler")).toEqual(RECONCILER_UNDOS)
    expect(journal.filter((row) => row.actor !== "request" && row.actor !== "reconciler")).toEqual([])

    // The API shows the same journal (GET /allocations/{id}), the reconciler's undos as the rollback.
    const described = yield* request(crash.server, "GET", `/allocations/${allocation.id}`)
    expect(described.status).toBe(200)
    expect(described.json.state).toBe("rolled_back")
    expect(described.json.steps.map((entry: JournalRow) => `${entry.actor}:${entry.step}:${entry.event}`)).toEqual(
      journal.map((entry) => `${entry.actor}:${entry.step}:${entry.event}`)
    )
    expect(described.json.rollback.filter((outcome: { status: string }) => outcome.status !== "done")).toEqual([])

    const report = yield* expectInvariants({ stack: crash.stack, endpoint: crash.server, db: crash.db, orgs: [org] }, {
      timeoutMs: 2 * RECONCILE_INTERVAL_MS
    })
    expect(report.pool).toEqual({ total: crash.stack.gateways.length, free: crash.stack.gateways.length, allocated: 0 })
    console.log(
      `left behind by the kill: ${JSON.stringify(left)}; clean ${recoveryMs} ms after the restarted service answered`
    )
    return { allocationId: allocation.id, requestRows: rowsBy(journal, "request"), left, recoveryMs }
  })

/** Runs a scenario with the context, gateways back to normal afterwards whatever happened. */
const scenario = <A, E>(body: (crash: Served) => Effect.Effect<A, E>) =>
  Effect.flatMap(ServedStack, (crash) =>
    body(crash).pipe(
      Effect.ensuring(resetGateways(crash.stack)),
      // A failed test must not leave the next one without a server.
      Effect.ensuring(Effect.suspend(() => crash.server.running() ? Effect.void : crash.server.restart.pipe(Effect.ignore)))
    ))

const beginStart = (server: ServiceProcess, org: string) =>
  Effect.fork(startGateway(server, org, { timeoutMs: 60_000 }))

layer(CrashLive, { timeout: 120_000, excludeTestServices: true })("kill -9 mid-start, restart, reconciler undoes it", (it) => {
  it.effect("during handshake (the gateway's health hangs): route live, DNS written, all undone by the reconciler", () =>
    scenario((crash) =>
      Effect.gen(function*() {
        const org = randomUUID()
        yield* setAllGateways(crash.stack, { health: "hang" })
        const start = yield* beginStart(crash.server, org)
        yield* awaitJournal(crash.db, org, "handshake", "started")
        // Not a wait for something the test can see: the step is under way (its row is in), and the
        // kill lands half a second into the health wait that hangs, the scenario of this case.
        yield* Effect.sleep(Duration.millis(500))
        yield* crash.server.kill("SIGKILL")
        const outcome = yield* restartAndRecover(crash, org, start, {
          inspect: (left) =>
            Effect.sync(() => {
              expect(left.dns).toBe(true)
              expect(left.route).toBe(true)
              expect(left.nginx).toMatch(/^gateway-/)
            })
        })
        expect(outcome.requestRows).toEqual(FORWARD)
      })), { timeout: 90_000 })

  it.effect("right after nginx-reload completed (the handshake hangs): the live route is removed", () =>
    scenario((crash) =>
      Effect.gen(function*() {
        const org = randomUUID()
        yield* setAllGateways(crash.stack, { handshake: "hang" })
        const start = yield* beginStart(crash.server, org)
        yield* awaitJournal(crash.db, org, "nginx-reload", "completed", { pollMs: 2 })
        yield* crash.server.kill("SIGKILL")
        const outcome = yield* restartAndRecover(crash, org, start, {
          inspect: (left) =>
            Effect.sync(() => {
              expect(left.dns).toBe(true)
              expect(left.route).toBe(true)
              expect(left.nginx).toMatch(/^gateway-/)
            })
        })
        // Killed right at nginx-reload's completion: the handshake had at most started.
        expect([FORWARD.slice(0, 7), FORWARD]).toContainEqual(outcome.requestRows)
      })), { timeout: 90_000 })

  it.effect("during nginx-config (nginx frozen, master and workers: the route write hangs), nginx resumed after the kill", () =>
    scenario((crash) =>
      Effect.gen(function*() {
        const org = randomUUID()
        const pids = nginxPids(crash.stack)
        // Frozen nginx: the route API accepts the connection (the kernel's backlog) and never answers.
        yield* Effect.forEach(pids, (pid) => signalPid(pid, "SIGSTOP"))
        const start = yield* Effect.gen(function*() {
          const start = yield* beginStart(crash.server, org)
          yield* awaitJournal(crash.db, org, "nginx-config", "started")
          // Not a wait for something the test can see: the step is under way (its row is in); the
          // kill lands 700 ms into the route write that hangs at the frozen nginx (what reached it
          // is not observable from here), the scenario of this case.
          yield* Effect.sleep(Duration.millis(700))
          yield* crash.server.kill("SIGKILL")
          return start
        }).pipe(Effect.ensuring(Effect.forEach(pids, (pid) => signalPid(pid, "SIGCONT"))))
        // Resumed, nginx may still act on the write it had been sent, for a start nobody runs any
        // more: only the reconciler can take it back, and `restartAndRecover` checks that it did.
        const outcome = yield* restartAndRecover(crash, org, start)
        expect(outcome.requestRows).toEqual(FORWARD.slice(0, 4))
      })), { timeout: 90_000 })

  it.effect("during dns (pdns_server stopped: the PATCH hangs), PowerDNS resumed after the kill", () =>
    scenario((crash) =>
      Effect.gen(function*() {
        const org = randomUUID()
        const pdns = powerDnsPid(crash.stack)
        yield* signalPid(pdns, "SIGSTOP")
        const start = yield* Effect.gen(function*() {
          const start = yield* beginStart(crash.server, org)
          yield* awaitJournal(crash.db, org, "dns", "started")
          // Not a wait for something the test can see: the step is under way (its row is in); the
          // kill lands half a second into the PATCH that hangs at the frozen PowerDNS, the scenario
          // of this case.
          yield* Effect.sleep(Duration.millis(500))
          yield* crash.server.kill("SIGKILL")
          return start
        }).pipe(Effect.ensuring(signalPid(pdns, "SIGCONT")))
        const outcome = yield* restartAndRecover(crash, org, start, {
          inspect: (left) =>
            Effect.sync(() => {
              // The hung PATCH may or may not land once PowerDNS resumes; either way it must go.
              expect(left.route).toBe(false)
              expect(left.nginx).toBeNull()
            })
        })
        expect(outcome.requestRows).toEqual(FORWARD.slice(0, 2))
      })), { timeout: 90_000 })

  it.effect("right after dns completed (service SIGSTOPped, then SIGKILLed): whatever had started is undone", () =>
    scenario((crash) =>
      Effect.gen(function*() {
        const org = randomUUID()
        const start = yield* beginStart(crash.server, org)
        yield* awaitJournal(crash.db, org, "dns", "completed", { pollMs: 2 })
        yield* crash.server.signal("SIGSTOP")
        yield* crash.server.kill("SIGKILL")
        const outcome = yield* restartAndRecover(crash, org, start, {
          inspect: (left) =>
            Effect.gen(function*() {
              const allocation = yield* allocationOf(crash.db, org)
              const rows = rowsBy(yield* journalOf(crash.db, allocation.id), "request")
              // The journal is a prefix of the pipeline that reaches at least dns:completed.
              expect(FORWARD.slice(0, rows.length)).toEqual(rows)
              expect(rows.length).toBeGreaterThanOrEqual(3)
              expect(left.dns).toBe(true)
              // A completed nginx-config step left its file; no nginx-config start, no file.
              if (rows.includes("nginx-config:completed")) expect(left.route).toBe(true)
              if (!rows.includes("nginx-config:started")) expect(left.route).toBe(false)
              // No route can serve before the nginx-config step started (lua: its write is live
              // as soon as it lands, before the step's closing row; reload: only after a reload).
              if (!rows.includes("nginx-config:started")) expect(left.nginx).toBeNull()
            })
        })
        console.log(`killed right after dns completed; the journal had: ${outcome.requestRows.join(" ")}`)
      })), { timeout: 90_000 })

  // A replica that stalls in the middle of its reconcile pass (SIGSTOP here; a VM paused, a
  // process stuck) keeps its Postgres session, and with it whatever lock its pass holds. The crash
  // of another replica must still be recovered within two periods. The test does not know the
  // lock's name: it freezes the peer while it holds any advisory lock besides its runner lease.
  it.effect("another replica frozen in the middle of its reconcile pass: the crash is still recovered", () =>
    scenario((crash) =>
      Effect.gen(function*() {
        const peer = yield* startServer(crash.stack, { name: "kill-peer", env: SERVER_ENV })
        const caught = yield* freezeHoldingPassLock(crash.db, peer)
        console.log(`peer frozen while holding a reconcile lock (${caught.attempts} freeze(s), ${caught.polls} polls)`)
        yield* Effect.gen(function*() {
          const org = randomUUID()
          yield* setAllGateways(crash.stack, { health: "hang" })
          const start = yield* beginStart(crash.server, org)
          yield* awaitJournal(crash.db, org, "handshake", "started")
          yield* crash.server.kill("SIGKILL")
          // The frozen peer still holds its lock: it is not dead, only silent.
          expect((yield* passLockHolders(crash.db)).map((holder) => holder.client_port)).toEqual([caught.clientPort])
          yield* restartAndRecover(crash, org, start)
        }).pipe(Effect.ensuring(peer.signal("SIGCONT")))
      }).pipe(Effect.scoped)), { timeout: 120_000 })

  it.effect("during the handshake POST (the gateway took the allocation, its answer hangs): the reconciler releases the gateway", () =>
    scenario((crash) =>
      Effect.gen(function*() {
        const org = randomUUID()
        /** Polls `check` every 25 ms until it gives a value; dies after `timeoutMs`, with the server's log. */
        const poll = <A, E>(what: string, check: Effect.Effect<A | undefined, E>, timeoutMs: number) =>
          awaitValue(what, check, { withinMs: timeoutMs, spacingMs: 25 }).pipe(
            Effect.catchIf((error) => error instanceof NotYet, (notYet) => Effect.dieMessage(`${notYet.message}\n${crash.server.tail(30)}`))
          )
        yield* setAllGateways(crash.stack, { handshake: "hang" })
        const start = yield* beginStart(crash.server, org)
        yield* awaitJournal(crash.db, org, "handshake", "started")
        // The handshake POST reached a gateway: it took the allocation, and its answer never comes.
        const holding = yield* poll(
          "a gateway holding the org's allocation",
          Effect.map(
            Effect.forEach(crash.stack.gateways, (gateway) => Effect.map(gateway.held, (held) => ({ gateway, held }))),
            (gateways) => gateways.find(({ held }) => held?.organization_id === org)
          ),
          10_000
        )
        const allocation = yield* allocationOf(crash.db, org)
        expect(holding.held).toMatchObject({ allocation_id: allocation.id, gateway_id: allocation.gateway_id })
        yield* crash.server.kill("SIGKILL")
        expect((yield* Fiber.join(start).pipe(Effect.either))._tag).toBe("Left")
        // Nothing released it while the service was down.
        expect((yield* allocationOf(crash.db, org)).state).toBe("starting")
        expect((yield* holding.gateway.held)?.allocation_id).toBe(allocation.id)
        expect(yield* holding.gateway.releases).toEqual([])

        yield* crash.server.restart
        const restartedAt = Date.now()
        yield* poll(
          "the gateway released by the reconciler",
          Effect.map(holding.gateway.held, (held) => (held === null ? true : undefined)),
          2 * RECONCILE_INTERVAL_MS + 2000
        )
        const releasedMs = Date.now() - restartedAt
        expect(yield* holding.gateway.releases).toEqual([
          { organization_id: org, gateway_id: allocation.gateway_id, allocation_id: allocation.id }
        ])

        // Every undo by the reconciler, the release right after routing is gone.
        const journal = yield* poll(
          "the reconciler's undos in the journal",
          Effect.map(journalOf(crash.db, allocation.id), (rows) =>
            rowsBy(rows, "reconciler").length >= RECONCILER_UNDOS.length ? rows : undefined),
          5000
        )
        expect(rowsBy(journal, "request")).toEqual(FORWARD)
        expect(rowsBy(journal, "reconciler")).toEqual(RECONCILER_UNDOS)
        expect((yield* allocationOf(crash.db, org)).state).toBe("rolled_back")
        const described = yield* request(crash.server, "GET", `/allocations/${allocation.id}`)
        expect(described.status).toBe(200)
        expect(reportOf(described.json.rollback)).toEqual(expected.rollback(undoOrder))

        // Nothing left, and the gateway is not held back: its release was confirmed.
        expect(yield* leftBehind(crash, org, allocation.gateway_id)).toEqual(clean)
        const unreleased = yield* crash.db.query<{ unreleased_allocation_id: string | null }>(
          "select unreleased_allocation_id from gateways where id = $1",
          [allocation.gateway_id]
        )
        expect(unreleased).toEqual([{ unreleased_allocation_id: null }])
        console.log(`killed mid-handshake; the reconciler released the gateway ${releasedMs} ms after the restarted service answered`)
      })), { timeout: 90_000 })
})

/**
 * Sessions holding an advisory lock that is not a runner lease (migration 0002's
 * `gateway_allocator_runner_key`): the job locks a reconcile pass takes, whatever their names.
 */
const PASS_LOCK_HOLDERS = `select a.client_port from pg_locks l join pg_stat_activity a on a.pid = l.pid
   where l.locktype = 'advisory' and l.granted and a.application_name = 'gateway-allocator'
     and not (l.objsubid = 1 and ((l.classid::bigint << 32) | l.objid::bigint) in
              (select gateway_allocator_runner_key(r.id) from runners r))`

const passLockHolders = (db: Db) => db.query<{ client_port: number | null }>(PASS_LOCK_HOLDERS)


/**
 * Waits for `server` to be in the middle of a reconcile pass (it holds a pass lock) and freezes it
 * there with SIGSTOP. A pass takes milliseconds: the locks are polled back to back, the holder's
 * client port checked against the server's sockets, the server frozen, and the lock looked at
 * again (the pass may have ended meanwhile: then it is thawed and the wait goes on).
 */
const freezeHoldingPassLock = (db: Db, server: ServiceProcess) =>
  Effect.promise(async () => {
    const deadline = Date.now() + 60_000
    let attempts = 0
    let polls = 0
    let otherHolder = 0
    while (Date.now() < deadline) {
      polls += 1
      const holders = await db.queryPromise<{ client_port: number | null }>(PASS_LOCK_HOLDERS)
      if (holders.length === 0) continue
      const clientPort = holders[0]!.client_port
      if (clientPort === null || !localPortsOf(server.pid).has(clientPort)) {
        otherHolder += 1
        continue
      }
      process.kill(server.pid, "SIGSTOP")
      attempts += 1
      const still = await db.queryPromise<{ client_port: number | null }>(PASS_LOCK_HOLDERS)
      if (still.some((holder) => holder.client_port === clientPort)) return { attempts, polls, clientPort }
      process.kill(server.pid, "SIGCONT")
    }
    throw new Error(
      `could not catch ${server.name} holding a reconcile lock within 60 s ` +
        `(${polls} polls, ${attempts} freezes too late, ${otherHolder} times another session held one)`
    )
  })
