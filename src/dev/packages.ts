// The Debian packages the dev stack and the integration tests run: nginx (with
// its Lua module), PowerDNS with its sqlite3 backend, the sqlite3 CLI (to create the
// PowerDNS database) and the openssl CLI (the dev stack's TLS certificates). Installed on demand when we are root with apt-get.
import { Command, FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { Data, Effect, Stream } from "effect"
import { SQLITE_SCHEMA } from "./PowerDnsProcess.ts"

export class MissingPackagesError extends Data.TaggedError("MissingPackagesError")<{
  readonly message: string
  readonly missing: ReadonlyArray<string>
  readonly cause?: unknown
}> {}

export const DEBIAN_PACKAGES = ["nginx-light", "libnginx-mod-http-lua", "pdns-server", "pdns-backend-sqlite3", "sqlite3", "openssl"] as const

/** nginx's Lua module and the NDK it needs (NGINX_ROUTING=lua), as Debian installs them. */
export const NGINX_LUA_MODULES = ["/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so"] as const
export type DebianPackage = (typeof DEBIAN_PACKAGES)[number]

const installHint = `apt-get install -y --no-install-recommends ${DEBIAN_PACKAGES.join(" ")}`

/** Runs a command to completion, draining its output (an unread pipe can block it). */
const run = (command: Command.Command) =>
  Effect.scoped(
    Effect.gen(function*() {
      const process = yield* Command.start(command)
      const output = yield* Stream.merge(process.stdout, process.stderr).pipe(
        Stream.decodeText(),
        Stream.runFold("", (all, chunk) => (all + chunk).slice(-4000)),
        Effect.fork
      )
      const code = yield* process.exitCode
      return { code: Number(code), output: yield* output.await.pipe(Effect.flatten) }
    })
  )

const commandExists = (name: string) =>
  run(Command.make("sh", "-c", `command -v ${name}`)).pipe(
    Effect.map(({ code }) => code === 0),
    Effect.orElseSucceed(() => false)
  )

/** The gsqlite3 backend module lives under the multiarch lib dir, e.g. /usr/lib/x86_64-linux-gnu/pdns. */
const gsqlite3BackendExists = Effect.gen(function*() {
  const fs = yield* FileSystem.FileSystem
  // Not-a-directory errors (files directly under /usr/lib) just mean "not here".
  const exists = (path: string) => fs.exists(path).pipe(Effect.orElseSucceed(() => false))
  if (!(yield* exists(SQLITE_SCHEMA))) return false
  const libDirs = yield* fs.readDirectory("/usr/lib").pipe(Effect.orElseSucceed((): Array<string> => []))
  for (const dir of ["", ...libDirs.map((name) => `${name}/`)]) {
    if (yield* exists(`/usr/lib/${dir}pdns/libgsqlite3backend.so`)) return true
  }
  return false
})

/** The packages of {@link DEBIAN_PACKAGES} whose programs or files are missing. */
export const missingDebianPackages: Effect.Effect<ReadonlyArray<DebianPackage>> = Effect.gen(function*() {
  const present = yield* Effect.all({
    "nginx-light": commandExists("nginx"),
    "libnginx-mod-http-lua": Effect.flatMap(FileSystem.FileSystem, (fs) =>
      Effect.forEach(NGINX_LUA_MODULES, (file) => fs.exists(file).pipe(Effect.orElseSucceed(() => false))).pipe(
        Effect.map((found) => found.every(Boolean))
      )),
    "pdns-server": commandExists("pdns_server"),
    "pdns-backend-sqlite3": gsqlite3BackendExists,
    sqlite3: commandExists("sqlite3"),
    openssl: commandExists("openssl")
  }, { concurrency: "unbounded" })
  return DEBIAN_PACKAGES.filter((name) => !present[name])
}).pipe(Effect.withSpan("packages.missingDebianPackages"), Effect.provide(NodeContext.layer))

/**
 * Package scripts would start a system nginx on :80 and pdns on :53 through
 * invoke-rc.d; a policy-rc.d that exits 101 forbids that for the install.
 * An existing policy-rc.d is left alone (and in place).
 */
const POLICY_RC_D = "/usr/sbin/policy-rc.d"
const forbidServiceStarts = Effect.acquireRelease(
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    if (yield* fs.exists(POLICY_RC_D)) return false
    yield* fs.writeFileString(POLICY_RC_D, "#!/bin/sh\n# temporary, from src/dev/packages.ts\nexit 101\n", { mode: 0o755 })
    return true
  }),
  (created) =>
    created
      ? Effect.flatMap(FileSystem.FileSystem, (fs) => fs.remove(POLICY_RC_D, { force: true })).pipe(Effect.ignore)
      : Effect.void
)

const aptGet = (...args: Array<string>) =>
  run(Command.make("apt-get", ...args).pipe(Command.env({ DEBIAN_FRONTEND: "noninteractive" }))).pipe(
    Effect.flatMap(({ code, output }) =>
      code === 0
        ? Effect.void
        : Effect.fail(new Error(`apt-get ${args.join(" ")} exited ${code}:\n${output}`))
    )
  )

/**
 * Makes sure nginx, pdns_server (with the gsqlite3 backend) and sqlite3 are
 * there: installs the missing ones with apt-get when running as root, fails
 * with the exact install command otherwise.
 */
export const ensureDebianPackages: Effect.Effect<void, MissingPackagesError> = Effect.gen(function*() {
  const missing = yield* missingDebianPackages
  if (missing.length === 0) return
  const canInstall = process.getuid?.() === 0 && (yield* commandExists("apt-get"))
  if (!canInstall) {
    return yield* new MissingPackagesError({
      missing,
      message: `missing Debian packages: ${missing.join(", ")}; install them with: ${installHint}`
    })
  }
  yield* Effect.logInfo(`installing Debian packages: ${DEBIAN_PACKAGES.join(" ")}`)
  yield* Effect.scoped(
    Effect.gen(function*() {
      yield* forbidServiceStarts
      yield* aptGet("update")
      yield* aptGet("install", "-y", "--no-install-recommends", ...DEBIAN_PACKAGES)
    })
  ).pipe(
    Effect.mapError((cause) =>
      new MissingPackagesError({
        missing,
        message: `installing ${missing.join(", ")} failed (${cause.message}); install them with: ${installHint}`,
        cause
      })
    )
  )
  const stillMissing = yield* missingDebianPackages
  if (stillMissing.length > 0) {
    return yield* new MissingPackagesError({
      missing: stillMissing,
      message: `still missing after apt-get: ${stillMissing.join(", ")}; install them with: ${installHint}`
    })
  }
}).pipe(
  Effect.withSpan("packages.ensureDebianPackages"),
  Effect.provide(NodeContext.layer)
)
