// How a refused DNS batch is split, against a small in-memory PowerDNS zone answering the
// service's real HttpClient calls (the real server is in powerdns.test.ts).
import { HttpClient, HttpClientResponse } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Either, Fiber, Layer, Schedule, Schema, Tracer } from "effect"
import { randomUUID } from "node:crypto"
import { Settings } from "../../src/config.ts"
import { Dns, type DnsError, DnsPowerDnsOver } from "../../src/dns/Dns.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { configFrom } from "../support/stack.ts"

const PatchBody = Schema.parseJson(Schema.Struct({
  rrsets: Schema.Array(Schema.Struct({ name: Schema.String, changetype: Schema.Literal("REPLACE", "DELETE") }))
}))

/**
 * One zone: `cnames` are names holding a CNAME (an A record there is refused with 422, as
 * PowerDNS does, and refused whole: nothing of the PATCH applies). `names: false` leaves the
 * rrset's name out of the refusal; `status` answers every PATCH with that status and `said`.
 */
const makeZone = (options: { readonly names?: boolean; readonly status?: number; readonly said?: string } = {}) => {
  const records = new Set<string>()
  const cnames = new Set<string>()
  /** Every PATCH's rrset names, in order. */
  const patches: Array<ReadonlyArray<string>> = []
  let hold: { readonly arrived: Deferred.Deferred<void>; readonly release: Deferred.Deferred<void> } | undefined
  const answer = (request: Parameters<Parameters<typeof HttpClient.make>[0]>[0], status: number, error?: string) =>
    HttpClientResponse.fromWeb(
      request,
      new Response(error === undefined ? null : JSON.stringify({ error }), {
        status,
        headers: { "content-type": "application/json" }
      })
    )
  const client = HttpClient.make((request) =>
    Effect.gen(function*() {
      const body = request.body._tag === "Uint8Array" ? new TextDecoder().decode(request.body.body) : ""
      const { rrsets } = yield* Schema.decodeUnknown(PatchBody)(body).pipe(Effect.orDie)
      patches.push(rrsets.map((rrset) => rrset.name))
      const held = hold
      hold = undefined
      if (held !== undefined) {
        yield* Deferred.succeed(held.arrived, undefined)
        yield* Deferred.await(held.release)
      }
      if (options.status !== undefined) return answer(request, options.status, options.said ?? "")
      const refused = rrsets.find((rrset) => rrset.changetype === "REPLACE" && cnames.has(rrset.name))
      if (refused !== undefined) {
        const subject = options.names === false ? "RRset" : `RRset ${refused.name} IN A`
        return answer(request, 422, `${subject}: Conflicts with pre-existing RRset`)
      }
      for (const rrset of rrsets) {
        if (rrset.changetype === "REPLACE") records.add(rrset.name)
        else records.delete(rrset.name)
      }
      return answer(request, 204)
    })
  )
  return {
    records,
    cnames,
    patches,
    /**
     * The next PATCH is held before it is answered: `arrived` waits for it to come, `release`
     * lets it be answered.
     */
    holdNext: Effect.gen(function*() {
      const held = { arrived: yield* Deferred.make<void>(), release: yield* Deferred.make<void>() }
      hold = held
      return { arrived: Deferred.await(held.arrived), release: Deferred.succeed(held.release, undefined) }
    }),
    layer: DnsPowerDnsOver.pipe(
      Layer.provide(Layer.succeed(HttpClient.HttpClient, client)),
      Layer.provide(Settings.Default),
      Layer.provide(configFrom({ PDNS_API_URL: "http://pdns.test", PDNS_API_KEY: "test-key", DOMAIN: "domain.local" }))
    )
  }
}
type Zone = ReturnType<typeof makeZone>

const newOrg = () => randomUUID() as OrganizationId
const fqdn = (org: OrganizationId) => `org-${org}.domain.local.`

/**
 * Runs `changes` as one batch: a first change's PATCH is held until every one of them has
 * joined the pending batch behind it. Returns each change's outcome and the batch's PATCHes.
 */
