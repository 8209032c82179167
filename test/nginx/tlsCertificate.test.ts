// The certificate check the service runs at start-up and on every change (readCertificate), on
// real files signed by a dev CA with the openssl CLI: what it accepts, and each refusal naming the
// variable and the file. That a refusal stops the service is test/integration/tls.test.ts.
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { X509Certificate } from "node:crypto"
import { readFileSync } from "node:fs"
import path from "node:path"
import type { TlsListener } from "../../src/config.ts"
import { signCertificate } from "../../src/dev/certificate.ts"
import { certificateDigest, readCertificate } from "../../src/nginx/tls.ts"
import { temporaryDirectory } from "../support/stack.ts"

const listenerOf = (pair: { readonly certPath: string; readonly keyPath: string }): TlsListener => ({
  certPath: pair.certPath,
  keyPath: pair.keyPath,
  listen: "443",
  redirect: false
})

const refusal = (tls: TlsListener) =>
  readCertificate(tls, "domain.local", new Date()).pipe(
    Effect.flip,
    Effect.map((error) => error.message),
    Effect.provide(NodeContext.layer)
  )

describe("readCertificate (real certificates)", () => {
  it.scoped("accepts a wildcard for the domain with its key: its digest, expiry and fingerprint; no OCSP responder", () =>
    Effect.gen(function*() {
      const dir = yield* temporaryDirectory("ga-tls-")
      const pair = yield* signCertificate({ dir, domain: "domain.local", days: 30 })
      const certificate = yield* readCertificate(listenerOf(pair), "domain.local", new Date()).pipe(Effect.provide(NodeContext.layer))
      const x509 = new X509Certificate(readFileSync(pair.certPath))
      expect(certificate.fingerprint).toBe(x509.fingerprint256)
      expect(certificate.notAfter.toISOString()).toBe(new Date(x509.validTo).toISOString())
      expect(certificate.ocsp).toBe(false)
      expect(yield* certificateDigest(listenerOf(pair)).pipe(Effect.provide(NodeContext.layer))).toBe(certificate.digest)
      // A renewal is another digest.
      const renewed = yield* signCertificate({ dir, domain: "domain.local", days: 30 })
      expect(yield* certificateDigest(listenerOf(renewed)).pipe(Effect.provide(NodeContext.layer))).not.toBe(certificate.digest)
    }), 30_000)

  it.scoped("refuses an unreadable file, another key, an expired certificate and one for other names, naming the file", () =>
    Effect.gen(function*() {
      const dir = yield* temporaryDirectory("ga-tls-")
      const good = yield* signCertificate({ dir, domain: "domain.local" })
      const other = yield* signCertificate({ dir, domain: "domain.local", name: "other" })
      const expired = yield* signCertificate({ dir, domain: "domain.local", name: "expired", days: 0 })
      const elsewhere = yield* signCertificate({ dir, domain: "domain.local", name: "elsewhere", names: ["*.example.org"] })
      const missing = path.join(dir, "missing.pem")
      expect(yield* refusal({ ...listenerOf(good), certPath: missing })).toMatch(`NGINX_TLS_CERT (${missing}) cannot be read`)
      expect(yield* refusal({ ...listenerOf(good), keyPath: good.certPath })).toBe(
        `NGINX_TLS_KEY (${good.certPath}) is not an unencrypted PEM private key (nginx cannot ask for a passphrase)`
      )
      expect(yield* refusal({ ...listenerOf(good), keyPath: other.keyPath })).toBe(
        `NGINX_TLS_KEY (${other.keyPath}) is not the key of the certificate in ${good.certPath}`
      )
      expect(yield* refusal(listenerOf(expired))).toMatch(new RegExp(`^NGINX_TLS_CERT \\(${expired.certPath}\\) expired on \\d{4}-`))
      expect(yield* refusal(listenerOf(elsewhere))).toBe(
        `NGINX_TLS_CERT (${elsewhere.certPath}) does not cover the org hostnames org-{uuid}.domain.local: it needs the name ` +
          "*.domain.local (it has DNS:*.example.org)"
      )
      // The certificate of a parent domain's wildcard does not cover org-{uuid}.gw.domain.local (one label).
      expect(yield* readCertificate(listenerOf(good), "gw.domain.local", new Date()).pipe(Effect.flip, Effect.provide(NodeContext.layer)))
        .toMatchObject({ variable: "NGINX_TLS_CERT" })
    }), 30_000)
})
