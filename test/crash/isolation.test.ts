// Tenant isolation against the real stack: the service as child processes (replicas) over one
// Postgres, one nginx and one PowerDNS. Each case is one of the ways a hostname could reach
// another org's gateway, or a hole beside them, reproduced as an operator would meet it.
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Fiber, Schedule } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { readFileSync, writeFileSync } from "node:fs"
import path from "node:path"
import type { LocalStack } from "../../src/dev/stack.ts"
import { undoOrder } from "../../src/domain/steps.ts"
import { EDGE_FILE, PROBE_PATH, PROBE_SECRET_HEADER } from "../../src/nginx/config.ts"
import { allocationsOf, edgeFileOf, edgeRouteOf, hasRoute, journalOf, nginxRoutes, openDb } from "../support/invariants.ts"
import { expected, reportOf } from "../support/journal.ts"
import { pollUntil } from "../support/poll.ts"
import { hostnameOf, rawGet } from "../support/rawHttp.ts"
import {
  gatewayStatus,
  powerDnsPid,
  registerGateways,
  request,
  type ServiceProcess,
  startGateway,
  signalPid,
  startServer,
  stopGateway
} from "../support/server.ts"
import { Stack, StackLive, temporaryDirectory } from "../support/stack.ts"

const gatewayNameOf = (stack: LocalStack, upstream: string) =>
  stack.gateways.find((gateway) => gateway.upstream === upstream)?.name

/** Which sample gateway a request for the org's hostname reaches through nginx (null: nginx's 404). */
const reaches = (stack: LocalStack, org: string) => nginxRoutes(stack, org).pipe(Effect.orElseSucceed(() => "error"))

/** GET of the route probe with the org's Host, with the given secret header (or none); status 0 when nothing answered. */
const probeWith = (stack: LocalStack, org: string, secret: string | undefined) =>
  rawGet({
    port: stack.nginx.listenPort,
    path: PROBE_PATH,
    headers: { host: hostnameOf(stack, org), ...(secret === undefined ? {} : { [PROBE_SECRET_HEADER]: secret }) }
  }).pipe(Effect.orElseSucceed(() => ({ status: 0, body: "no answer" })))

const logOf = (server: ServiceProcess) => readFileSync(server.logFile, "utf8")

layer(StackLive({ gateways: 3 }), { timeout: 180_000, excludeTestServices: true })("tenant isolation: two replicas", (it) => {
  it.effect("start on one replica, stop on the other, start again at once (x8): each start is served by its own gateway, and no one else tears it down", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const [a, b] = yield* Effect.all([
        startServer(stack, { name: "iso-a" }),
        startServer(stack, { name: "iso-b" })
      ], { concurrency: 2 })
      yield* registerGateways(a, stack)
      const org = randomUUID()
      const first = yield* startGateway(a, org)
      expect(first.status, first.text).toBe(200)
      for (let round = 0; round < 8; round++) {
        const [starter, stopper] = round % 2 === 0 ? [a, b] : [b, a]
        const stopped = yield* stopGateway(stopper, org)
        expect(stopped.status, stopped.text).toBe(200)
        const started = yield* startGateway(starter, org)
        expect(started.status, `round ${round}: ${started.text}`).toBe(200)
        const status = yield* gatewayStatus(starter, org)
        expect(status.json.allocation_id).toBe(started.json.allocation_id)
        // Served by its own gateway, and still so a moment later (no late undo of the stop).
        const gateway = gatewayNameOf(stack, status.json.upstream)
        expect(yield* reaches(stack, org), `round ${round}`).toBe(gateway)
        // Not a wait for something: the window in which a late undo of the stop must not change it.
        yield* Effect.sleep(Duration.millis(300))
        expect(yield* reaches(stack, org), `round ${round}, 300 ms later`).toBe(gateway)
        expect((yield* edgeRouteOf(stack, org))).toContain(started.json.allocation_id)
      }
      for (const server of [a, b]) expect(logOf(server)).not.toMatch(/recovering an interrupted stop/)
      expect((yield* stopGateway(b, org)).status).toBe(200)
    }).pipe(Effect.scoped))

  it.effect("replicas sharing one nginx reload it one at a time: concurrent starts and stops on both never make nginx refuse its configuration", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const [a, b] = yield* Effect.all([
        startServer(stack, { name: "reload-a" }),
        startServer(stack, { name: "reload-b" })
      ], { concurrency: 2 })
      yield* registerGateways(a, stack)
      for (let round = 0; round < 4; round++) {
        const orgs = [randomUUID(), randomUUID(), randomUUID()]
        const starts = yield* Effect.forEach(orgs, (org, i) => startGateway(i % 2 === 0 ? a : b, org), { concurrency: "unbounded" })
        expect(starts.map((s) => s.status), starts.map((s) => s.text).join("\n")).toEqual([200, 200, 200])
        // Stopped on the other replica, all at once: removals interleave with the other's reloads.
        const stops = yield* Effect.forEach(orgs, (org, i) => stopGateway(i % 2 === 0 ? b : a, org), { concurrency: "unbounded" })
        expect(stops.map((s) => s.status), stops.map((s) => s.text).join("\n")).toEqual([200, 200, 200])
      }
      for (const server of [a, b]) expect(logOf(server)).not.toMatch(/refused|emerg/)
    }).pipe(Effect.scoped))
})

