// POST /pool/gateways and upstream identity: every spelling of a registered gateway process is a
// 409, and what is no gateway's TCP address is a 400 that says why. handlers.test.ts's in-memory
// pool does not check upstreams (only Postgres's unique index does), so this suite serves the
// real HttpApi (HttpAppLive over NodeHttpServer.layerTest) with the real GatewayStore over an
// embedded Postgres, the other outside systems in memory.
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel } from "effect"
import { makeServices } from "../../src/app.ts"
import { DatabaseLive } from "../../src/db/Database.ts"
import { HttpAppLive } from "../../src/http/server.ts"
import { GatewayStore } from "../../src/pool/GatewayStore.ts"
import { configWithDataDir } from "../support/stack.ts"
import { OutsideTest } from "../support/TestLayers.ts"

const API_TOKEN = "upstreams-http-test-token"

/**
 * HttpAppLive over makeServices with the in-memory outside systems, the pool replaced by the real
 * one (the later layer of a merge wins) over an embedded Postgres in a fresh DATA_DIR.
 */
const Served = Layer.unwrapEffect(
  Effect.sync(() => {
    const config = configWithDataDir("ga-upstreams-http-", {
      API_TOKEN,
      RECONCILE_INTERVAL_MS: "3600000",
      GATEWAY_HEALTH_INTERVAL_MS: "3600000"
    })
    const outside = Layer.merge(OutsideTest, GatewayStore.Default.pipe(Layer.provide(DatabaseLive)))
    return HttpAppLive.pipe(
      Layer.provideMerge(NodeHttpServer.layerTest),
      Layer.provideMerge(makeServices(outside)),
      Layer.provide(config),
      Layer.provide(Logger.minimumLogLevel(LogLevel.Error))
    )
  })
)

/** POST /pool/gateways with a raw body: the typed client would only send upstreams in their normal form. */
const addGateway = (name: string, upstream: string) =>
  Effect.flatMap(HttpClient.HttpClient, (http) =>
    http.execute(
      HttpClientRequest.post("/pool/gateways").pipe(
        HttpClientRequest.bearerToken(API_TOKEN),
        HttpClientRequest.bodyUnsafeJson({ name, upstream })
      )
    )).pipe(Effect.flatMap((response) => Effect.map(response.text, (text) => ({ status: response.status, text }))))

layer(Served, { excludeTestServices: true, timeout: 120_000 })("POST /pool/gateways: upstream identity", (it) => {
  it.effect("an alias of a registered upstream is a 409; the refused spellings are a 400 saying why", () =>
    Effect.gen(function*() {
      const added = yield* addGateway("gw-9001", "127.0.0.1:9001")
      expect(added.status).toBe(201)
      expect(JSON.parse(added.text)).toMatchObject({ name: "gw-9001", upstream: "127.0.0.1:9001" })

      const aliases = ["127.0.0.1:09001", "[::ffff:127.0.0.1]:9001", "[::FFFF:7F00:1]:9001", "127.000.000.001:9001", "127.0.0.1.:9001"]
      for (const [i, alias] of aliases.entries()) {
        const answer = yield* addGateway(`alias-${i}`, alias)
        expect({ alias, status: answer.status }).toEqual({ alias, status: 409 })
        expect(answer.text).toContain("upstream 127.0.0.1:9001 is in the pool already")
      }

      for (
        const [refused, why] of [
          ["0.0.0.0:9001", "0.0.0.0 is not a gateway's address"],
          ["[::]:9001", "unspecified address"],
          ["[::127.0.0.1]:9001", "IPv4-compatible"],
          ["[fe80::1%eth0]:9001", "zone ids"],
          ["unix:9001", "unix socket path"],
          ["UNIX:/tmp/x", "unix socket path"],
          [":9001", "the host is missing"],
          ["127.0.0.1", "the port is missing"]
        ] as const
      ) {
        const answer = yield* addGateway("refused", refused)
        expect({ refused, status: answer.status }).toEqual({ refused, status: 400 })
        expect(answer.text).toContain(why)
      }

      // The pool holds the process once, under its one spelling.
      const pool = yield* Effect.flatMap(GatewayStore, (gateways) => gateways.listGateways())
      expect(pool.map((g) => [g.name, g.upstream])).toEqual([["gw-9001", "127.0.0.1:9001"]])

      // Another spelling of a new address is stored in the normal one.
      const v6 = yield* addGateway("gw-v6", "[2001:DB8:0:0:1:0:0:1]:0443")
      expect(v6.status).toBe(201)
      expect(JSON.parse(v6.text)).toMatchObject({ upstream: "[2001:db8::1:0:0:1]:443" })
    }))
})
