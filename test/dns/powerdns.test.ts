import { HttpClient, type HttpClientRequest } from "@effect/platform"
import { NodeContext, NodeHttpClient } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Either, Layer, Logger, Option, Redacted, Schema } from "effect"
import { randomUUID } from "node:crypto"
import { listRecords, type PowerDnsHandle, startPowerDns } from "../../src/dev/PowerDnsProcess.ts"
import { Settings } from "../../src/config.ts"
import { Dns, DnsPowerDnsOver } from "../../src/dns/Dns.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { pollUntil } from "../support/poll.ts"
import { configFrom, temporaryDirectory } from "../support/stack.ts"

class RealPowerDns extends Context.Tag("test/RealPowerDns")<RealPowerDns, PowerDnsHandle>() {}

const RealPowerDnsLive = Layer.scoped(
  RealPowerDns,
  Effect.flatMap(temporaryDirectory("ga-pdns-"), (dir) =>
    startPowerDns({
      dir,
      zone: "domain.local.",
      apiKey: Redacted.make("test-key")
    }))
).pipe(Layer.provide(NodeContext.layer))

const dnsLayer = (client: Layer.Layer<HttpClient.HttpClient> = NodeHttpClient.layer) =>
  Layer.unwrapEffect(
    Effect.map(RealPowerDns, (pdns) =>
      DnsPowerDnsOver.pipe(
        Layer.provide(client),
        Layer.provide(Settings.Default),
        Layer.provide(configFrom({ PDNS_API_URL: pdns.apiUrl, PDNS_API_KEY: "test-key", DOMAIN: "domain.local" }))
      ))
  )

const DnsLive = dnsLayer()

const PatchBody = Schema.parseJson(Schema.Struct({ rrsets: Schema.Array(Schema.Struct({ name: Schema.String })) }))
const rrsetNames = (request: HttpClientRequest.HttpClientRequest): ReadonlyArray<string> =>
  request.body._tag === "Uint8Array"
    ? Schema.decodeUnknownOption(PatchBody)(new TextDecoder().decode(request.body.body)).pipe(
      Option.match({ onNone: () => [], onSome: (body) => body.rrsets.map((rrset) => rrset.name) })
    )
    : []

/** Node's HttpClient, noting the rrset names of every PATCH it sends on to PowerDNS. */
const recordingPatches = (patches: Array<ReadonlyArray<string>>) =>
  Layer.effect(
    HttpClient.HttpClient,
    Effect.map(HttpClient.HttpClient, (client) =>
      HttpClient.tapRequest(client, (request) =>
        Effect.sync(() => {
          if (request.method === "PATCH") patches.push(rrsetNames(request))
        })))
  ).pipe(Layer.provide(NodeHttpClient.layer))

/** Someone else's CNAME at `name`, put there through PowerDNS's API: PowerDNS refuses an A record beside it (422). */
const putCname = (name: string) =>
  Effect.flatMap(RealPowerDns, (pdns) =>
    Effect.promise(() =>
      fetch(`${pdns.apiUrl}/api/v1/servers/localhost/zones/domain.local.`, {
        method: "PATCH",
        headers: { "X-API-Key": "test-key", "content-type": "application/json" },
        body: JSON.stringify({
          rrsets: [{
            name,
            type: "CNAME",
            ttl: 60,
            changetype: "REPLACE",
            records: [{ content: "elsewhere.domain.local.", disabled: false }]
          }]
        })
      }).then((response) => expect(response.status).toBe(204))
    ))

const orgRecords = Effect.gen(function*() {
  const pdns = yield* RealPowerDns
  const records = yield* listRecords(pdns)
  return new Set(records.filter((r) => r.type === "A" && r.name.startsWith("org-")).map((r) => r.name))
})

