// NGINX_TLS_* and NGINX_HTTP as the service reads them, and the server blocks they render: both
// routing modes, a remote edge's file, the certificate's digest in the local file only. That nginx
// takes these files and serves them is test/integration/tls.test.ts.
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Option } from "effect"
import { Settings, type TlsListener } from "../../src/config.ts"
import { renderEdgeConfig } from "../../src/edges/edgeConfig.ts"
import { renderMainConfig } from "../../src/nginx/config.ts"
import { renderLuaConfig } from "../../src/nginx/luaConfig.ts"
import type { TlsCertificate } from "../../src/nginx/tls.ts"

const settingsFrom = (env: Record<string, string>) =>
  Effect.gen(function*() {
    return yield* Settings
  }).pipe(
    Effect.provide(Settings.Default),
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))),
    Effect.either
  )

const listener: TlsListener = { certPath: "/etc/tls/wild.pem", keyPath: "/etc/tls/wild.key", listen: "443", redirect: false }
const certificate: TlsCertificate = { digest: "ab".repeat(32), notAfter: new Date("2027-03-01T00:00:00Z"), fingerprint: "AA:BB", ocsp: false }
const served = (tls: Partial<TlsListener> = {}, cert: Partial<TlsCertificate> = {}) => ({
  tls: { ...listener, ...tls },
  listen: tls.listen ?? listener.listen,
  certificate: { ...certificate, ...cert },
  stampDigest: true
})

const luaFile = (tls?: ReturnType<typeof served>) =>
  renderLuaConfig({
    domain: "domain.local",
    listen: "80",
    routeApiListen: "127.0.0.1:8089",
    tableSize: "1m",
    fenceTableSize: "1m",
    secret: "0".repeat(48),
    ...(tls === undefined ? {} : { tls })
  })

