// Bodies over the limit are answered, whatever their framing: a Content-Length over 64 KiB and a
// chunked body that grows past it both get a 400 with a JSON body, never a reset connection; a
// chunked body within the limit is served like any other. The real HttpApi on a socket.
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { randomUUID } from "node:crypto"
import * as http from "node:http"
import { ApiBase, API_TOKEN, ServedApi, TestServices } from "../telemetry/harness.ts"

const Served = ServedApi.pipe(Layer.provideMerge(TestServices()))

interface Answer {
  readonly status: number
  readonly body: string
}

/** POST /gateway/start with `body` sent in `chunkBytes` chunks (chunked), or with a Content-Length. */
const post = (base: string, body: string, framing: { readonly chunkBytes: number } | "content-length") =>
  Effect.async<Answer, Error>((resume) => {
    const url = new URL(`${base}/gateway/start`)
    const headers: Record<string, string> = { authorization: `Bearer ${API_TOKEN}`, "content-type": "application/json" }
    if (framing === "content-length") headers["content-length"] = String(Buffer.byteLength(body))
    const request = http.request({ host: url.hostname, port: url.port, path: url.pathname, method: "POST", headers, agent: false }, (response) => {
      const chunks: Array<Buffer> = []
      response.on("data", (chunk: Buffer) => chunks.push(chunk))
      response.on("end", () => resume(Effect.succeed({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") })))
      response.on("error", (error) => resume(Effect.fail(error)))
    })
    request.on("error", (error) => resume(Effect.fail(error)))
    if (framing === "content-length") {
      request.end(body)
      return
    }
    // Written chunk by chunk: no Content-Length, so Node frames it chunked.
    for (let at = 0; at < body.length; at += framing.chunkBytes) request.write(body.slice(at, at + framing.chunkBytes))
    request.end()
  })

const padded = (bytes: number) => JSON.stringify({ organization_id: randomUUID(), padding: "x".repeat(bytes) })

describe("request framing", () => {
  it.live("a chunked body of 128 KiB gets 400 with a JSON body, not a reset; so does a Content-Length over the limit", () =>
    Effect.gen(function*() {
      const base = yield* ApiBase
      for (const framing of [{ chunkBytes: 16 * 1024 }, { chunkBytes: 1024 }, "content-length"] as const) {
        const answer = yield* post(base, padded(128 * 1024), framing)
        expect({ framing, status: answer.status, body: JSON.parse(answer.body) }).toEqual({
          framing,
          status: 400,
          body: { _tag: "BadRequest", message: "request body over 64 KiB" }
        })
      }
      // Far past what is drained: still an answer.
      const huge = yield* post(base, padded(900 * 1024), { chunkBytes: 64 * 1024 })
      expect(huge.status).toBe(400)
    }).pipe(Effect.provide(Served)))

  it.live("a chunked body within the limit is served", () =>
    Effect.gen(function*() {
      const base = yield* ApiBase
      const org = randomUUID()
      const answer = yield* post(base, JSON.stringify({ organization_id: org }), { chunkBytes: 7 })
      expect(answer.status).toBe(200)
      expect(JSON.parse(answer.body)).toMatchObject({ organization_id: org, reused: false })
      const junk = yield* post(base, "{not json", { chunkBytes: 3 })
      expect(junk.status).toBe(400)
      expect(JSON.parse(junk.body)).toMatchObject({ _tag: "BadRequest" })
    }).pipe(Effect.provide(Served)))
})
