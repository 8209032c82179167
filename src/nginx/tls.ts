import { FileSystem } from "@effect/platform"
import { Clock, Data, Effect, Either } from "effect"
import { createHash, createPrivateKey, type KeyObject, X509Certificate } from "node:crypto"
import { listenPort, type TlsListener } from "../config.ts"

/** A certificate or key nginx could not serve: what is wrong, naming the variable and the file. */
export class TlsCertificateError extends Data.TaggedError("TlsCertificateError")<{
  readonly variable: "NGINX_TLS_CERT" | "NGINX_TLS_KEY"
  readonly file: string
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message() {
    return `${this.variable} (${this.file}) ${this.reason}`
  }
}

/** The certificate as an edge serves it, read and checked. */
export interface TlsCertificate {
  /** sha256 of the certificate and key files as read: a renewal changes it. */
  readonly digest: string
  readonly notAfter: Date
  /** The leaf's SHA-256 fingerprint (what a client sees). */
  readonly fingerprint: string
  /** The leaf names an OCSP responder: nginx staples its answer. */
  readonly ocsp: boolean
}

/** A name every org hostname is like (`org-{uuid}.{DOMAIN}`): the certificate must cover it. */
const sampleOrgHostname = (domain: string) => `org-00000000-0000-4000-8000-000000000000.${domain}`

/**
 * Reads the certificate and key nginx is configured with and refuses what would make nginx fail
 * or browsers refuse: an unreadable file, a key that is not the certificate's, a certificate out
 * of its validity period, or one that does not cover `org-{uuid}.{DOMAIN}` (a wildcard
 * `*.{DOMAIN}` does). `now` is the time the check is for.
 */
export const readCertificate = (tls: TlsListener, domain: string, now: Date) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const read = (variable: TlsCertificateError["variable"], file: string) =>
      fs.readFile(file).pipe(
        Effect.mapError((cause) => new TlsCertificateError({ variable, file, reason: `cannot be read: ${cause.message}`, cause }))
      )
    const certText = yield* read("NGINX_TLS_CERT", tls.certPath)
    const keyText = yield* read("NGINX_TLS_KEY", tls.keyPath)
    const certError = (reason: string, cause?: unknown) =>
      new TlsCertificateError({ variable: "NGINX_TLS_CERT", file: tls.certPath, reason, cause })

    const certificate = yield* Either.try({
      try: () => new X509Certificate(certText),
      catch: (cause) => certError("is not a PEM certificate", cause)
    })
    const key = yield* Either.try({
      try: (): KeyObject => createPrivateKey(Buffer.from(keyText)),
      catch: (cause) =>
        new TlsCertificateError({
          variable: "NGINX_TLS_KEY",
          file: tls.keyPath,
          reason: "is not an unencrypted PEM private key (nginx cannot ask for a passphrase)",
          cause
        })
    })
    if (!certificate.checkPrivateKey(key)) {
      return yield* new TlsCertificateError({
        variable: "NGINX_TLS_KEY",
        file: tls.keyPath,
        reason: `is not the key of the certificate in ${tls.certPath}`
      })
    }
    const notBefore = new Date(certificate.validFrom)
    const notAfter = new Date(certificate.validTo)
    if (notAfter.getTime() <= now.getTime()) return yield* certError(`expired on ${notAfter.toISOString()}`)
    if (notBefore.getTime() > now.getTime()) return yield* certError(`is not valid before ${notBefore.toISOString()}`)
    if (certificate.checkHost(sampleOrgHostname(domain)) === undefined) {
      return yield* certError(
        `does not cover the org hostnames org-{uuid}.${domain}: it needs the name *.${domain} ` +
          `(it has ${certificate.subjectAltName ?? certificate.subject.replace(/\n/g, ", ")})`
      )
    }
    return {
      digest: digestOf(certText, keyText),
      notAfter,
      fingerprint: certificate.fingerprint256,
      ocsp: /^OCSP - URI:/m.test(certificate.infoAccess ?? "")
    } satisfies TlsCertificate
  })