/** The server blocks of a file, each as its text. */
const serversOf = (text: string) => text.split(/^server \{$/m).slice(1).map((block) => `server {${block}`)

describe("HTTPS for org hostnames: configuration", () => {
  it.effect("TLS is off by default; the certificate and key go together; redirect needs them; paths are made absolute", () =>
    Effect.gen(function*() {
      const off = yield* settingsFrom({})
      expect(Either.map(off, (s) => [Option.isNone(s.tls), s.healthUrl])).toEqual(Either.right([true, "http://127.0.0.1:80"]))

      const on = yield* settingsFrom({ NGINX_TLS_CERT: "tls/wild.pem", NGINX_TLS_KEY: "/etc/tls/wild.key", NGINX_LISTEN: "127.0.0.1:8081", NGINX_TLS_LISTEN: "127.0.0.1:8443" })
      if (Either.isLeft(on)) return expect.fail(String(on.left))
      expect(on.right.tls).toEqual(Option.some({
        certPath: `${process.cwd()}/tls/wild.pem`,
        keyPath: "/etc/tls/wild.key",
        listen: "127.0.0.1:8443",
        redirect: false
      }))
      // The health wait goes the way users go: over HTTPS; the route probe stays plain.
      expect(on.right.healthUrl).toBe("https://127.0.0.1:8443")
      expect(on.right.edgeUrl).toBe("http://127.0.0.1:8081")

      const alone = yield* settingsFrom({ NGINX_TLS_CERT: "/etc/tls/wild.pem" })
      expect(Either.isLeft(alone) && String(alone.left)).toMatch(/NGINX_TLS_CERT and NGINX_TLS_KEY go together/)
      const redirect = yield* settingsFrom({ NGINX_HTTP: "redirect" })
      expect(Either.isLeft(redirect) && String(redirect.left)).toMatch(/NGINX_HTTP=redirect needs NGINX_TLS_CERT and NGINX_TLS_KEY/)
      const cleared = yield* settingsFrom({ NGINX_TLS_CERT: "", NGINX_TLS_KEY: " " })
      expect(Either.map(cleared, (s) => Option.isNone(s.tls))).toEqual(Either.right(true))
      for (const bad of ["/etc/tls/$host.pem", "/etc/tls/a;b.pem", "/etc/tls/\"x\".pem"]) {
        const refused = yield* settingsFrom({ NGINX_TLS_CERT: bad, NGINX_TLS_KEY: "/etc/tls/wild.key" })
        expect(Either.isLeft(refused) && String(refused.left), bad).toMatch(/NGINX_TLS_CERT must be a file path without/)
      }
      const samePort = yield* settingsFrom({ NGINX_TLS_CERT: "/a.pem", NGINX_TLS_KEY: "/a.key", NGINX_LISTEN: "8443", NGINX_TLS_LISTEN: "127.0.0.1:8443" })
      expect(Either.isLeft(samePort) && String(samePort.left)).toMatch(/NGINX_TLS_LISTEN \(127\.0\.0\.1:8443\) must differ from NGINX_LISTEN \(8443\)/)
      const badListen = yield* settingsFrom({ NGINX_TLS_CERT: "/a.pem", NGINX_TLS_KEY: "/a.key", NGINX_TLS_LISTEN: "https" })
      expect(Either.isLeft(badListen) && String(badListen.left)).toMatch(/NGINX_TLS_LISTEN must be PORT or HOST:PORT/)
    }))

  it("serve: one org server block on both listeners, HTTP/2, modern protocols, a shared session cache, no tickets", () => {
    const plain = luaFile()
    expect(plain.text).not.toMatch(/ssl/)
    const { text } = luaFile(served())
    const [org] = serversOf(text)
    expect(org).toMatch(/^ {4}listen 80;$/m)
    expect(org).toMatch(/^ {4}listen 443 ssl http2;$/m)
    expect(org).toContain('ssl_certificate "/etc/tls/wild.pem";')
    expect(org).toContain('ssl_certificate_key "/etc/tls/wild.key";')
    expect(org).toContain("ssl_protocols TLSv1.2 TLSv1.3;")
    expect(org).toContain("ssl_session_cache shared:gateway_allocator_tls:10m;")
    expect(org).toContain("ssl_session_tickets off;")
    // No OCSP responder in the certificate: nothing to staple.
    expect(org).not.toContain("ssl_stapling")
    expect(luaFile(served({}, { ocsp: true })).text).toContain("ssl_stapling on;")
    // Both the probe and the org's traffic are on it.
    expect(org).toContain("location = /__gateway_allocator/route")
    expect(org).toContain("location / {")
  })

  it("the local file carries the certificate's digest, so a renewal changes the file's version (and nothing else does)", () => {
    const first = luaFile(served())
    expect(first.text).toContain(`# certificate sha256:${"ab".repeat(32)}, valid until 2027-03-01T00:00:00.000Z`)
    expect(luaFile(served()).version).toBe(first.version)
    expect(luaFile(served({}, { digest: "cd".repeat(32) })).version).not.toBe(first.version)
    expect(luaFile().version).not.toBe(first.version)
  })

  it("redirect: the plain listener answers 308 to HTTPS (the port kept unless 443) but for the probe and readiness", () => {
    const servers = serversOf(luaFile(served({ redirect: true, listen: "127.0.0.1:8443" })).text)
    // The plain org server, the HTTPS org server, then the route API.
    expect(servers).toHaveLength(3)
    const [plain = "", https = ""] = servers
    expect(plain).toMatch(/^ {4}listen 80;$/m)
    expect(plain).not.toContain("ssl")
    expect(plain).toContain("return 308 https://$host:8443$request_uri;")
    expect(plain).toContain("location = /__gateway_allocator/route")
    expect(plain).toContain("location = /__gateway_allocator/ready")
    expect(plain).not.toContain("proxy_pass")
    expect(https).toMatch(/^ {4}listen 127\.0\.0\.1:8443 ssl http2;$/m)
    expect(https).toContain("proxy_pass http://$gateway_allocator_upstream;")
    expect(serversOf(luaFile(served({ redirect: true })).text)[0]).toContain("return 308 https://$host$request_uri;")
  })

  it("reload mode renders the same listeners", () => {
    const text = renderMainConfig({ confDir: "/etc/nginx/ga", domain: "domain.local", listen: "80", probeSecret: "0".repeat(48), tls: served({ redirect: true }) })
    const [plain = "", https = ""] = serversOf(text)
    expect(plain).toContain("return 308 https://$host$request_uri;")
    expect(https).toMatch(/^ {4}listen 443 ssl http2;$/m)
    expect(https).toContain("if ($gateway_allocator_upstream = \"\")")
  })

  it("a remote edge's file serves HTTPS on its probe address with the TLS port, without the local digest", () => {
    const text = renderEdgeConfig(
      { routeApiUrl: "http://10.0.0.5:8089", probeUrl: "http://10.0.0.5:8080", secret: "1".repeat(48) },
      { domain: "domain.local", tableSize: "1m", fenceTableSize: "1m", tls: { listener: { ...listener, listen: "0.0.0.0:8443" }, certificate } }
    )
    if (Either.isLeft(text)) return expect.fail(text.left)
    expect(text.right).toMatch(/^ {4}listen 10\.0\.0\.5:8443 ssl http2;$/m)
    expect(text.right).toContain('ssl_certificate "/etc/tls/wild.pem";')
    expect(text.right).not.toContain("# certificate sha256:")
  })
})
