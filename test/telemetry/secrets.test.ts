// Secrets never leave the service: the real service (a child process over the real nginx, in
// lua mode, whose route API and probes carry the edge secret in a header) exports its traces over
// OTLP/HTTP to a sink this test runs; after starts and stops, no exported byte holds the edge
// secret, the API token or the PowerDNS key, while the header itself is there, redacted. And
// every file that holds the edge secret is readable by its owner only.
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { randomUUID } from "node:crypto"
import { readFileSync, statSync } from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import path from "node:path"
import { EDGE_FILE, PROBE_SECRET_HEADER } from "../../src/nginx/config.ts"
import { registerGateways, startGateway, startServer, stopGateway } from "../support/server.ts"
import { Stack, StackLive } from "../support/stack.ts"

/** An OTLP/HTTP receiver: keeps every request body it is sent. */
const otlpSink = Effect.acquireRelease(
  Effect.async<{ readonly url: string; readonly bodies: Array<string>; readonly server: http.Server }>((resume) => {
    const bodies: Array<string> = []
    const server = http.createServer((request, response) => {
      const chunks: Array<Buffer> = []
      request.on("data", (chunk: Buffer) => chunks.push(chunk))
      request.on("end", () => {
        bodies.push(Buffer.concat(chunks).toString("utf8"))
        response.writeHead(200, { "content-type": "application/json" })
        response.end("{}")
      })
    })
    server.listen(0, "127.0.0.1", () =>
      resume(Effect.succeed({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, bodies, server })))
  }),
  (sink) =>
    Effect.async<void>((resume) => {
      sink.server.close(() => resume(Effect.void))
    })
)

layer(StackLive({ gateways: 1 }), { timeout: 120_000, excludeTestServices: true })("secrets", (it) => {
  it.scoped("no exported span carries the edge secret, the API token or the PowerDNS key; the files holding the secret are 0600", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const sink = yield* otlpSink
      const server = yield* startServer(stack, {
        name: "secrets",
        env: { OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_METRIC_EXPORT_INTERVAL: "600000" }
      })
      yield* registerGateways(server, stack)
      for (let i = 0; i < 3; i++) {
        const org = randomUUID()
        expect((yield* startGateway(server, org)).status).toBe(200)
        expect((yield* stopGateway(server, org)).status).toBe(200)
      }
      // A graceful stop flushes the batch span processor.
      yield* server.stop()

      const exported = sink.bodies.join("\n")
      expect(exported).toContain("Nginx.writeRoute")
      // The header is recorded, its value is not.
      expect(exported).toContain(`http.request.header.${PROBE_SECRET_HEADER}`)
      const edge = JSON.parse(readFileSync(path.join(stack.nginx.confDir, EDGE_FILE), "utf8")) as { probeSecret: string }
      expect(edge.probeSecret).toMatch(/^[0-9a-f]{32,}$/)
      expect(exported).not.toContain(edge.probeSecret)
      expect(exported).not.toContain(stack.apiToken)
      expect(exported).not.toContain(stack.env["PDNS_API_KEY"] ?? "(no key)")

      for (const file of [EDGE_FILE, "gateway-allocator.conf"]) {
        const mode = statSync(path.join(stack.nginx.confDir, file)).mode & 0o777
        expect({ file, mode: mode.toString(8) }).toEqual({ file, mode: "600" })
      }
      expect(readFileSync(path.join(stack.nginx.confDir, "gateway-allocator.conf"), "utf8")).toContain(edge.probeSecret)
    }))
})
