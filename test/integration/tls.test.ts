// HTTPS and WSS for org hostnames (NGINX_TLS_CERT, NGINX_TLS_KEY, NGINX_TLS_LISTEN, NGINX_HTTP):
// the service as a child process over a real nginx with a dev CA's wildcard certificate. An org
// reached by its name (SNI) over HTTPS/1.1 and HTTP/2, a WSS upgrade, a stop that ends them, a
// renewal picked up with open connections kept, plain HTTP redirected, and bad certificates
// refused at start-up with the file named.
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { randomUUID, X509Certificate } from "node:crypto"
import { readFileSync, writeFileSync } from "node:fs"
import * as http2 from "node:http2"
import path from "node:path"
import { signCertificate } from "../../src/dev/certificate.ts"
import type { LocalStack } from "../../src/dev/stack.ts"
import { READY_PATH } from "../../src/nginx/config.ts"
import { awaitEdgeState, startRemoteEdge } from "../support/edges.ts"
import { upgradeWebSocket, type WebSocketConnection } from "../support/longLived.ts"
import { awaitThat, pollUntil } from "../support/poll.ts"
import { gatewayAnswerOf, hostnameOf, rawGet } from "../support/rawHttp.ts"
import { nginxPids, registerGateways, request, type ServiceProcess, startGateway, startServer, stopGateway } from "../support/server.ts"
import { Stack, StackLive } from "../support/stack.ts"

const certificateOf = (stack: LocalStack) => {
  if (stack.certificate === undefined) throw new Error("the stack was started without TLS")
  return stack.certificate
}
const caOf = (stack: LocalStack) => readFileSync(certificateOf(stack).caPath, "utf8")
const fingerprintOf = (file: string) => new X509Certificate(readFileSync(file)).fingerprint256

const httpsGet = (stack: LocalStack, org: string, pathname = "/hello") =>
  rawGet({ port: stack.nginx.tlsPort, path: pathname, headers: { host: hostnameOf(stack, org) }, tls: { ca: caOf(stack) } })

/** One GET over HTTP/2 (ALPN h2) for the org: the protocol negotiated, the status and the body. */
const h2Get = (stack: LocalStack, org: string, pathname: string) =>
  Effect.async<{ readonly protocol: string | false | undefined; readonly status: number; readonly body: string }, Error>((resume) => {
    const host = hostnameOf(stack, org)
    const session = http2.connect(`https://127.0.0.1:${stack.nginx.tlsPort}`, { ca: caOf(stack), servername: host })
    session.on("error", (error) => resume(Effect.fail(error)))
    const stream = session.request({ ":path": pathname, ":authority": host })
    let status = 0
    const chunks: Array<Buffer> = []
    stream.on("response", (headers) => {
      status = Number(headers[":status"])
    })
    stream.on("data", (chunk: Buffer) => chunks.push(chunk))
    stream.on("end", () => {
      const protocol = session.alpnProtocol
      session.close()
      resume(Effect.succeed({ protocol, status, body: Buffer.concat(chunks).toString("utf8") }))
    })
    stream.on("error", (error) => resume(Effect.fail(error)))
    stream.end()
    return Effect.sync(() => session.destroy())
  })

/**
 * `GET /stream` (server-sent events) over one HTTP/2 connection, left open: the events received
 * so far, and whether the stream ended. Closed with the Scope.
 */
const openH2Stream = (stack: LocalStack, org: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const host = hostnameOf(stack, org)
      const session = http2.connect(`https://127.0.0.1:${stack.nginx.tlsPort}`, { ca: caOf(stack), servername: host })
      const events: Array<string> = []
      let ended = false
      session.on("error", () => {
        ended = true
      })
      const stream = session.request({ ":path": "/stream", ":authority": host, accept: "text/event-stream" })
      stream.setEncoding("utf8")
      stream.on("data", (text: string) => {
        for (const line of text.split("\n")) if (line.startsWith("data: ")) events.push(line.slice(6))
      })
      const end = () => {
        ended = true
      }
      stream.on("end", end)
      stream.on("close", end)
      stream.on("error", end)
      stream.end()
      return { session, events, ended: () => ended }
    }),
    ({ session }) => Effect.sync(() => session.destroy())
  )

const openWss = (stack: LocalStack, org: string) =>
  upgradeWebSocket({ port: stack.nginx.tlsPort, host: hostnameOf(stack, org), path: "/ws", timeoutMs: 5000, tls: { ca: caOf(stack) } }).pipe(
    Effect.flatMap((result) =>
      result._tag === "Upgraded" ? Effect.succeed(result.connection) : Effect.fail(new Error(`WSS not upgraded: ${JSON.stringify(result)}`))
    ),
    Effect.flatMap((connection) => Effect.acquireRelease(Effect.succeed(connection), (c) => Effect.sync(() => c.destroy())))
  )