layer(Layer.provideMerge(DnsLive, RealPowerDnsLive), { excludeTestServices: true, timeout: 60_000 })(
  "PowerDNS (real, SQLite backend)",
  (it) => {
    it.effect("48 concurrent upserts and removes all succeed (shared PATCHes, no 'database is locked')", () =>
      Effect.gen(function*() {
        const dns = yield* Dns
        const orgs = Array.from({ length: 48 }, () => randomUUID() as OrganizationId)
        yield* Effect.forEach(orgs, dns.upsert, { concurrency: "unbounded" })
        const present = yield* orgRecords
        for (const org of orgs) expect(present.has(`org-${org}.domain.local.`)).toBe(true)
        expect(new Set(yield* dns.listOrgRecords)).toEqual(new Set(orgs))
        yield* Effect.forEach(orgs, dns.remove, { concurrency: "unbounded" })
        expect((yield* orgRecords).size).toBe(0)
        // Removing again is a no-op (PowerDNS answers 204 for a missing rrset).
        yield* dns.remove(orgs[0]!)
      }))

    it.effect("PowerDNS down: the change fails with a DnsError naming the operation", () =>
      Effect.gen(function*() {
        const dns = yield* Dns
        const pdns = yield* RealPowerDns
        yield* pdns.stop
        const error = yield* dns.upsert(randomUUID() as OrganizationId).pipe(Effect.flip, Effect.ensuring(Effect.orDie(pdns.start)))
        expect(error._tag).toBe("DnsError")
        expect(error.operation).toBe("upsert")
      }))

    it.effect("a change PowerDNS refuses: the error says what PowerDNS said, and that nothing changed", () =>
      Effect.gen(function*() {
        const dns = yield* Dns
        const org = randomUUID() as OrganizationId
        yield* putCname(`org-${org}.domain.local.`)
        const error = yield* dns.upsert(org).pipe(Effect.flip)
        expect(error.noEffect).toBe(true)
        expect(error.message).toMatch(/^PowerDNS upsert: HTTP 422: RRset org-.* IN A: Conflicts with pre-existing RRset/)
        expect(yield* orgRecords).not.toContain(`org-${org}.domain.local.`)
      }))

    it.effect("one org's conflict among concurrent changes fails that org alone: its batch is split", () => {
      const patches: Array<ReadonlyArray<string>> = []
      return Effect.gen(function*() {
        const dns = yield* Dns
        const name = (org: OrganizationId) => `org-${org}.domain.local.`
        const conflicted = randomUUID() as OrganizationId
        yield* putCname(name(conflicted))
        const removed = Array.from({ length: 3 }, () => randomUUID() as OrganizationId)
        yield* Effect.forEach(removed, dns.upsert, { concurrency: "unbounded" })
        const added = Array.from({ length: 10 }, () => randomUUID() as OrganizationId)
        patches.length = 0

        const [outcome, ...others] = yield* Effect.all(
          [dns.upsert(conflicted), ...added.map(dns.upsert), ...removed.map(dns.remove)].map(Effect.either),
          { concurrency: "unbounded" }
        )

        // The conflicting change did share a PATCH with others, and was then refused alone.
        const withIt = patches.filter((names) => names.includes(name(conflicted)))
        expect(withIt[0]?.length).toBeGreaterThan(1)
        expect(withIt.at(-1)).toEqual([name(conflicted)])
        const error = outcome !== undefined && Either.isLeft(outcome) ? outcome.left : undefined
        expect(error?.message).toMatch(
          new RegExp(`^PowerDNS upsert: HTTP 422: RRset ${name(conflicted).replaceAll(".", "\\.")} IN A: Conflicts with pre-existing RRset`)
        )
        expect(error?.noEffect).toBe(true)
        expect(others.filter(Either.isLeft).map((failure) => failure.left.message)).toEqual([])
        const present = yield* orgRecords
        for (const org of added) expect(present.has(name(org))).toBe(true)
        for (const org of removed) expect(present.has(name(org))).toBe(false)
        expect(present.has(name(conflicted))).toBe(false)
        yield* Effect.forEach(added, dns.remove, { concurrency: "unbounded" })
      }).pipe(Effect.provide(dnsLayer(recordingPatches(patches))))
    })

    it.effect("the stack's zone is made without API rectify; the service warns at start-up about a zone that has it on", () =>
      Effect.gen(function*() {
        const pdns = yield* RealPowerDns
        const zoneUrl = `${pdns.apiUrl}/api/v1/servers/localhost/zones/domain.local.`
        const zone = (method: "GET" | "PUT", body?: unknown) =>
          Effect.promise(() =>
            fetch(method === "GET" ? `${zoneUrl}?rrsets=false` : zoneUrl, {
              method,
              headers: { "X-API-Key": "test-key", "content-type": "application/json" },
              ...(body === undefined ? {} : { body: JSON.stringify(body) })
            }).then(async (response) => ({ status: response.status, json: response.status === 200 ? await response.json() : undefined }))
          )
        expect((yield* zone("GET")).json).toMatchObject({ api_rectify: false, dnssec: false })

        /** The warnings a fresh Dns layer logs at start-up (its look at the zone is forked: given a moment). */
        const startupWarnings = Effect.gen(function*() {
          const lines: Array<string> = []
          const capture = Logger.replace(
            Logger.defaultLogger,
            Logger.make(({ logLevel, message }) => {
              if (logLevel._tag === "Warning") lines.push(String(Array.isArray(message) ? message[0] : message))
            })
          )
          yield* Effect.scoped(
            Effect.gen(function*() {
              yield* Layer.build(DnsLive)
              yield* pollUntil(Effect.sync(() => lines.length), (n) => n > 0, { withinMs: 1000 })
            })
          ).pipe(Effect.provide(capture))
          return lines
        })
        expect(yield* startupWarnings).toEqual([])
        expect((yield* zone("PUT", { api_rectify: true })).status).toBe(204)
        const warned = yield* startupWarnings.pipe(Effect.ensuring(zone("PUT", { api_rectify: false })))
        expect(warned).toHaveLength(1)
        expect(warned[0]).toContain("API-RECTIFY")
        expect(warned[0]).toContain("pdnsutil set-meta domain.local. API-RECTIFY 0")
      }))
  }
)