layer(StackLive({ gateways: 1 }), { timeout: 180_000, excludeTestServices: true })("tenant isolation: a replica that loses its lease", (it) => {
  it.effect("its allocation is recovered by the other replica and the gateway handed to a new org; when it wakes it routes nothing to that gateway and touches nothing of the new org's", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const db = yield* openDb(stack.env["DATABASE_URL"] ?? "")
      const gateway = stack.gateways[0]
      if (gateway === undefined) return expect.fail("no sample gateway")
      // Outside calls may take 10 s here: A's PowerDNS call outlives everything below.
      const env = { STEP_TIMEOUT_MS: "30000", UNDO_TIMEOUT_MS: "20000", RECONCILE_INTERVAL_MS: "1000" }
      const [a, b] = yield* Effect.all([
        startServer(stack, { name: "lease-a", env }),
        startServer(stack, { name: "lease-b", env })
      ], { concurrency: 2 })
      yield* registerGateways(a, stack)
      const pdns = powerDnsPid(stack)

      // A claims the gateway for X and is in the middle of its DNS call (PowerDNS frozen).
      yield* signalPid(pdns, "SIGSTOP")
      const x = randomUUID()
      const answerToX = yield* Effect.fork(startGateway(a, x, { timeoutMs: 90_000 }))
      const [allocation] = yield* allocationsOf(db, x).pipe(
        Effect.filterOrFail((rows) => rows.length > 0),
        Effect.retry(Schedule.spaced(Duration.millis(10))),
        Effect.timeout(Duration.seconds(20))
      )
      if (allocation === undefined) return expect.fail("no allocation for X")
      yield* journalOf(db, allocation.id).pipe(
        Effect.repeat({ until: (rows) => rows.some((row) => row.step === "dns"), schedule: Schedule.spaced(Duration.millis(10)) })
      )
      // A freezes (it cannot take its lease again) and its lease session is terminated.
      yield* a.signal("SIGSTOP")
      const terminated = yield* db.query<{ ok: boolean }>(
        `select pg_terminate_backend(l.pid) as ok from pg_locks l
          where l.locktype = 'advisory' and l.granted and l.objsubid = 1
            and ((l.classid::bigint << 32) | l.objid::bigint) = gateway_allocator_runner_key($1)`,
        [allocation.runner]
      )
      expect(terminated.map((row) => row.ok)).toEqual([true])
      yield* signalPid(pdns, "SIGCONT")

      // B's reconciler sees A dead, adopts X's allocation and rolls it back: the gateway is free.
      yield* allocationsOf(db, x).pipe(
        Effect.repeat({ until: (rows) => rows.every((row) => row.state === "rolled_back"), schedule: Schedule.spaced(Duration.millis(100)) }),
        Effect.timeout(Duration.seconds(20))
      )
      const y = randomUUID()
      const startedY = yield* startGateway(b, y)
      expect(startedY.status, startedY.text).toBe(200)
      expect(yield* reaches(stack, y)).toBe(gateway.name)

      // A wakes up: its DNS call returns, and before its next side effect it finds it no longer
      // owns X's allocation. Without the fence it would route X's hostname to Y's gateway.
      yield* a.signal("SIGCONT")
      for (let i = 0; i < 30; i++) {
        expect(yield* reaches(stack, x), `X's hostname, ${i * 100} ms after A woke`).toBe(null)
        expect(yield* reaches(stack, y)).toBe(gateway.name)
        // Not a wait for something: the checks are spread over the 3 s in which A must route nothing.
        yield* Effect.sleep(Duration.millis(100))
      }
      const xAnswer = yield* Fiber.join(answerToX)
      expect(xAnswer.status, xAnswer.text).toBe(502)
      expect(xAnswer.json.message).toMatch(/taken over by another runner|lease is not held/)
      expect((yield* hasRoute(stack, x))).toBe(false)
      const statusY = yield* gatewayStatus(b, y)
      expect(statusY.json).toMatchObject({ state: "active", allocation_id: startedY.json.allocation_id })
      expect((yield* hasRoute(stack, y))).toBe(true)
      // The gateway never received X's handshake.
      const handshakes = yield* gateway.handshakes
      expect(handshakes.filter((h) => typeof h === "object" && h !== null && "organization_id" in h && h.organization_id === x))
        .toEqual([])
      expect((yield* stopGateway(b, y)).status).toBe(200)
    }).pipe(Effect.scoped))
})

