import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Redacted } from "effect"
import { ApiToken, NginxConfig, PowerDnsConfig, routeApiUrl, Settings } from "../../src/config.ts"

const withEnv = (env: Record<string, string>) => Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

const settingsFrom = (env: Record<string, string>) =>
  Effect.gen(function*() {
    return yield* Settings
  }).pipe(Effect.provide(Settings.Default), withEnv(env), Effect.either)

describe("configuration", () => {
  it.effect("API_TOKEN: empty or shorter than 16 characters stops the service with what to fix", () =>
    Effect.gen(function*() {
      for (const token of ["", "short", "fifteen-chars!!"]) {
        const parsed = yield* Effect.either(ApiToken).pipe(withEnv({ API_TOKEN: token }))
        expect(Either.isLeft(parsed), `API_TOKEN=${JSON.stringify(token)}`).toBe(true)
        if (Either.isLeft(parsed)) expect(String(parsed.left)).toMatch(/API_TOKEN must be at least 16 characters/)
      }
      const missing = yield* Effect.either(ApiToken).pipe(withEnv({}))
      expect(Either.isLeft(missing)).toBe(true)
      const good = yield* ApiToken.pipe(withEnv({ API_TOKEN: "sixteen-chars!!!" }))
      expect(Redacted.value(good)).toBe("sixteen-chars!!!")
    }))

  it.effect("DOMAIN is read once, lowercased and without its trailing dot; a bad one is refused", () =>
    Effect.gen(function*() {
      const settings = yield* settingsFrom({ DOMAIN: "Example.COM." })
      expect(Either.map(settings, (s) => s.domain)).toEqual(Either.right("example.com"))
      const bad = yield* settingsFrom({ DOMAIN: "not a domain" })
      expect(Either.isLeft(bad) && String(bad.left)).toMatch(/DOMAIN must be a DNS name/)
    }))

  it.effect("PDNS_ZONE must contain DOMAIN (default: DOMAIN's own zone); DNS_RECORD_IP must be an IPv4 address", () =>
    Effect.gen(function*() {
      const base = { PDNS_API_URL: "http://127.0.0.1:8081", PDNS_API_KEY: "key", DOMAIN: "gw.example.com" }
      const zoneOf = (env: Record<string, string>) => Effect.either(Effect.map(PowerDnsConfig, (c) => c.zone)).pipe(withEnv({ ...base, ...env }))
      expect(yield* zoneOf({})).toEqual(Either.right("gw.example.com."))
      expect(yield* zoneOf({ PDNS_ZONE: "Example.com." })).toEqual(Either.right("example.com."))
      expect(yield* zoneOf({ PDNS_ZONE: "gw.example.com" })).toEqual(Either.right("gw.example.com."))
      for (const zone of ["other.com.", "ample.com", "x.gw.example.com."]) {
        const refused = yield* zoneOf({ PDNS_ZONE: zone })
        expect(Either.isLeft(refused) && String(refused.left), zone).toMatch(/PDNS_ZONE \(.*\) must contain DOMAIN \(gw\.example\.com\)/)
      }
      const badIp = yield* Effect.either(PowerDnsConfig).pipe(withEnv({ ...base, DNS_RECORD_IP: "gateway.example.com" }))
      expect(Either.isLeft(badIp) && String(badIp.left)).toMatch(/DNS_RECORD_IP must be an IPv4 address/)
    }))

  it.effect("timeouts must be positive; the derived limits follow from them", () =>
    Effect.gen(function*() {
      const zero = yield* settingsFrom({ STEP_TIMEOUT_MS: "0" })
      expect(Either.isLeft(zero) && String(zero.left)).toMatch(/STEP_TIMEOUT_MS must be a positive number/)
      const settings = yield* settingsFrom({ STEP_TIMEOUT_MS: "1000", UNDO_TIMEOUT_MS: "100" })
      if (Either.isLeft(settings)) return expect.fail(String(settings.left))
      // 5 steps x (1000 + 2 journal rows x 100) + the final transition (100), then 5 undos x 3 x 100;
      // an outside call gets half the shorter timeout, 100 ms at least.
      expect(settings.right.limits).toEqual({
        outsideCallMs: 100,
        startBoundMs: 6100,
        teardownBoundMs: 1500,
        recoveryDeadlineMs: 7600,
        settleWaitMs: 7600
      })
    }))

  it.effect("nginx routing: lua by default; a bad mode, a route API off loopback or a tiny table is refused", () =>
    Effect.gen(function*() {
      const nginxFrom = (env: Record<string, string>) => Effect.either(NginxConfig).pipe(withEnv({ NGINX_CONF_DIR: "/etc/x", ...env }))
      const defaults = yield* nginxFrom({})
      expect(Either.map(defaults, (c) => [c.routing, c.routeApiListen, c.routeTableSize])).toEqual(
        Either.right(["lua", "127.0.0.1:8089", "64m"])
      )
      const mode = yield* nginxFrom({ NGINX_ROUTING: "files" })
      expect(Either.isLeft(mode) && String(mode.left)).toMatch(/NGINX_ROUTING/)
      for (const listen of ["0.0.0.0:8089", "10.0.0.1:8089", "example.com:80"]) {
        const refused = yield* nginxFrom({ NGINX_ROUTE_API_LISTEN: listen })
        expect(Either.isLeft(refused) && String(refused.left), listen).toMatch(/loopback/)
      }
      const tiny = yield* nginxFrom({ NGINX_ROUTE_TABLE_SIZE: "64k" })
      expect(Either.isLeft(tiny) && String(tiny.left)).toMatch(/NGINX_ROUTE_TABLE_SIZE must be .* at least 128k/)
      expect(Either.isRight(yield* nginxFrom({ NGINX_ROUTE_TABLE_SIZE: "512k", NGINX_ROUTING: "reload" }))).toBe(true)
      expect([routeApiUrl("8089"), routeApiUrl("localhost:9"), routeApiUrl("[::1]:9")]).toEqual([
        "http://127.0.0.1:8089",
        "http://127.0.0.1:9",
        "http://[::1]:9"
      ])
    }))
})
