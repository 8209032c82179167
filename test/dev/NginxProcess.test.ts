import { Command } from "@effect/platform"
import { NodeContext } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Schedule } from "effect"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { type NginxHandle, startNginx } from "../../src/dev/NginxProcess.ts"

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
})
