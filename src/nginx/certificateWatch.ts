import { FileSystem } from "@effect/platform"
import { Clock, Duration, Effect, Equal, Metric, Option, Schedule } from "effect"
import { Settings } from "../config.ts"
import { tlsCertificateExpiry } from "../telemetry/Metrics.ts"
import type { NginxError } from "./Nginx.ts"
import { certificateDigest, readCertificateNow } from "./tls.ts"

/**
 * How a renewal is noticed: the certificate and key files are read and hashed this often. Reading
 * (not inotify) follows every way renewals land: a file rewritten, a symlink swapped (certbot's
 * live/, Kubernetes secret volumes), a network mount; two small files every few seconds cost
 * nothing.
 */
export const CERTIFICATE_CHECK_INTERVAL = Duration.seconds(5)

/** How long before expiry the service warns (then once a day). */
const EXPIRY_WARNING = Duration.days(14)

/**
 * Keeps the local edge serving the certificate on disk (NGINX_TLS_CERT, NGINX_TLS_KEY): when
 * their content changes, the edge is installed again, which checks the new pair, writes the file
 * (it carries the certificate's digest) and reloads nginx: a reload when, and only when, the file
 * changed. A reload replaces nginx's workers gracefully: open connections (WebSockets, streams,
 * requests in flight) stay on the old workers until they end. A pair that does not fit (a key
 * written after its certificate, say) is not installed; nginx keeps the previous one and the
 * next change is tried again. Started before the start-up install, so no change is missed.
 */
export const watchCertificate = (install: Effect.Effect<void, NginxError>) =>
  Effect.gen(function*() {
    const { domain, tls } = yield* Settings
    if (Option.isNone(tls)) return
    const listener = tls.value
    const fs = yield* FileSystem.FileSystem
    const digestNow = certificateDigest(listener).pipe(Effect.provideService(FileSystem.FileSystem, fs), Effect.option)
    /** When the served certificate expires: read once at start and after each renewal, not at every check. */
    const readExpiry = readCertificateNow(listener, domain).pipe(
      Effect.provideService(FileSystem.FileSystem, fs),
      Effect.map((certificate) => certificate.notAfter),
      Effect.option
    )
    let installed = yield* digestNow
    let notAfter = yield* readExpiry
    let reported: Option.Option<string> = Option.none()
    let warnedAt = 0

    const reportExpiry = Effect.gen(function*() {
      if (Option.isNone(notAfter)) return
      const now = yield* Clock.currentTimeMillis
      const left = notAfter.value.getTime() - now
      yield* Metric.set(tlsCertificateExpiry, Math.floor(left / 1000))
      if (left < Duration.toMillis(EXPIRY_WARNING) && now - warnedAt >= Duration.toMillis(Duration.days(1))) {
        warnedAt = now
        yield* Effect.logWarning(
          `the TLS certificate NGINX_TLS_CERT (${listener.certPath}) expires on ` +
            `${notAfter.value.toISOString()}: renew it (nginx serves the new one within seconds of it landing)`
        )
      }
    })

    // Each check reads and hashes the two files; the certificate is parsed only when they changed.
    const check = Effect.gen(function*() {
      const digest = yield* digestNow
      if (Option.isNone(digest) || Equal.equals(digest, installed)) {
        return yield* reportExpiry
      }
      if (Option.contains(reported, digest.value)) return
      yield* install.pipe(
        Effect.matchEffect({
          onSuccess: () =>
            Effect.gen(function*() {
              installed = digest
              notAfter = yield* readExpiry
              reported = Option.none()
              yield* Effect.logInfo(
                `the TLS certificate changed on disk (${listener.certPath}, ${listener.keyPath}): nginx serves it now`
              )
              yield* reportExpiry
            }),
          onFailure: (error) =>
            Effect.gen(function*() {
              reported = Option.some(digest.value)
              yield* Effect.logWarning(
                `the TLS certificate changed on disk but is not served (${error.reason}); nginx keeps the previous ` +
                  "one until a certificate and key that fit land"
              )
            })
        }),
        Effect.withSpan("Nginx.certificateChanged")
      )
    })
    yield* check.pipe(Effect.repeat(Schedule.spaced(CERTIFICATE_CHECK_INTERVAL)), Effect.forkScoped)
  })
