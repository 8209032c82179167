// The five-step start against the real parts (embedded Postgres, nginx, PowerDNS, sample
// gateways) with real faults: no test layers, no mocks. After every failed start the real systems
// are asked, not the service: the gateway is free again, PowerDNS has no record, routes/ has no
// file, nginx does not route the hostname, and the journal shows what ran and what was undone.
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Either, Fiber, Layer, Metric } from "effect"
import { randomUUID } from "node:crypto"
import { mkdir, readdir, rm, writeFile } from "node:fs/promises"
import path from "node:path"
import { AllocationQueries } from "../../src/allocation/AllocationQueries.ts"
import { Allocator } from "../../src/allocation/Allocator.ts"
import { Reconciler } from "../../src/allocation/Reconciler.ts"
import { rollbacksIncompleteTotal } from "../../src/telemetry/Metrics.ts"
import type { AllocationId, OrganizationId } from "../../src/domain/ids.ts"
import { undoOrder } from "../../src/domain/steps.ts"
import { awaitNginxRoutes, dnsRecordExists, expectConsistent, gatewayName, nginxRoutesSteadily, poolStats } from "../support/probes.ts"
import { edgeRoutes, hasRoute, routeApi, routeFileOf } from "../support/invariants.ts"
import { type Failure, failureOf } from "../support/failures.ts"
import { expected, reportOf, rowsOf, stepsBefore, undoOrderOf } from "../support/journal.ts"
import { pollUntil } from "../support/poll.ts"
import { hostnameOf, rawGet } from "../support/rawHttp.ts"
import { handshakesFor, ServicesLive, setAllGateways, Stack, StackLive, withStack } from "../support/stack.ts"

const STEP_TIMEOUT_MS = 2500
const ROUTE_TABLE_SIZE = "128k"

const newOrg = () => randomUUID() as OrganizationId

/** Stops the org if a test left it running (a failed assertion must not leak a gateway). */
const stopQuietly = (org: OrganizationId) =>
  Effect.flatMap(Allocator, (allocator) => allocator.stop(org)).pipe(Effect.ignore)

/** The allocation's journal as `step:event`, in the order the rows were written. */
const journalOf = (allocationId: AllocationId) =>
  Effect.flatMap(AllocationQueries, (queries) => queries.describe(allocationId)).pipe(
    Effect.map((allocation) => ({
      state: allocation.state,
      events: rowsOf(allocation.steps),
      actors: [...new Set(allocation.steps.map((entry) => entry.actor))]
    }))
  )

/** Starts the org and expects it to fail; returns the error. */
const failingStart = (org: OrganizationId) =>
  Effect.flatMap(Allocator, (allocator) => allocator.start(org)).pipe(
    Effect.either,
    Effect.flatMap(Either.match({
      onLeft: failureOf,
      onRight: (started) => Effect.dieMessage(`the start was expected to fail, it succeeded: ${JSON.stringify(started)}`)
    }))
  )

const stepAndReport = (error: Failure) =>
  error._tag === "NoGatewayAvailable"
    ? { tag: error._tag }
    : {
      tag: error._tag,
      step: error.step,
      rollback: reportOf(error.rollback)
    }

const allocationIdOf = (error: Failure): AllocationId => {
  if (error._tag === "NoGatewayAvailable" || error.allocationId === undefined) {
    throw new Error(`no allocation id on ${error._tag}`)
  }
  return error.allocationId
}

