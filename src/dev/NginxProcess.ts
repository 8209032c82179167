// A private nginx master for the dev stack and tests: own prefix, own main
// config, an empty conf.d the core service fills in, stopped with the Scope.
import { FileSystem } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { Data, Effect, Option } from "effect"
import * as path from "node:path"
import { freePort } from "../lib/ports.ts"
import { NGINX_LUA_MODULES } from "./packages.ts"
import {
  awaitReady,
  type Child,
  hasExited,
  isAlive,
  readPidFile,
  spawnChild,
  stopStaleProcess,
  tailFile,
  terminateChild
} from "../lib/processes.ts"

export class NginxProcessError extends Data.TaggedError("NginxProcessError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface NginxHandle {
  /** Directory whose `*.conf` the main config includes (NGINX_CONF_DIR); has `routes/`. */
  readonly confDir: string
  /** The main config, for `nginx -c` (NGINX_MAIN_CONF). */
  readonly mainConf: string
  /** Port reserved for the service's server block (NGINX_LISTEN); nothing listens until it writes one. */
  readonly listenPort: number
  /** Port reserved for the route API (NGINX_ROUTE_API_LISTEN, lua mode); nothing listens until the service writes it. */
  readonly routeApiPort: number
  /** Port reserved for HTTPS (NGINX_TLS_LISTEN); nothing listens unless the service is given a certificate. */
  readonly tlsPort: number
  readonly bin: "nginx"
  readonly errorLog: string
  /** Stops the master (SIGTERM, then SIGKILL); no-op when already stopped. */
  readonly stop: Effect.Effect<void>
  /** Starts the master again with the same files; no-op when running. */
  readonly start: Effect.Effect<void, NginxProcessError>
  /** Whether our master process is running. */
  readonly isRunning: Effect.Effect<boolean>
}

const mainConfText = (options: {
  readonly dir: string
  readonly confDir: string
  readonly runAsRoot: boolean
  readonly workers: number
  readonly modules: ReadonlyArray<string>
}): string => {
  const { confDir, dir, runAsRoot } = options
  const tmp = path.join(dir, "tmp")
  return [
    "# Written by src/dev/NginxProcess.ts; regenerated on every start.",
    // What Debian's own nginx.conf loads through modules-enabled (the Lua module, for NGINX_ROUTING=lua).
    ...options.modules.map((module) => `load_module ${module};`),
    // Foreground master: it is our child, so we see it exit and can reap it.
    "daemon off;",
    // As root, workers would otherwise run as `nobody`, which cannot reach temp
    // paths under a private (0700) directory such as a test's mkdtemp.
    ...(runAsRoot ? ["user root;"] : []),
    `worker_processes ${options.workers};`,
    `pid ${path.join(dir, "nginx.pid")};`,
    `error_log ${path.join(dir, "error.log")} notice;`,
    "events { worker_connections 1024; }",
    "http {",
    "  access_log off;",
    `  client_body_temp_path ${path.join(tmp, "client_body")};`,
    `  proxy_temp_path ${path.join(tmp, "proxy")};`,
    `  fastcgi_temp_path ${path.join(tmp, "fastcgi")};`,
    `  uwsgi_temp_path ${path.join(tmp, "uwsgi")};`,
    `  scgi_temp_path ${path.join(tmp, "scgi")};`,
    `  include ${path.join(confDir, "*.conf")};`,
    "}",
    ""
  ].join("\n")
}

/**
 * Starts `nginx -p {dir} -c {dir}/nginx.conf` and stops it when the Scope
 * closes. The core service writes `{confDir}/gateway-allocator.conf` and
 * `{confDir}/routes/org-*.conf` and reloads with `nginx -s reload -c {mainConf}`.
 */