/** Sends `text` and waits for the gateway's echo of it. */
const echoes = (connection: WebSocketConnection, text: string) =>
  Effect.gen(function*() {
    expect(connection.send(text)).toBe(true)
    yield* awaitThat(`the echo of ${text}`, () => connection.texts.some((t) => t.includes(`"echo":"${text}"`)), { withinMs: 5000 })
  })

const startedServer = (stack: LocalStack, name: string, env: Readonly<Record<string, string>> = {}) =>
  Effect.gen(function*() {
    const server = yield* startServer(stack, { name, env })
    yield* registerGateways(server, stack)
    return server
  })

const startOrg = (server: ServiceProcess, org: string) =>
  Effect.gen(function*() {
    const answer = yield* startGateway(server, org)
    expect(answer.status, answer.text).toBe(200)
    return answer.json as { readonly allocation_id: string; readonly gateway_id: string }
  })

layer(StackLive({ tls: true }), { timeout: 180_000, excludeTestServices: true })("HTTPS and WSS for org hostnames", (it) => {
  it.effect("an org is served by its name over HTTPS (HTTP/1.1 and HTTP/2) and WSS, and plain HTTP alike; a stop ends all of it", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const server = yield* startedServer(stack, "tls-serve")
      const org = randomUUID()
      const started = yield* startOrg(server, org)

      // HTTPS by SNI: the certificate is the wildcard one, and the org's own gateway answers with its allocation.
      const https = yield* httpsGet(stack, org)
      expect(https.status, https.body).toBe(200)
      expect(https.certificate).toBe(fingerprintOf(certificateOf(stack).certPath))
      expect(gatewayAnswerOf(https.body)?.allocation).toBe(started.allocation_id)
      // HTTP/2 for browsers.
      const h2 = yield* h2Get(stack, org, "/hello")
      expect(h2.protocol).toBe("h2")
      expect(h2.status).toBe(200)
      expect(gatewayAnswerOf(h2.body)?.allocation).toBe(started.allocation_id)
      // NGINX_HTTP=serve: the plain listener serves the org too.
      const plain = yield* rawGet({ port: stack.nginx.listenPort, path: "/hello", headers: { host: hostnameOf(stack, org) } })
      expect(plain.status).toBe(200)
      // An org with no allocation: nginx's 404 over HTTPS, never another org's gateway.
      expect((yield* httpsGet(stack, randomUUID())).status).toBe(404)

      // WSS through nginx to the org's gateway, then the stop: the release closes it, HTTPS answers 404.
      const wss = yield* openWss(stack, org)
      yield* echoes(wss, "before-stop")
      expect(wss.texts[0]).toContain(started.allocation_id)
      const stopped = yield* stopGateway(server, org)
      expect(stopped.status, stopped.text).toBe(200)
      yield* awaitThat("the WSS connection closed by the release", () => wss.isClosed(), { withinMs: 5000 })
      expect((yield* httpsGet(stack, org)).status).toBe(404)

      // How long the served certificate has left, for alerts (the dev certificate: 397 days).
      const metrics = yield* request(server, "GET", "/metrics")
      const left = Number(/^gateway_allocator_tls_certificate_expiry_seconds(?:\{[^}]*\})? (\d+)/m.exec(metrics.text)?.[1])
      expect(left).toBeGreaterThan(390 * 24 * 3600)
      expect(left).toBeLessThanOrEqual(397 * 24 * 3600)
    }).pipe(Effect.scoped))

  it.effect("a renewed certificate is served within seconds with open WSS and HTTP/2 streams kept; nothing reloads while it is unchanged, nor for a pair that does not fit", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const certificate = certificateOf(stack)
      const server = yield* startedServer(stack, "tls-renew")
      const org = randomUUID()
      yield* startOrg(server, org)
      const wss = yield* openWss(stack, org)
      const events = yield* openH2Stream(stack, org)
      yield* awaitThat("the first server-sent event over HTTP/2", () => events.events.length > 0, { withinMs: 5000 })

      // Unchanged files: more than one check interval (5 s) passes with the same nginx processes.
      const workers = nginxPids(stack)
      yield* Effect.sleep("6 seconds")
      expect(nginxPids(stack)).toEqual(workers)

      // A certificate whose key is another one's: refused, nginx keeps serving the current one.
      const previous = fingerprintOf(certificate.certPath)
      const key = readFileSync(certificate.keyPath)
      const other = yield* signCertificate({ dir: path.dirname(certificate.certPath), domain: "domain.local", name: "other" })
      writeFileSync(certificate.keyPath, readFileSync(other.keyPath))
      yield* awaitThat("the service's warning about the pair that does not fit", () => readFileSync(server.logFile, "utf8").includes("changed on disk but is not served"), { withinMs: 10_000 })
      expect(readFileSync(server.logFile, "utf8")).toContain(`NGINX_TLS_KEY (${certificate.keyPath}) is not the key of the certificate`)
      expect(nginxPids(stack)).toEqual(workers)
      expect((yield* httpsGet(stack, org)).certificate).toBe(previous)
      writeFileSync(certificate.keyPath, key)

      // The renewal: a new certificate and key in place; new connections get it within seconds.
      const renewed = yield* signCertificate({ dir: path.dirname(certificate.certPath), domain: "domain.local" })
      const fingerprint = fingerprintOf(renewed.certPath)
      expect(fingerprint).not.toBe(previous)
      const served = yield* pollUntil(
        httpsGet(stack, org),
        (answer) => answer.status === 200 && answer.certificate === fingerprint,
        { withinMs: 15_000, spacingMs: 200 }
      )
      expect(served.certificate).toBe(fingerprint)
      // The connections opened before it: still up, still answered by the org's gateway.
      yield* echoes(wss, "after-renewal")
      expect(wss.isClosed()).toBe(false)
      const seen = events.events.length
      yield* awaitThat("more server-sent events after the reload", () => events.events.length > seen, { withinMs: 5000 })
      expect(events.ended()).toBe(false)
      expect(readFileSync(server.logFile, "utf8")).toContain("the TLS certificate changed on disk")
      expect((yield* stopGateway(server, org)).status).toBe(200)
    }).pipe(Effect.scoped))

  it.effect("NGINX_HTTP=redirect: plain HTTP answers 308 to the same URL over HTTPS; the route probe and readiness stay plain, so starts work", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const server = yield* startedServer(stack, "tls-redirect", { NGINX_HTTP: "redirect" })
      const org = randomUUID()
      const started = yield* startOrg(server, org)
      const host = hostnameOf(stack, org)
      const plain = yield* rawGet({ port: stack.nginx.listenPort, path: "/hello?x=1", headers: { host } })
      expect(plain.status).toBe(308)
      expect(plain.headers.location).toBe(`https://${host}:${stack.nginx.tlsPort}/hello?x=1`)
      expect(gatewayAnswerOf(plain.body)).toBeUndefined()
      const ready = yield* rawGet({ port: stack.nginx.listenPort, path: READY_PATH, headers: { host } })
      expect(ready.status).toBe(200)
      const https = yield* httpsGet(stack, org)
      expect(gatewayAnswerOf(https.body)?.allocation).toBe(started.allocation_id)
      expect((yield* stopGateway(server, org)).status).toBe(200)
    }).pipe(Effect.scoped))

  it.effect("a remote edge's file serves HTTPS too, on its own address with the TLS port and the same certificate", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const server = yield* startedServer(stack, "tls-edge")
      // On 127.0.0.2, so that it can take the stack's HTTPS port beside the local edge (on 127.0.0.1).
      const edge = yield* startRemoteEdge(server, "edge-tls", { address: "127.0.0.2" })
      yield* awaitEdgeState(server, edge.edgeId, "ready")
      const org = randomUUID()
      const started = yield* startOrg(server, org)
      const answer = yield* rawGet({
        address: "127.0.0.2",
        port: stack.nginx.tlsPort,
        path: "/hello",
        headers: { host: hostnameOf(stack, org) },
        tls: { ca: caOf(stack) }
      })
      expect(answer.status, answer.body).toBe(200)
      expect(answer.certificate).toBe(fingerprintOf(certificateOf(stack).certPath))
      expect(gatewayAnswerOf(answer.body)?.allocation).toBe(started.allocation_id)
      expect((yield* stopGateway(server, org)).status).toBe(200)
    }).pipe(Effect.scoped))

  it.effect("a start-up with a certificate nginx could not serve stops, naming the file (each refusal: test/nginx/tlsCertificate.test.ts)", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      const dir = path.dirname(certificateOf(stack).certPath)
      const expired = yield* signCertificate({ dir, domain: "domain.local", name: "expired", days: 0 })
      const good = certificateOf(stack)
      const cases = [
        { env: { NGINX_TLS_KEY: expired.keyPath }, message: `NGINX_TLS_KEY (${expired.keyPath}) is not the key of the certificate in ${good.certPath}` },
        { env: { NGINX_TLS_CERT: expired.certPath, NGINX_TLS_KEY: expired.keyPath }, message: `NGINX_TLS_CERT (${expired.certPath}) expired on` }
      ]
      for (const [i, { env, message }] of cases.entries()) {
        const refused = yield* startServer(stack, { name: `tls-bad-${i}`, env, startTimeoutMs: 30_000 }).pipe(Effect.flip)
        expect(refused.message).toContain(message)
      }
    }).pipe(Effect.scoped))
})
