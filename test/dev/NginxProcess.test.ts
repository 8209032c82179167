import { Command } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Schedule } from "effect"
import * as childProcess from "node:child_process"
import { createRequire } from "node:module"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { type NginxHandle, startNginx } from "../../src/dev/NginxProcess.ts"
import { isAlive, readPidFile } from "../../src/lib/processes.ts"

const tempDir = Effect.acquireRelease(
  Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "nginx-"))),
  (dir) => Effect.promise(() => fs.rm(dir, { recursive: true, force: true }))
)

const reload = (nginx: NginxHandle) =>
  Command.make(nginx.bin, "-s", "reload", "-c", nginx.mainConf).pipe(
    Command.exitCode,
    Effect.provide(NodeContext.layer)
  )

const get = (port: number, pathname: string) =>
  Effect.tryPromise(() =>
    fetch(`http://127.0.0.1:${port}${pathname}`, { signal: AbortSignal.timeout(2000) })
      .then(async (response) => ({ status: response.status, body: await response.text() }))
  )

/** `nginx -s reload` returns once the signal is sent; new workers take a moment. */
const untilOk = <A, E>(effect: Effect.Effect<A, E>) =>
  effect.pipe(Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 150 }))

describe("NginxProcess", () => {
  it.scopedLive("starts with an empty conf.d, serves a server block after reload, stops and starts again", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const started = Date.now()
      const nginx = yield* startNginx({ dir })
      yield* Effect.log(`nginx start took ${Date.now() - started} ms`)
      expect(nginx.confDir).toBe(path.join(dir, "conf.d"))
      expect(nginx.mainConf).toBe(path.join(dir, "nginx.conf"))
      expect(yield* Effect.promise(() => fs.readdir(nginx.confDir))).toEqual(["routes"])
      expect(yield* nginx.isRunning).toBe(true)

      // Nothing listens yet: the core service writes its own server block.
      expect((yield* get(nginx.listenPort, "/").pipe(Effect.either))._tag).toBe("Left")

      yield* Effect.promise(() =>
        fs.writeFile(
          path.join(nginx.confDir, "test.conf"),
          `server { listen 127.0.0.1:${nginx.listenPort}; location = /hello { return 200 "hello\\n"; } }\n`
        )
      )
      const reloaded = Date.now()
      expect(yield* reload(nginx)).toBe(0)
      expect(yield* untilOk(get(nginx.listenPort, "/hello"))).toEqual({ status: 200, body: "hello\n" })
      yield* Effect.log(`reload until served took ${Date.now() - reloaded} ms`)

      yield* nginx.stop
      expect(yield* nginx.isRunning).toBe(false)
      expect((yield* get(nginx.listenPort, "/hello").pipe(Effect.either))._tag).toBe("Left")
      // With the master gone, a reload fails (no process behind the pid file).
      expect(yield* reload(nginx)).not.toBe(0)
      yield* nginx.stop

      yield* nginx.start
      expect(yield* get(nginx.listenPort, "/hello")).toEqual({ status: 200, body: "hello\n" })
    }))

  it.scopedLive("a broken config makes start fail with nginx's own message", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const nginx = yield* startNginx({ dir })
      yield* nginx.stop
      yield* Effect.promise(() => fs.writeFile(path.join(nginx.confDir, "broken.conf"), "server { nonsense; }\n"))
      const error = yield* Effect.flip(nginx.start)
      expect(error._tag).toBe("NginxProcessError")
      expect(error.message).toContain("unknown directive \"nonsense\"")
    }))

  it.scopedLive("a second start on the same directory replaces a master left running", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const leftover = yield* startNginx({ dir })
      const replacement = yield* startNginx({ dir, listenPort: leftover.listenPort })
      expect(yield* leftover.isRunning).toBe(false)
      expect(yield* replacement.isRunning).toBe(true)
    }))

  it.scopedLive("nginx does not outlive a Node process killed with SIGKILL", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const script = path.join(dir, "owner.ts")
      const module = new URL("../../src/dev/NginxProcess.ts", import.meta.url).pathname
      // The script lives in the temp dir, outside node_modules' reach.
      const effect = createRequire(import.meta.url).resolve("effect")
      yield* Effect.promise(() =>
        fs.writeFile(
          script,
          `import { Effect } from ${JSON.stringify(effect)}\nimport { startNginx } from ${JSON.stringify(module)}\n` +
            `Effect.runFork(Effect.scoped(Effect.andThen(startNginx({ dir: ${JSON.stringify(path.join(dir, "nginx"))} }), ` +
            `() => Effect.andThen(Effect.sync(() => console.log("ready")), Effect.never))))\n`
        )
      )
      const owner = yield* Effect.acquireRelease(
        Effect.sync(() => childProcess.spawn(process.execPath, ["--import", "tsx", script], { cwd: process.cwd() })),
        (owner) => Effect.sync(() => owner.kill("SIGKILL"))
      )
      yield* Effect.async<void, Error>((resume) => {
        owner.stdout.on("data", (chunk: Buffer) => chunk.toString().includes("ready") && resume(Effect.void))
        let stderr = ""
        owner.stderr.on("data", (chunk: Buffer) => stderr += chunk.toString())
        owner.once("exit", (code) => resume(Effect.fail(new Error(`owner exited ${code}: ${stderr}`))))
      })
      const pid = yield* readPidFile(path.join(dir, "nginx", "nginx.pid")).pipe(Effect.flatMap((pid) => pid), Effect.provide(NodeContext.layer))
      expect(yield* isAlive(pid).pipe(Effect.provide(NodeContext.layer))).toBe(true)
      owner.kill("SIGKILL")
      // setpriv's parent-death signal: nginx gets SIGTERM when its owner dies.
      yield* isAlive(pid).pipe(
        Effect.provide(NodeContext.layer),
        Effect.repeat({ schedule: Schedule.spaced("50 millis"), while: (alive) => alive }),
        Effect.timeout("3 seconds")
      )
      const gone = !(yield* isAlive(pid).pipe(Effect.provide(NodeContext.layer)))
      expect(gone).toBe(true)
    }))
})