const inOneBatch = (zone: Zone, changes: ReadonlyArray<Effect.Effect<void, DnsError, Dns>>) =>
  Effect.gen(function*() {
    const dns = yield* Dns
    const held = yield* zone.holdNext
    const first = yield* Effect.fork(dns.upsert(newOrg()))
    yield* held.arrived
    const before = zone.patches.length
    const fibers = yield* Effect.forEach(changes, (change) => Effect.fork(Effect.either(change)))
    // A change waits (suspended) only for its batch's answer once it joined the pending batch:
    // nothing else it does before is asynchronous.
    yield* Effect.forEach(fibers, Fiber.status).pipe(
      Effect.repeat({
        schedule: Schedule.spaced(Duration.millis(1)),
        until: (statuses) => statuses.every((status) => status._tag === "Suspended")
      }),
      Effect.timeoutFail({ duration: Duration.seconds(5), onTimeout: () => new Error("the changes did not all join the batch") }),
      Effect.orDie
    )
    yield* held.release
    yield* Fiber.await(first)
    const outcomes = yield* Effect.forEach(fibers, Fiber.join)
    return { outcomes, patches: zone.patches.slice(before) }
  })

/** Runs `effect` under the default tracer, keeping every span it starts (to read their attributes). */
const recordingSpans = (spans: Array<Tracer.Span>) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(Effect.tracer, (tracer) =>
    Effect.withTracer(
      effect,
      Tracer.make({
        span: (...args) => {
          const span = tracer.span(...args)
          spans.push(span)
          return span
        },
        context: tracer.context.bind(tracer)
      })
    ))

