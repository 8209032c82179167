// Effects that ask the real systems (PowerDNS, the file system, nginx, Postgres through the pool)
// what they hold for an org, independently of what the service believes. The invariants of docs/architecture.md,
// invariant 1: an org is active in the API <=> its DNS record exists <=> nginx holds its route
// <=> nginx routes its hostname.
import { expect } from "@effect/vitest"
import { Duration, Effect, Either, Schedule } from "effect"
import { Resolver } from "node:dns/promises"
import { AllocationQueries } from "../../src/allocation/AllocationQueries.ts"
import { listRecords } from "../../src/dev/PowerDnsProcess.ts"
import type { LocalStack } from "../../src/dev/stack.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { hasRoute } from "./invariants.ts"
import { hostnameOf, nginxReaches, ProbeError } from "./rawHttp.ts"

// The raw GET lives in ./rawHttp.ts; the nginx tests take it from here.
export { rawGet, type RawResponse } from "./rawHttp.ts"

/** The org's A record contents as PowerDNS's HTTP API lists them (empty when there is none). */
export const dnsApiRecord = (stack: LocalStack, org: OrganizationId) =>
  listRecords(stack.powerDns).pipe(
    Effect.map((rrsets) =>
      rrsets
        .filter((rrset) => rrset.type === "A" && rrset.name === `${hostnameOf(stack, org)}.`)
        .flatMap((rrset) => rrset.content)
    ),
    Effect.mapError((cause) => new ProbeError({ message: `PowerDNS API: ${cause.message}`, cause }))
  )

/**
 * The org's A record as a real DNS query to PowerDNS answers it (empty on NXDOMAIN / NODATA).
 * Any other outcome (refused, timeout) is a ProbeError: PowerDNS did not answer.
 */
export const dnsResolve = (stack: LocalStack, org: OrganizationId) =>
  Effect.tryPromise({
    try: async () => {
      const resolver = new Resolver({ timeout: 1000, tries: 2 })
      resolver.setServers([`127.0.0.1:${stack.powerDns.dnsPort}`])
      try {
        return await resolver.resolve4(hostnameOf(stack, org))
      } catch (error) {
        const code = (error as { code?: string }).code
        if (code === "ENOTFOUND" || code === "ENODATA") return [] as Array<string>
        throw error
      }
    },
    catch: (cause) => new ProbeError({ message: `DNS query to PowerDNS: ${String(cause)}`, cause })
  })

export interface DnsView {
  /** What the HTTP API lists for the org's name (A record contents). */
  readonly api: ReadonlyArray<string>
  /** What a DNS query on PowerDNS's port answers. */
  readonly resolved: ReadonlyArray<string>
}

export const dnsView = (stack: LocalStack, org: OrganizationId): Effect.Effect<DnsView, ProbeError> =>
  Effect.all({ api: dnsApiRecord(stack, org), resolved: dnsResolve(stack, org) }, { concurrency: 2 })

/** Whether PowerDNS holds the org's A record; the API and a real DNS query must agree. */
export const dnsRecordExists = (stack: LocalStack, org: OrganizationId) =>
  Effect.flatMap(dnsView(stack, org), (view) =>
    (view.api.length > 0) === (view.resolved.length > 0)
      ? Effect.succeed(view.api.length > 0)
      : Effect.fail(
        new ProbeError({
          message: `PowerDNS disagrees with itself about ${hostnameOf(stack, org)}: API ${
            JSON.stringify(view.api)
          }, DNS ${JSON.stringify(view.resolved)}`
        })
      ))

/**
 * What nginx does with a request for the org's hostname: the name of the gateway that answered
 * (the sample gateway echoes it), or null when nginx answers 404 itself (no route).
 */
export const nginxRoutes = (stack: LocalStack, org: OrganizationId) => nginxReaches(stack, org, { path: "/anything" })

/**
 * What nginx answers for the org's hostname on `samples` fresh connections, `spacingMs` apart:
 * one value when every connection got the same answer, else every answer in order. One request
 * is not enough: after a reload nginx keeps the previous workers accepting for about 100 ms
 * (the master starts the new workers, sleeps 100 ms, then tells the old ones to stop), so an
 * answer only holds once it holds across that window.
 */