export const startNginx = Effect.fn("NginxProcess.start")(function*(options: {
  readonly dir: string
  readonly listenPort?: number
  readonly routeApiPort?: number
  readonly tlsPort?: number
  /** worker_processes (default 1). */
  readonly workers?: number
  /** Load nginx's Lua module when it is installed (default); false: an nginx without it. */
  readonly luaModule?: boolean
  /** Files written into its conf.d before it starts (a registered edge's gateway-allocator.conf, say). */
  readonly confFiles?: ReadonlyArray<{ readonly name: string; readonly text: string }>
}) {
  const fs = yield* FileSystem.FileSystem
  const dir = path.resolve(options.dir)
  const confDir = path.join(dir, "conf.d")
  const mainConf = path.join(dir, "nginx.conf")
  const pidFile = path.join(dir, "nginx.pid")
  const errorLog = path.join(dir, "error.log")
  const listenPort = options.listenPort ?? (yield* freePort)
  const routeApiPort = options.routeApiPort ?? (yield* freePort)
  const tlsPort = options.tlsPort ?? (yield* freePort)
  const modules = options.luaModule === false
    ? []
    : yield* Effect.filter(NGINX_LUA_MODULES, (file) => fs.exists(file).pipe(Effect.orElseSucceed(() => false)))
  const fail = (message: string) => (cause: unknown) => new NginxProcessError({ message, cause })

  yield* fs.makeDirectory(path.join(confDir, "routes"), { recursive: true }).pipe(
    Effect.zipRight(fs.makeDirectory(path.join(dir, "tmp"), { recursive: true })),
    Effect.zipRight(fs.writeFileString(
      mainConf,
      mainConfText({ dir, confDir, runAsRoot: process.getuid?.() === 0, workers: options.workers ?? 1, modules })
    )),
    Effect.zipRight(Effect.forEach(options.confFiles ?? [], (file) =>
      fs.writeFileString(path.join(confDir, file.name), file.text, { mode: 0o600 }), { discard: true })),
    Effect.mapError(fail(`cannot prepare nginx directory ${dir}`))
  )

  const lock = yield* Effect.makeSemaphore(1)
  let current: Option.Option<Child> = Option.none()
  const context = yield* Effect.context<FileSystem.FileSystem>()

  const launch = Effect.gen(function*() {
    if (Option.isSome(current) && !(yield* hasExited(current.value))) return
    // A killed previous run may have left a master holding our ports and pid file.
    yield* stopStaleProcess(pidFile, "nginx", { signal: "SIGTERM" })
    yield* fs.remove(pidFile, { force: true }).pipe(Effect.orElse(() => Effect.void))
    const child = yield* spawnChild("nginx", ["-p", `${dir}/`, "-e", errorLog, "-c", mainConf]).pipe(
      Effect.mapError((e) => new NginxProcessError({ message: e.message, cause: e.cause }))
    )
    current = Option.some(child)
    // Ready once the master has written its pid file (after parsing the
    // config and binding every listen socket) and is still alive.
    const ready = readPidFile(pidFile).pipe(
      Effect.flatMap((pid) =>
        Option.isSome(pid) && pid.value === child.pid ? isAlive(child.pid) : Effect.succeed(false)
      )
    )
    const failure = yield* awaitReady(child, ready, {
      pollMs: 20,
      timeoutMs: 10_000,
      notReady: "did not write its pid file within 10 s"
    })
    if (Option.isSome(failure)) {
      return yield* new NginxProcessError({
        message: `nginx failed to start (${failure.value}); ${errorLog}:\n${yield* tailFile(errorLog)}`
      })
    }
  }).pipe(Effect.withSpan("NginxProcess.launch"))

  const halt = Effect.gen(function*() {
    if (Option.isNone(current)) return
    // SIGTERM is nginx's fast shutdown: open (e.g. WebSocket) connections do
    // not hold it up the way a graceful `-s quit` would.
    yield* terminateChild(current.value, { signal: "SIGTERM", graceMs: 5000 })
    current = Option.none()
  }).pipe(Effect.withSpan("NginxProcess.stop"))

  const handle: NginxHandle = {
    confDir,
    mainConf,
    listenPort,
    routeApiPort,
    tlsPort,
    bin: "nginx",
    errorLog,
    stop: lock.withPermits(1)(halt),
    start: lock.withPermits(1)(launch).pipe(Effect.provide(context)),
    isRunning: Effect.suspend(() =>
      Option.isSome(current) ? Effect.map(hasExited(current.value), (done) => !done) : Effect.succeed(false)
    )
  }
  yield* Effect.acquireRelease(handle.start, () => handle.stop)
  yield* Effect.annotateCurrentSpan({ dir, listenPort })
  return handle
}, (effect) => Effect.provide(effect, NodeContext.layer))
