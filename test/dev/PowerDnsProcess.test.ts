import { describe, expect, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import * as dns from "node:dns"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { listRecords, type PowerDnsHandle, startPowerDns } from "../../src/dev/PowerDnsProcess.ts"

const tempDir = Effect.acquireRelease(
  Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "pdns-"))),
  (dir) => Effect.promise(() => fs.rm(dir, { recursive: true, force: true }))
)

const apiKey = Redacted.make("test-api-key")

const patchA = (pdns: PowerDnsHandle, name: string, ip: string) =>
  Effect.tryPromise(() =>
    fetch(`${pdns.apiUrl}/api/v1/servers/${pdns.serverId}/zones/${pdns.zone}`, {
      method: "PATCH",
      headers: { "X-API-Key": Redacted.value(pdns.apiKey), "Content-Type": "application/json" },
      body: JSON.stringify({
        rrsets: [{ name, type: "A", ttl: 60, changetype: "REPLACE", records: [{ content: ip, disabled: false }] }]
      })
    }).then((response) => response.status)
  )

const resolveA = (pdns: PowerDnsHandle, name: string) =>
  Effect.tryPromise(() => {
    const resolver = new dns.promises.Resolver({ timeout: 1000, tries: 1 })
    resolver.setServers([`127.0.0.1:${pdns.dnsPort}`])
    return resolver.resolve4(name)
  })

describe("PowerDnsProcess", () => {
  it.scopedLive("creates the zone; a PATCHed A record is listed and resolves over DNS", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const started = Date.now()
      const pdns = yield* startPowerDns({ dir, zone: "domain.local", apiKey })
      yield* Effect.log(`pdns start (schema + zone) took ${Date.now() - started} ms`)
      expect(pdns.zone).toBe("domain.local.")
      expect(pdns.apiUrl).toBe(`http://127.0.0.1:${pdns.apiPort}`)

      const before = yield* listRecords(pdns)
      expect(before.map((r) => r.type)).toContain("SOA")

      const name = "org-11111111-2222-3333-4444-555555555555.domain.local."
      expect(yield* patchA(pdns, name, "127.0.0.1")).toBe(204)
      const after = yield* listRecords(pdns)
      expect(after).toContainEqual({ name, type: "A", content: ["127.0.0.1"] })
      expect(yield* resolveA(pdns, name.slice(0, -1))).toEqual(["127.0.0.1"])
    }))

  it.scopedLive("stop makes the API unreachable; start brings it back with the zone intact", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const pdns = yield* startPowerDns({ dir, zone: "domain.local.", apiKey })
      const name = "org-a.domain.local."
      expect(yield* patchA(pdns, name, "127.0.0.2")).toBe(204)

      yield* pdns.stop
      expect(yield* pdns.isRunning).toBe(false)
      const down = yield* listRecords(pdns).pipe(Effect.either)
      expect(down._tag).toBe("Left")
      yield* pdns.stop // idempotent

      const restarted = Date.now()
      yield* pdns.start
      yield* Effect.log(`pdns restart took ${Date.now() - restarted} ms`)
      expect(yield* pdns.isRunning).toBe(true)
      expect(yield* listRecords(pdns)).toContainEqual({ name, type: "A", content: ["127.0.0.2"] })
      expect(yield* resolveA(pdns, "org-a.domain.local")).toEqual(["127.0.0.2"])
    }))

  it.scopedLive("a second start on the same directory replaces a server left running", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const leftover = yield* startPowerDns({ dir, zone: "domain.local.", apiKey })
      const replacement = yield* startPowerDns({ dir, zone: "domain.local.", apiKey })
      expect(yield* leftover.isRunning).toBe(false)
      expect((yield* listRecords(replacement)).map((r) => r.type)).toContain("SOA")
    }))
})