describe("Dns: a refused batch is split so that only the refused member fails", () => {
  it.live("one conflicting upsert among 10 upserts and 3 removals: 3 PATCHes, only it fails", () => {
    const zone = makeZone()
    const spans: Array<Tracer.Span> = []
    return Effect.gen(function*() {
      const dns = yield* Dns
      const bad = newOrg()
      zone.cnames.add(fqdn(bad))
      const upserts = Array.from({ length: 10 }, newOrg)
      const removals = Array.from({ length: 3 }, newOrg)
      yield* Effect.forEach(removals, dns.upsert)
      const { outcomes, patches } = yield* inOneBatch(zone, [
        dns.upsert(bad),
        ...upserts.map(dns.upsert),
        ...removals.map(dns.remove)
      ])
      // The whole batch, then the rest without the named member, then the member alone.
      expect(patches.map((names) => names.length)).toEqual([14, 13, 1])
      expect(patches[2]).toEqual([fqdn(bad)])
      const [badOutcome, ...others] = outcomes
      const error = badOutcome !== undefined && Either.isLeft(badOutcome) ? badOutcome.left : undefined
      expect(error?.message).toBe(`PowerDNS upsert: HTTP 422: RRset ${fqdn(bad)} IN A: Conflicts with pre-existing RRset`)
      expect(error?.noEffect).toBe(true)
      expect(others.every(Either.isRight)).toBe(true)
      for (const org of upserts) expect(zone.records.has(fqdn(org))).toBe(true)
      for (const org of removals) expect(zone.records.has(fqdn(org))).toBe(false)
      expect(zone.records.has(fqdn(bad))).toBe(false)
      // The batch's span says it was split, and how; each PATCH has its own.
      const batch = spans.find((span) => span.name === "Dns.batch" && span.attributes.get("dns.rrsets") === 14)
      expect(Object.fromEntries(batch?.attributes ?? [])).toMatchObject({
        "dns.split": true,
        "dns.patches": 3,
        "dns.failed": 1
      })
      const split = spans.filter((span) => span.name === "Dns.patch" && span.attributes.get("dns.split") === true)
      expect(split.map((span) => span.attributes.get("dns.rrsets"))).toEqual([13, 1])
    }).pipe(Effect.provide(zone.layer), recordingSpans(spans))
  })

  it.live("three conflicting members among 12: 1 + 2 x 3 PATCHes, each fails with its own name", () => {
    const zone = makeZone()
    return Effect.gen(function*() {
      const dns = yield* Dns
      const orgs = Array.from({ length: 12 }, newOrg)
      const bad = new Set([orgs[1], orgs[6], orgs[11]].map((org) => org === undefined ? "" : fqdn(org)))
      for (const name of bad) zone.cnames.add(name)
      const { outcomes, patches } = yield* inOneBatch(zone, orgs.map(dns.upsert))
      expect(patches.length).toBe(7)
      orgs.forEach((org, index) => {
        const outcome = outcomes[index]
        if (bad.has(fqdn(org))) {
          expect(outcome !== undefined && Either.isLeft(outcome) ? outcome.left.reason : "").toContain(`RRset ${fqdn(org)} IN A`)
        } else {
          expect(outcome !== undefined && Either.isRight(outcome)).toBe(true)
          expect(zone.records.has(fqdn(org))).toBe(true)
        }
      })
    }).pipe(Effect.provide(zone.layer))
  })

  it.live("a refusal that names no member: bisection, 1 + 2 x log2(16) PATCHes", () => {
    const zone = makeZone({ names: false })
    return Effect.gen(function*() {
      const dns = yield* Dns
      const orgs = Array.from({ length: 16 }, newOrg)
      const bad = orgs[5] ?? newOrg()
      zone.cnames.add(fqdn(bad))
      const { outcomes, patches } = yield* inOneBatch(zone, orgs.map(dns.upsert))
      expect(patches.length).toBe(9)
      const failed = orgs.filter((_, index) => outcomes[index] === undefined || Either.isLeft(outcomes[index]))
      expect(failed).toEqual([bad])
      expect(zone.records.size).toBe(15 + 1) // the 15 others and the held first change
    }).pipe(Effect.provide(zone.layer))
  })

  it.live("a removal refused in a batch fails as a removal; a single-member refusal is one PATCH", () => {
    const zone = makeZone({ status: 422, said: "Name 'x.' is not in zone" })
    return Effect.gen(function*() {
      const dns = yield* Dns
      const error = yield* dns.remove(newOrg()).pipe(Effect.flip)
      expect(zone.patches.length).toBe(1)
      expect(error.operation).toBe("remove")
      expect(error.noEffect).toBe(true)
      expect(error.message).toBe("PowerDNS remove: HTTP 422: Name 'x.' is not in zone")
    }).pipe(Effect.provide(zone.layer))
  })

  it.live("a 5xx is no member's fault: retried, not split, every member gets it", () => {
    const zone = makeZone({ status: 500, said: "database is locked" })
    return Effect.gen(function*() {
      const dns = yield* Dns
      const orgs = Array.from({ length: 6 }, newOrg)
      const outcomes = yield* Effect.all(orgs.map((org) => Effect.either(dns.upsert(org))), { concurrency: "unbounded" })
      for (const outcome of outcomes) {
        const error = Either.isLeft(outcome) ? outcome.left : undefined
        expect(error?.reason).toBe("HTTP 500: database is locked")
        expect(error?.noEffect).toBe(false)
      }
      // Each batch: its PATCH and 3 retries, whole.
      expect(zone.patches.length % 4).toBe(0)
      expect(new Set(zone.patches.flat()).size).toBe(orgs.length)
      expect(zone.patches.flat().length).toBe(orgs.length * 4)
    }).pipe(Effect.provide(zone.layer))
  })

  it.live("a 404 (the zone) refuses any batch: not split, every member gets it", () => {
    const zone = makeZone({ status: 404, said: "Could not find domain 'domain.local.'" })
    return Effect.gen(function*() {
      const dns = yield* Dns
      const orgs = Array.from({ length: 5 }, newOrg)
      const { outcomes, patches } = yield* inOneBatch(zone, orgs.map(dns.upsert))
      expect(patches.length).toBe(1)
      expect(outcomes.every((outcome) => Either.isLeft(outcome) && outcome.left.noEffect === true)).toBe(true)
    }).pipe(Effect.provide(zone.layer))
  })
})