/** The certificate checked as of now (the Clock): at an install, a renewal, a remote edge's file. */
export const readCertificateNow = (tls: TlsListener, domain: string) =>
  Effect.flatMap(Clock.currentTimeMillis, (now) => readCertificate(tls, domain, new Date(now)))

/** The pair's content, hashed: what tells a renewal apart. */
const digestOf = (certificate: Uint8Array, key: Uint8Array) => createHash("sha256").update(certificate).update(key).digest("hex")

/** The digest `readCertificate` would give, without the checks: cheap enough to compare every few seconds. */
export const certificateDigest = (tls: TlsListener) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    return digestOf(yield* fs.readFile(tls.certPath), yield* fs.readFile(tls.keyPath))
  })

/**
 * Protocols and ciphers: TLS 1.2 and 1.3 only, AEAD ciphers with forward secrecy (Mozilla's
 * "intermediate" profile without DHE, which would need a dhparam file). Sessions resume from a
 * shared cache (every worker), without session tickets (whose keys nginx would never rotate).
 */
const TLS_SETTINGS = `ssl_protocols TLSv1.2 TLSv1.3;
ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
ssl_prefer_server_ciphers off;
ssl_session_cache shared:gateway_allocator_tls:10m;
ssl_session_timeout 1d;
ssl_session_tickets off;`

/** What a rendered file needs of TLS: the listener's settings and what was read of its certificate. */
export interface TlsServing {
  readonly tls: TlsListener
  /** nginx's `listen` of the HTTPS listener on this edge. */
  readonly listen: string
  readonly certificate: TlsCertificate
  /**
   * Write the certificate's digest into the file: the local edge's file then changes with every
   * renewal, so its install reloads nginx then, and only then. A remote edge's file omits it (its
   * operator reloads that nginx on renewal).
   */
  readonly stampDigest: boolean
}

/**
 * The org server block(s): the plain listener and, with TLS, the HTTPS one (HTTP/2 for browsers;
 * WebSockets go over HTTP/1.1 connections, which ALPN offers too). `own` are the locations nginx
 * answers itself (the probe, readiness), served on every listener; `site` is the org's traffic.
 * NGINX_HTTP=redirect: the plain listener keeps `own` (the service's probes and a load balancer's
 * readiness checks stay plain) and answers everything else with 308 to the same URL over HTTPS.
 */
export const renderOrgServers = (options: {
  readonly listen: string
  readonly serverName: string
  readonly tls: TlsServing | undefined
  readonly own: string
  readonly site: string
}): string => {
  const { own, serverName, site, tls } = options
  const head = (listens: string) => `server {
${listens}
    server_name "${serverName}";
`
  if (tls === undefined) return `${head(`    listen ${options.listen};`)}\n${own}\n\n${site}\n}\n`
  const stamp = tls.stampDigest
    ? `    # certificate sha256:${tls.certificate.digest}, valid until ${tls.certificate.notAfter.toISOString()}\n`
    : ""
  const https = `    listen ${tls.listen} ssl http2;
    ssl_certificate "${tls.tls.certPath}";
    ssl_certificate_key "${tls.tls.keyPath}";
${stamp}${indent(TLS_SETTINGS, 4)}${tls.certificate.ocsp ? "\n    ssl_stapling on;\n    ssl_stapling_verify on;" : ""}`
  if (!tls.tls.redirect) return `${head(`    listen ${options.listen};\n${https}`)}\n${own}\n\n${site}\n}\n`
  const port = listenPort(tls.listen)
  return `${head(`    listen ${options.listen};`)}
${own}

    # NGINX_HTTP=redirect: every org request to HTTPS, method and body kept (308).
    location / {
        return 308 https://$host${port === "443" ? "" : `:${port}`}$request_uri;
    }
}

${head(https)}
${own}

${site}
}
`
}

const indent = (text: string, spaces: number) =>
  text.split("\n").map((line) => (line === "" ? line : " ".repeat(spaces) + line)).join("\n")
