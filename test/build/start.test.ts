// The compiled service, started as production starts it: `npm run build`, then `npm start` (the
// prestart check finds dist/ fresh, then node over dist/main.js) against the real stack. It answers
// /healthz, reads its migrations from the package root, serves its reference page, starts and stops
// a gateway, and exits on SIGTERM (npm hands the signal to node: nothing is left on the port).
import { expect, layer } from "@effect/vitest"
import { Data, Effect, Either } from "effect"
import { execFile } from "node:child_process"
import { randomUUID } from "node:crypto"
import { existsSync } from "node:fs"
import path from "node:path"
import { PROJECT_ROOT, registerGateways, request, startGateway, startServer, stopGateway } from "../support/server.ts"
import { Stack, StackLive } from "../support/stack.ts"

class BuildFailed extends Data.TaggedError("BuildFailed")<{ readonly stderr: string }> {}

const npmRunBuild = Effect.async<void, BuildFailed>((resume) => {
  execFile("npm", ["run", "build", "--silent"], { cwd: PROJECT_ROOT, timeout: 60_000 }, (error, _stdout, stderr) =>
    resume(error === null ? Effect.void : Effect.fail(new BuildFailed({ stderr }))))
})

layer(StackLive({ gateways: 1 }), { timeout: 120_000, excludeTestServices: true })("compiled build", (it) => {
  it.scoped("npm run build, then npm start: healthy, serves the API, stops on SIGTERM", () =>
    Effect.gen(function*() {
      const stack = yield* Stack
      yield* npmRunBuild
      expect(existsSync(path.join(PROJECT_ROOT, "dist", "main.js"))).toBe(true)
      const server = yield* startServer(stack, { name: "compiled", command: ["npm", "start", "--silent"], startTimeoutMs: 20_000 })
      expect((yield* request(server, "GET", "/healthz")).status).toBe(200)
      const docs = yield* request(server, "GET", "/docs")
      expect(docs.status).toBe(200)
      expect((yield* request(server, "GET", "/docs/swagger-ui-bundle.js")).status).toBe(200)

      yield* registerGateways(server, stack)
      const org = randomUUID()
      const started = yield* startGateway(server, org)
      expect(started.status, started.text).toBe(200)
      expect((yield* stopGateway(server, org)).status).toBe(200)

      yield* server.stop()
      expect(server.running()).toBe(false)
      const after = yield* Effect.either(request(server, "GET", "/healthz", { timeoutMs: 1000 }))
      expect(Either.isLeft(after)).toBe(true)
    }), { timeout: 90_000 })
})