layer(StackLive({ gateways: 1 }), { timeout: 180_000, excludeTestServices: true })("tenant isolation: registration, configuration and exposure", (it) => {
  it.effect("one upstream is in the pool once: another name, another case or a trailing dot is a 409", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const server = yield* startServer(stack, { name: "reg" })
      const add = (name: string, upstream: string) => request(server, "POST", "/pool/gateways", { body: { name, upstream } })
      const first = yield* add("dup-1", "Gateway-Host.Example.:9911")
      expect(first.status, first.text).toBe(201)
      expect(first.json.upstream).toBe("gateway-host.example:9911")
      for (const upstream of ["gateway-host.example:9911", "GATEWAY-HOST.EXAMPLE:9911", "gateway-host.example.:9911"]) {
        const again = yield* add(`dup-${randomUUID().slice(0, 8)}`, upstream)
        expect(again.status, upstream).toBe(409)
        expect(again.json.message).toMatch(/upstream .* is in the pool already/)
      }
      const pool = yield* request(server, "GET", "/pool")
      expect((pool.json.gateways as Array<{ upstream: string }>).filter((g) => g.upstream === "gateway-host.example:9911"))
        .toHaveLength(1)
    }).pipe(Effect.scoped))

  it.effect("a host-name upstream nginx cannot resolve: the start fails at handshake and rolls back, never a 200", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const gateway = stack.gateways[0]
      if (gateway === undefined) return expect.fail("no sample gateway")
      const server = yield* startServer(stack, { name: "unresolvable", env: { STEP_TIMEOUT_MS: "2000" } })
      const ids = yield* registerGateways(server, stack)
      // The sample gateway's own process, but under a name nginx (which has no resolver) cannot use.
      const removed = yield* request(server, "DELETE", `/pool/gateways/${ids.get(gateway.name)}`)
      expect(removed.status, removed.text).toBe(200)
      const port = gateway.upstream.split(":")[1]
      const added = yield* request(server, "POST", "/pool/gateways", { body: { name: "by-name", upstream: `localhost:${port}` } })
      expect(added.status, added.text).toBe(201)
      const org = randomUUID()
      const answer = yield* startGateway(server, org)
      expect(answer.status, answer.text).toBe(504)
      expect(answer.json).toMatchObject({ step: "handshake" })
      expect(reportOf(answer.json.rollback)).toEqual(expected.rollback(undoOrder, { handshake: "skipped" }))
      expect(yield* reaches(stack, org)).toBe(null)
      const pool = yield* request(server, "GET", "/pool")
      expect(pool.json.allocated).toBe(0)
      expect(pool.json.free).toBe(pool.json.total)
    }).pipe(Effect.scoped))

  it.effect("the route probe answers only requests carrying the edge's secret", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const server = yield* startServer(stack, { name: "probe-secret" })
      const ids = yield* registerGateways(server, stack)
      // Earlier cases left gateways nginx cannot reach in the pool: keep only the sample ones.
      const samples = new Set(stack.gateways.map((g) => g.name))
      for (const [name, id] of ids) {
        if (!samples.has(name)) expect((yield* request(server, "DELETE", `/pool/gateways/${id}`)).status).toBe(200)
      }
      const org = randomUUID()
      const started = yield* startGateway(server, org)
      expect(started.status, started.text).toBe(200)
      expect((yield* probeWith(stack, org, undefined)).status).toBe(404)
      expect((yield* probeWith(stack, org, "0".repeat(48))).status).toBe(404)
      const withSecret = yield* probeWith(stack, org, edgeFileOf(stack).probeSecret)
      expect(withSecret.status).toBe(200)
      expect(withSecret.body).toContain(started.json.allocation_id)
      expect((yield* stopGateway(server, org)).status).toBe(200)
    }).pipe(Effect.scoped))

  it.effect("a replica whose NGINX_CONF_DIR belongs to another nginx refuses to start, saying why", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      yield* startServer(stack, { name: "edge-first" })
      const otherDir = yield* temporaryDirectory("other-edge-")
      const refused = yield* startServer(stack, { name: "edge-other", env: { NGINX_CONF_DIR: otherDir } }).pipe(
        Effect.flip,
        Effect.timeout(Duration.seconds(60))
      )
      expect(refused.message).toMatch(/exited/)
      expect(refused.message).toMatch(/belongs to edge .* but this database's allocations are routed by edge/)
      expect(refused.message).toContain(edgeFileOf(stack).id)
    }).pipe(Effect.scoped))

  it.effect("an edge file recreated in the same NGINX_CONF_DIR stops the next start-up, naming the id to write back; written back, it starts", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      // A first start records the edge (if none of this file's did yet).
      yield* Effect.scoped(startServer(stack, { name: "edge-recorded" }))
      const edgeFile = path.join(stack.nginx.confDir, EDGE_FILE)
      const original = readFileSync(edgeFile, "utf8")
      const recorded = edgeFileOf(stack)
      const write = (id: string) => writeFileSync(edgeFile, JSON.stringify({ id, probeSecret: randomBytes(24).toString("hex") }), { mode: 0o600 })
      yield* Effect.gen(function*() {
        // What a deleted directory, or a tool purging it, leaves behind: a new file, a new id.
        write(randomUUID())
        const refused = yield* startServer(stack, { name: "edge-recreated" }).pipe(Effect.flip, Effect.timeout(Duration.seconds(60)))
        expect(refused.message).toMatch(/belongs to edge .* but this database's allocations are routed by edge/)
        expect(refused.message).toContain(`if its ${EDGE_FILE} was deleted or recreated on this same nginx, write ${recorded.id} back as the id in it`)
        // Done as it says (the secret stays the new one): the service starts and serves.
        write(recorded.id)
        const server = yield* startServer(stack, { name: "edge-restored" })
        expect((yield* request(server, "GET", "/pool")).status).toBe(200)
      }).pipe(Effect.ensuring(Effect.sync(() => writeFileSync(edgeFile, original, { mode: 0o600 }))))
    }).pipe(Effect.scoped))

  it.effect("an API_TOKEN shorter than 16 characters (or empty) stops the service at start-up", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      for (const token of ["", "short-token"]) {
        const refused = yield* startServer(stack, { name: `token-${token.length}`, env: { API_TOKEN: token } }).pipe(
          Effect.flip,
          Effect.timeout(Duration.seconds(60))
        )
        expect(refused.message).toMatch(/API_TOKEN must be at least 16 characters/)
      }
    }).pipe(Effect.scoped))

  it.effect("a frozen PowerDNS fails each call within its bound: a stop answers at once, and reconcile passes go on", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      // Each outside call gets min(step, undo) / 2 = 1.5 s; an undo 6 s.
      const server = yield* startServer(stack, {
        name: "pdns-frozen",
        env: { STEP_TIMEOUT_MS: "3000", UNDO_TIMEOUT_MS: "6000", RECONCILE_INTERVAL_MS: "500", LOG_LEVEL: "Debug" }
      })
      const ids = yield* registerGateways(server, stack)
      const samples = new Set(stack.gateways.map((g) => g.name))
      for (const [name, id] of ids) if (!samples.has(name)) yield* request(server, "DELETE", `/pool/gateways/${id}`)
      const org = randomUUID()
      expect((yield* startGateway(server, org)).status).toBe(200)
      const pdns = powerDnsPid(stack)
      yield* signalPid(pdns, "SIGSTOP")
      // Each pass ends in a line: done, or (at LOG_LEVEL=Debug) failing, failed again or still failing.
      const passes = () => (logOf(server).match(/reconcile pass (done|is failing|failed again|is still failing)/g) ?? []).length
      const passesBefore = passes()
      const startedAt = Date.now()
      const stopped = yield* stopGateway(server, org).pipe(Effect.ensuring(Effect.void))
      const tookMs = Date.now() - startedAt
      // Reconcile passes go on while PowerDNS is still frozen: each pass ends (its DNS calls fail
      // at their bound) instead of hanging on PowerDNS. Two of them within 6 s.
      const passesDuring = yield* pollUntil(Effect.sync(() => passes() - passesBefore), (during) => during >= 2, {
        withinMs: 6000,
        spacingMs: 100
      })
      yield* signalPid(pdns, "SIGCONT")
      expect(stopped.status, stopped.text).toBe(502)
      expect(stopped.json).toMatchObject({ _tag: "StopFailed", step: "dns" })
      expect(stopped.json.message).toMatch(/PowerDNS did not answer within 1s 500ms/)
      // The DNS call gave up at its own bound, well before the undo's 6 s.
      expect(tookMs).toBeLessThan(5000)
      expect(passesDuring).toBeGreaterThanOrEqual(2)
      // Once PowerDNS is back the reconciler finishes the stop.
      const status = yield* gatewayStatus(server, org).pipe(
        Effect.filterOrFail((answer) => answer.status === 404),
        Effect.retry(Schedule.spaced(Duration.millis(200))),
        Effect.timeout(Duration.seconds(20))
      )
      expect(status.status).toBe(404)
    }).pipe(Effect.scoped))
})
