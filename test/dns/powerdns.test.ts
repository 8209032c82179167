import { NodeContext } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Redacted } from "effect"
import { randomUUID } from "node:crypto"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import path from "node:path"
import { listRecords, type PowerDnsHandle, startPowerDns } from "../../src/dev/PowerDnsProcess.ts"
import { Settings } from "../../src/config.ts"
import { Dns, DnsPowerDns } from "../../src/dns/Dns.ts"
import type { OrganizationId } from "../../src/domain/ids.ts"
import { configFrom } from "../support/stack.ts"

class RealPowerDns extends Context.Tag("test/RealPowerDns")<RealPowerDns, PowerDnsHandle>() {}

const RealPowerDnsLive = Layer.scoped(
  RealPowerDns,
  Effect.suspend(() =>
    startPowerDns({
      dir: mkdtempSync(path.join(tmpdir(), "ga-pdns-")),
      zone: "domain.local.",
      apiKey: Redacted.make("test-key")
    })
  )
).pipe(Layer.provide(NodeContext.layer))

const dnsLayer = (env: Readonly<Record<string, string>> = {}) =>
  Layer.unwrapEffect(
    Effect.map(RealPowerDns, (pdns) =>
      DnsPowerDns.pipe(Layer.provide(Settings.Default), Layer.provide(configFrom({
        PDNS_API_URL: pdns.apiUrl,
        PDNS_API_KEY: "test-key",
        DOMAIN: "domain.local",
        ...env
      }))))
  )

const DnsLive = dnsLayer()

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
        const pdns = yield* RealPowerDns
        const org = randomUUID() as OrganizationId
        // Someone else's CNAME at the org's name: PowerDNS refuses an A record beside it (422).
        yield* Effect.promise(() =>
          fetch(`${pdns.apiUrl}/api/v1/servers/localhost/zones/domain.local.`, {
            method: "PATCH",
            headers: { "X-API-Key": "test-key", "content-type": "application/json" },
            body: JSON.stringify({
              rrsets: [{
                name: `org-${org}.domain.local.`,
                type: "CNAME",
                ttl: 60,
                changetype: "REPLACE",
                records: [{ content: "elsewhere.domain.local.", disabled: false }]
              }]
            })
          }).then((response) => expect(response.status).toBe(204))
        )
        const error = yield* dns.upsert(org).pipe(Effect.flip)
        expect(error.noEffect).toBe(true)
        expect(error.message).toMatch(/^PowerDNS upsert: HTTP 422: RRset org-.* IN A: Conflicts with pre-existing RRset/)
        expect(yield* orgRecords).not.toContain(`org-${org}.domain.local.`)
      }))
  }
)
