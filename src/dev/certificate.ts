// The dev stack's TLS: a private certificate authority and a wildcard certificate for the dev
// domain it signs, made with the openssl CLI, as an operator's ACME client would leave them on
// disk (the certificate, its key). `curl --cacert {ca}` and browsers that import the CA trust it.
import { Command, FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { Data, Effect, Either, Option, Stream } from "effect"
import { X509Certificate } from "node:crypto"
import path from "node:path"

export class DevCertificateError extends Data.TaggedError("DevCertificateError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface DevCertificate {
  /** The dev CA's certificate: what clients trust (`curl --cacert`). */
  readonly caPath: string
  /** The wildcard certificate `*.{domain}` (NGINX_TLS_CERT). */
  readonly certPath: string
  /** Its key (NGINX_TLS_KEY). */
  readonly keyPath: string
}

/** Runs openssl to completion; its output is the error's message when it fails. */
const openssl = (cwd: string, ...args: ReadonlyArray<string>) =>
  Effect.scoped(
    Effect.gen(function*() {
      const process = yield* Command.start(Command.make("openssl", ...args).pipe(Command.workingDirectory(cwd)))
      const output = yield* Stream.merge(process.stdout, process.stderr).pipe(
        Stream.decodeText(),
        Stream.runFold("", (all, chunk) => (all + chunk).slice(-2000)),
        Effect.fork
      )
      const code = Number(yield* process.exitCode)
      const text = yield* output.await.pipe(Effect.flatten)
      if (code !== 0) return yield* new DevCertificateError({ message: `openssl ${args[0]} exited ${code}: ${text.trim()}` })
    })
  ).pipe(Effect.mapError((cause) => cause._tag === "DevCertificateError" ? cause : new DevCertificateError({ message: `openssl: ${cause.message}`, cause })))

const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"] as const

/**
 * Signs a new wildcard certificate (and key) for `*.{domain}` with the CA under `dir`, made first
 * if absent. `days` of validity (0: it expires at once, for tests of an expired certificate);
 * `name` picks the files (`{name}.pem`, `{name}.key`), so tests can make several.
 */
export const signCertificate = Effect.fn("DevCertificate.sign")(function*(options: {
  readonly dir: string
  readonly domain: string
  readonly days?: number
  readonly name?: string
  /** Names it covers instead of `*.{domain}` and `{domain}` (a certificate for the wrong names). */
  readonly names?: ReadonlyArray<string>
}) {
  const fs = yield* FileSystem.FileSystem
  const dir = path.resolve(options.dir)
  const name = options.name ?? "wildcard"
  const fail = (message: string) => (cause: unknown) => new DevCertificateError({ message, cause })
  yield* fs.makeDirectory(dir, { recursive: true, mode: 0o700 }).pipe(Effect.mapError(fail(`cannot make ${dir}`)))
  const ca = { cert: path.join(dir, "ca.pem"), key: path.join(dir, "ca.key") }
  if (!(yield* fs.exists(ca.cert).pipe(Effect.orElseSucceed(() => false)))) {
    yield* openssl(dir, "req", "-x509", "-new", ...EC_KEY, "-keyout", ca.key, "-out", ca.cert, "-days", "3650",
      "-subj", "/CN=gateway-allocator dev CA", "-addext", "basicConstraints=critical,CA:TRUE",
      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
  }
  const names = options.names ?? [`*.${options.domain}`, options.domain]
  const certPath = path.join(dir, `${name}.pem`)
  const keyPath = path.join(dir, `${name}.key`)
  const csr = path.join(dir, `${name}.csr`)
  const extensions = path.join(dir, `${name}.ext`)
  yield* fs.writeFileString(extensions, [
    `subjectAltName=${names.map((n) => `DNS:${n}`).join(",")}`,
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature",
    "extendedKeyUsage=serverAuth",
    ""
  ].join("\n")).pipe(Effect.mapError(fail(`cannot write ${extensions}`)))
  // Written beside the files it replaces, then renamed over them: nginx (or a reader checking
  // the pair) sees the old pair or the new one, the key first (the order renewal tools use).
  yield* openssl(dir, "req", "-new", ...EC_KEY, "-keyout", `${keyPath}.new`, "-out", csr, "-subj", `/CN=${names[0] ?? options.domain}`)
  yield* openssl(dir, "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
    "-out", `${certPath}.new`, "-days", String(options.days ?? 397), "-extfile", extensions)
  yield* fs.chmod(`${keyPath}.new`, 0o600).pipe(
    Effect.zipRight(fs.rename(`${keyPath}.new`, keyPath)),
    Effect.zipRight(fs.rename(`${certPath}.new`, certPath)),
    Effect.zipRight(Effect.all([fs.remove(csr), fs.remove(extensions)])),
    Effect.mapError(fail(`cannot put the certificate in place in ${dir}`))
  )
  return { caPath: ca.cert, certPath, keyPath } satisfies DevCertificate
}, Effect.provide(NodeContext.layer))

/**
 * The dev stack's certificate under `dir`: the one there if it covers `*.{domain}` for another 30
 * days, a new one otherwise (so the CA a developer imported once keeps working).
 */
export const devCertificate = Effect.fn("DevCertificate.ensure")(function*(dir: string, domain: string) {
  const fs = yield* FileSystem.FileSystem
  const certPath = path.join(path.resolve(dir), "wildcard.pem")
  const current = yield* fs.readFileString(certPath).pipe(Effect.option)
  const usable = Option.exists(current, (text) =>
    Either.getOrElse(
      Either.try(() => {
        const certificate = new X509Certificate(text)
        return certificate.checkHost(`org-00000000-0000-4000-8000-000000000000.${domain}`) !== undefined &&
          new Date(certificate.validTo).getTime() > Date.now() + 30 * 24 * 3600 * 1000
      }),
      () => false
    ))
  if (usable) {
    return { caPath: path.join(path.resolve(dir), "ca.pem"), certPath, keyPath: path.join(path.resolve(dir), "wildcard.key") }
  }
  return yield* signCertificate({ dir, domain })
}, Effect.provide(NodeContext.layer))