/** Both routing modes run the whole suite; each has its own nginx faults. */
const suite = (routing: "lua" | "reload") =>
  layer(
    ServicesLive({
      STEP_TIMEOUT_MS: String(STEP_TIMEOUT_MS),
      RECONCILE_INTERVAL_MS: "3600000",
      // A small route table, so that "full" is quick to reach (a few hundred routes).
      ...(routing === "lua" ? { NGINX_ROUTE_TABLE_SIZE: ROUTE_TABLE_SIZE } : {})
    }).pipe(Layer.provideMerge(StackLive({ routing }))),
    { timeout: 120_000, excludeTestServices: true }
  )(`five-step start against the real stack (NGINX_ROUTING=${routing})`, (it) => {
  it.effect("success: nginx routes the hostname to the claimed gateway, DNS resolves, journal complete; stop undoes it all", () => {
    const org = newOrg()
    return withStack((stack) =>
      Effect.gen(function*() {
        const allocator = yield* Allocator
        const before = yield* poolStats
        yield* expectConsistent(stack, org, "absent")

        const started = yield* allocator.start(org)
        expect(started.reused).toBe(false)
        expect(started.hostname).toBe(`org-${org}.domain.local`)
        expect(yield* poolStats).toMatchObject({ total: before.total, free: before.free - 1, allocated: before.allocated + 1 })

        const observation = yield* expectConsistent(stack, org, "active")
        const name = yield* gatewayName(started.gatewayId)
        expect(observation.nginx).toBe(name)

        // The claimed gateway was initialised for this org (the gateway protocol).
        const gateway = stack.gateways.find((g) => g.name === name)
        expect(gateway).toBeDefined()
        expect(yield* gateway!.handshakes).toEqual([{
          organization_id: org,
          gateway_id: started.gatewayId,
          allocation_id: started.allocationId,
          gateway_hostname: `org-${org}.domain.local`
        }])

        expect(yield* journalOf(started.allocationId)).toEqual({ state: "active", events: expected.forward(), actors: ["request"] })

        // A second start for the org reuses the allocation and changes nothing.
        const again = yield* allocator.start(org)
        expect(again).toEqual({ ...started, reused: true })
        expect((yield* poolStats).free).toBe(before.free - 1)

        const stopped = yield* allocator.stop(org)
        expect(stopped).toEqual({ organizationId: org, gatewayRelease: "done", gatewayId: started.gatewayId, allocationId: started.allocationId })
        yield* expectConsistent(stack, org, "absent")
        expect(yield* poolStats).toEqual(before)
        const journal = yield* journalOf(started.allocationId)
        expect(journal.state).toBe("released")
        expect(journal.events).toEqual([...expected.forward(), ...expected.undone(undoOrder)])
      }).pipe(Effect.ensuring(stopQuietly(org)))
    )
  })

  it.effect("dns: PowerDNS down -> StepFailed at dns, gateway released, nothing left anywhere", () =>
    withStack((stack) =>
      Effect.gen(function*() {
        const org = newOrg()
        const before = yield* poolStats
        const error = yield* Effect.zipRight(stack.powerDns.stop, failingStart(org)).pipe(
          Effect.ensuring(stack.powerDns.start.pipe(Effect.orDie))
        )
        expect(stepAndReport(error)).toEqual({ tag: "StepFailed", step: "dns", rollback: expected.rollback(["allocate"]) })
        expect(error.message).toContain("PowerDNS upsert")

        expect(yield* poolStats).toEqual(before)
        yield* expectConsistent(stack, org, "absent")
        expect(yield* journalOf(allocationIdOf(error))).toEqual({
          state: "rolled_back",
          events: [...expected.endedAt("dns"), ...expected.undone(["allocate"])],
          actors: ["request"]
        })
      })
    ))

  if (routing === "reload") {
    it.effect("nginx-config: the route file path is a directory -> StepFailed at nginx-config, DNS record removed", () =>
      withStack((stack) =>
        Effect.gen(function*() {
          const org = newOrg()
          const before = yield* poolStats
          const blocker = routeFileOf(stack, org)
          const routesDir = path.dirname(blocker)
          // rename(temp, blocker) fails with EISDIR, even for root (chmod would not stop root).
          const error = yield* Effect.promise(() => mkdir(blocker)).pipe(
            Effect.zipRight(failingStart(org)),
            Effect.tap(() =>
              Effect.gen(function*() {
                // Checked while the blocker is still there: no temp file was left behind either.
                const leftovers = (yield* Effect.promise(() => readdir(routesDir))).filter((file) => file.includes(org))
                expect(leftovers).toEqual([`org-${org}.conf`])
                expect(yield* hasRoute(stack, org)).toBe(false)
                expect(yield* nginxRoutesSteadily(stack, org)).toBeNull()
              })
            ),
            Effect.ensuring(Effect.promise(() => rm(blocker, { recursive: true, force: true })))
          )
          expect(stepAndReport(error)).toEqual({
            tag: "StepFailed",
            step: "nginx-config",
            rollback: expected.rollback(undoOrderOf(stepsBefore("nginx-config")))
          })
          expect(error.message).toContain("nginx write")

          expect(yield* poolStats).toEqual(before)
          yield* expectConsistent(stack, org, "absent")
          expect(yield* journalOf(allocationIdOf(error))).toEqual({
            state: "rolled_back",
            events: [...expected.endedAt("nginx-config"), ...expected.undone(undoOrderOf(stepsBefore("nginx-config")))],
            actors: ["request"]
          })
        })
      ))

    it.effect("nginx-reload: a broken foreign file -> StepFailed at nginx-reload, the first org still routed", () => {
      const first = newOrg()
      return withStack((stack) =>
        Effect.gen(function*() {
          const allocator = yield* Allocator
          const second = newOrg()
          const initial = yield* poolStats
          const started = yield* allocator.start(first)
          const firstGateway = yield* gatewayName(started.gatewayId)
          yield* expectConsistent(stack, first, "active")

          const before = yield* poolStats
          const broken = path.join(stack.nginx.confDir, "broken.conf")
          const error = yield* Effect.promise(() => writeFile(broken, "this is { not nginx syntax\n")).pipe(
            Effect.zipRight(failingStart(second)),
            Effect.tap(() =>
              Effect.gen(function*() {
                // nginx keeps serving its last good configuration: the first org, not the second.
                expect(yield* nginxRoutesSteadily(stack, first)).toBe(firstGateway)
                yield* expectConsistent(stack, second, "absent")
              })
            ),
            Effect.ensuring(Effect.promise(() => rm(broken, { force: true })))
          )
          expect(stepAndReport(error)).toEqual({
            tag: "StepFailed",
            step: "nginx-reload",
            rollback: expected.rollback(undoOrderOf(stepsBefore("nginx-reload")))
          })
          expect(error.message).toContain("nginx reload")

          expect(yield* poolStats).toEqual(before)
          yield* expectConsistent(stack, second, "absent")
          yield* expectConsistent(stack, first, "active")
          expect(yield* journalOf(allocationIdOf(error))).toEqual({
            state: "rolled_back",
            events: [...expected.endedAt("nginx-reload"), ...expected.undone(undoOrderOf(stepsBefore("nginx-reload")))],
            actors: ["request"]
          })

          // With the foreign file gone, nginx reloads again: the first org stops cleanly.
          yield* allocator.stop(first)
          yield* expectConsistent(stack, first, "absent")
          expect(yield* poolStats).toEqual(initial)
        }).pipe(Effect.ensuring(stopQuietly(first)))
      )
    })
  } else {
    it.effect("nginx-config: the route table is full -> StepFailed at nginx-config, no route evicted; an nginx restart empties the table, 503 until every active route is back", () => {
      const first = newOrg()
      return withStack((stack) =>
        Effect.gen(function*() {
          const allocator = yield* Allocator
          const second = newOrg()
          const started = yield* allocator.start(first)
          const firstGateway = yield* gatewayName(started.gatewayId)
          const before = yield* poolStats

          // Fill the table with other routes until nginx answers 507 (never evicting one).
          let filled = 0
          for (;;) {
            const answer = yield* routeApi(
              stack,
              "PUT",
              `/routes/${randomUUID()}?upstream=127.0.0.1:9&allocation=${randomUUID()}&generation=${1e12 + filled}`
            )
            if (answer.status === 507) break
            expect(answer.status).toBe(200)
            filled += 1
          }
          expect(filled).toBeGreaterThan(50)

          const error = yield* failingStart(second)
          expect(stepAndReport(error)).toEqual({
            tag: "StepFailed",
            step: "nginx-config",
            rollback: expected.rollback(undoOrderOf(stepsBefore("nginx-config")))
          })
          expect(error.message).toContain("route table is full")
          expect(yield* poolStats).toEqual(before)
          yield* expectConsistent(stack, second, "absent")
          // Nothing was evicted to make room: the first org is still served, by its gateway.
          expect(yield* nginxRoutesSteadily(stack, first)).toBe(firstGateway)

          // A restart empties the shared memory. Until the service has pushed every active route
          // back, nginx answers 503 (retry), never 404 and never another gateway.
          yield* stack.nginx.stop
          yield* stack.nginx.start
          const served = yield* pollUntil(
            rawGet({ port: stack.nginx.listenPort, path: "/", headers: { host: hostnameOf(stack, first) } }),
            (response) => response.status !== 503,
            { withinMs: 5000, spacingMs: 5 }
          )
          expect(served.status).toBe(200)
          expect(JSON.parse(served.body)).toMatchObject({ gateway: firstGateway })
          // Back without any start; the other routes (not the service's allocations) are gone.
          expect([...(yield* edgeRoutes(stack)).routes.keys()]).toEqual([first])
          const unknown = yield* rawGet({ port: stack.nginx.listenPort, path: "/", headers: { host: hostnameOf(stack, newOrg()) } })
          expect(unknown.status).toBe(404)
          yield* expectConsistent(stack, first, "active")
          yield* allocator.stop(first)
          yield* expectConsistent(stack, first, "absent")
        }).pipe(Effect.ensuring(stopQuietly(first)))
      )
    }, { timeout: 60_000 })

    it.effect("nginx-config: nginx stopped -> StepFailed at nginx-config; the refused write changed nothing, so the rollback is complete and raises no alarm", () =>
      withStack((stack) =>
        Effect.gen(function*() {
          const org = newOrg()
          const before = yield* poolStats
          const incompleteBefore = yield* Metric.value(rollbacksIncompleteTotal)
          const error = yield* Effect.zipRight(stack.nginx.stop, failingStart(org)).pipe(
            Effect.ensuring(stack.nginx.start.pipe(Effect.orDie))
          )
          // Connection refused: the route write never reached nginx, so its undo does not run.
          expect(stepAndReport(error)).toEqual({
            tag: "StepFailed",
            step: "nginx-config",
            rollback: expected.rollback(undoOrderOf(stepsBefore("nginx-config")))
          })
          expect(error.message).toMatch(/ECONNREFUSED|refused/i)
          expect(yield* Metric.value(rollbacksIncompleteTotal)).toEqual(incompleteBefore)
          expect(yield* poolStats).toEqual(before)
          expect(yield* journalOf(allocationIdOf(error))).toMatchObject({ state: "rolled_back" })
        })
      ))

    it.effect("a broken foreign file in NGINX_CONF_DIR changes nothing: starts and stops need no reload", () => {
      const org = newOrg()
      return withStack((stack) =>
        Effect.gen(function*() {
          const allocator = yield* Allocator
          const before = yield* poolStats
          const broken = path.join(stack.nginx.confDir, "broken.conf")
          yield* Effect.promise(() => writeFile(broken, "this is { not nginx syntax\n")).pipe(
            Effect.zipRight(allocator.start(org)),
            Effect.zipRight(expectConsistent(stack, org, "active")),
            Effect.zipRight(allocator.stop(org)),
            Effect.zipRight(expectConsistent(stack, org, "absent")),
            Effect.ensuring(Effect.promise(() => rm(broken, { force: true })))
          )
          expect(yield* poolStats).toEqual(before)
        }).pipe(Effect.ensuring(stopQuietly(org)))
      )
    })
  }

  it.effect("handshake: the gateway answers 500 -> StepFailed at handshake, every earlier step undone", () =>
    withStack((stack) =>
      Effect.gen(function*() {
        const org = newOrg()
        const before = yield* poolStats
        yield* setAllGateways(stack, { handshake: "fail" })
        const error = yield* failingStart(org)
        expect(stepAndReport(error)).toEqual({
          tag: "StepFailed",
          step: "handshake",
          rollback: expected.rollback(undoOrderOf(stepsBefore("handshake")))
        })
        expect(error.message).toContain("HTTP 500")

        expect(yield* poolStats).toEqual(before)
        yield* expectConsistent(stack, org, "absent")
        // The handshake really reached a gateway (it answered 500).
        expect(yield* handshakesFor(stack, org)).toHaveLength(1)
        expect(yield* journalOf(allocationIdOf(error))).toEqual({
          state: "rolled_back",
          events: [...expected.endedAt("handshake"), ...expected.undone(undoOrderOf(stepsBefore("handshake")))],
          actors: ["request"]
        })
      })
    ))

  it.effect("handshake: the gateway never answers -> StepTimedOut at handshake, rolled back", () =>
    withStack((stack) =>
      Effect.gen(function*() {
        const org = newOrg()
        const before = yield* poolStats
        yield* setAllGateways(stack, { handshake: "hang" })
        const error = yield* failingStart(org)
        expect(stepAndReport(error)).toEqual({
          tag: "StepTimedOut",
          step: "handshake",
          rollback: expected.rollback(undoOrder)
        })
        expect(error._tag === "StepTimedOut" && error.timeoutMs).toBe(STEP_TIMEOUT_MS)

        expect(yield* poolStats).toEqual(before)
        yield* expectConsistent(stack, org, "absent")
        expect(yield* journalOf(allocationIdOf(error))).toEqual({
          state: "rolled_back",
          events: [...expected.endedAt("handshake", "timed_out"), ...expected.undone(undoOrder)],
          actors: ["request"]
        })
      })
    ))

  describe("an undo that fails", () => {
    it.effect("PowerDNS down during the rollback: the caller gets the handshake timeout, dns undo failed, gateway freed", () =>
      withStack((stack) =>
        Effect.gen(function*() {
          const reconciler = yield* Reconciler
          const org = newOrg()
          const before = yield* poolStats
          yield* setAllGateways(stack, { handshake: "hang", handshakeDelayMs: 60_000 })

          const error = yield* Effect.gen(function*() {
            const start = yield* Effect.fork(failingStart(org))
            // The route is live through nginx: dns, nginx-config and nginx-reload completed and
            // the handshake is waiting on the gateway. Now PowerDNS goes away.
            yield* awaitNginxRoutes(stack, org)
            expect(yield* dnsRecordExists(stack, org)).toBe(true)
            yield* stack.powerDns.stop
            const error = yield* Fiber.join(start)

            // Checked while PowerDNS is still down.
            expect(stepAndReport(error)).toEqual({
              tag: "StepTimedOut",
              step: "handshake",
              rollback: expected.rollback(undoOrder, { dns: "failed" })
            })
            const dnsUndo = error._tag === "NoGatewayAvailable" ? undefined : error.rollback.find((o) => o.step === "dns")
            expect(dnsUndo?.message).toContain("PowerDNS remove")
            // DNS points at nginx, not at the gateway: with the route gone, releasing is safe.
            expect(yield* poolStats).toEqual(before)
            expect(yield* hasRoute(stack, org)).toBe(false)
            expect(yield* nginxRoutesSteadily(stack, org)).toBeNull()
            expect((yield* Effect.flatMap(AllocationQueries, (queries) => queries.status(org)).pipe(Effect.either))._tag).toBe("Left")
            return error
          }).pipe(Effect.ensuring(stack.powerDns.start.pipe(Effect.orDie)))

          expect(yield* journalOf(allocationIdOf(error))).toEqual({
            state: "rolled_back",
            events: [...expected.endedAt("handshake", "timed_out"), ...expected.undone(undoOrder, { dns: "failed" })],
            actors: ["request"]
          })

          // The record the failed undo left behind is still in PowerDNS; one reconcile pass
          // removes it (it belongs to no live allocation), and the org is absent everywhere.
          expect(yield* dnsRecordExists(stack, org)).toBe(true)
          const summary = yield* reconciler.runOnce
          expect(summary.orphanRecordsRemoved).toBeGreaterThanOrEqual(1)
          yield* expectConsistent(stack, org, "absent")
          expect(yield* poolStats).toEqual(before)
        })
      ), { timeout: 60_000 })
  })

  it.effect("the pool is whole after the faults: free + allocated = total, nothing allocated", () =>
    Effect.gen(function*() {
      const stats = yield* poolStats
      const stack = yield* Stack
      expect(stats).toMatchObject({ total: stack.gateways.length, free: stack.gateways.length, allocated: 0 })
    }))
})

suite("lua")
suite("reload")