export const nginxRoutesSteadily = (
  stack: LocalStack,
  org: OrganizationId,
  options: { readonly samples?: number; readonly spacingMs?: number } = {}
) =>
  Effect.gen(function*() {
    const answers: Array<string | null> = []
    const samples = options.samples ?? 10
    for (let i = 0; i < samples; i++) {
      // Not a wait for something: the samples are spread over the window the answer must hold across.
      if (i > 0) yield* Effect.sleep(Duration.millis(options.spacingMs ?? 20))
      answers.push(yield* nginxRoutes(stack, org))
    }
    return answers.every((answer) => answer === answers[0]) ? answers[0] ?? null : answers
  })

/** Polls nginx until it routes the org's hostname to some gateway; returns that gateway's name. */
export const awaitNginxRoutes = (stack: LocalStack, org: OrganizationId, timeoutMs = 15_000) =>
  nginxRoutes(stack, org).pipe(
    Effect.filterOrFail(
      (gateway): gateway is string => gateway !== null,
      () => new ProbeError({ message: `nginx does not route ${hostnameOf(stack, org)} yet` })
    ),
    Effect.retry(Schedule.spaced(Duration.millis(10))),
    Effect.timeoutFail({
      duration: Duration.millis(timeoutMs),
      onTimeout: () => new ProbeError({ message: `nginx did not route ${hostnameOf(stack, org)} within ${timeoutMs} ms` })
    })
  )

/** The pool's numbers, from Postgres through the service's GatewayStore. */
export const poolStats = Effect.flatMap(GatewayStore, (pool) => pool.stats())

/** The name of the gateway row with this id (to compare with what nginx reaches). */
export const gatewayName = (gatewayId: string) =>
  Effect.flatMap(GatewayStore, (pool) => pool.listGateways()).pipe(
    Effect.map((gateways) => gateways.find((gateway) => gateway.gatewayId === gatewayId)?.name ?? null)
  )

export interface Observation {
  /** The allocation's state as the service reports it (`AllocationQueries.status`), or "absent". */
  readonly api: string
  readonly dnsRecord: boolean
  readonly route: boolean
  /**
   * The gateway nginx reaches for the org's hostname, or null; every answer when fresh
   * connections over ~200 ms did not all get the same one.
   */
  readonly nginx: string | null | ReadonlyArray<string | null>
}

/** Everything the real systems say about the org, side by side. */
export const observe = (stack: LocalStack, org: OrganizationId) =>
  Effect.gen(function*() {
    const queries = yield* AllocationQueries
    const status = yield* queries.status(org).pipe(Effect.either)
    const [dnsRecord, route, nginx] = yield* Effect.all(
      [dnsRecordExists(stack, org), hasRoute(stack, org), nginxRoutesSteadily(stack, org)],
      { concurrency: 3 }
    )
    const api = Either.match(status, {
      onLeft: (error) => (error._tag === "AllocationNotFound" ? "absent" : `error: ${error.message}`),
      onRight: (allocation) => allocation.state
    })
    return {
      observation: { api, dnsRecord, route, nginx } satisfies Observation,
      allocation: Either.getRight(status)
    }
  })

/**
 * Invariant 1 (docs/architecture.md): the API, PowerDNS (API and DNS query), the route file and nginx
 * agree that the org is active (and nginx reaches the allocation's gateway, which serves only
 * this allocation) or that it is absent everywhere.
 */
export const expectConsistent = (stack: LocalStack, org: OrganizationId, expected: "active" | "absent") =>
  Effect.gen(function*() {
    const { allocation, observation } = yield* observe(stack, org)
    if (expected === "absent") {
      expect(observation).toEqual({ api: "absent", dnsRecord: false, route: false, nginx: null })
      return observation
    }
    expect(allocation._tag).toBe("Some")
    const live = allocation._tag === "Some" ? allocation.value : undefined
    const name = live?.gatewayId == null ? null : yield* gatewayName(live.gatewayId)
    expect(observation).toEqual({ api: "active", dnsRecord: true, route: true, nginx: name })
    expect(yield* dnsView(stack, org)).toEqual({ api: ["127.0.0.1"], resolved: ["127.0.0.1"] })
    // A gateway serves at most one org: its row points at this allocation.
    const gateways = yield* Effect.flatMap(GatewayStore, (pool) => pool.listGateways())
    expect(gateways.filter((gateway) => gateway.allocationId === live?.allocationId).map((g) => g.gatewayId))
      .toEqual([live?.gatewayId])
    return observation
  })
