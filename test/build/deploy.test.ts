// The systemd unit runs the service with the same node flags as `npm start` (package.json), so
// the V8 limits measured by the benchmark are the ones production gets.
import { describe, expect, it } from "@effect/vitest"
import { readFileSync } from "node:fs"
import path from "node:path"
import { PROJECT_ROOT } from "../support/server.ts"

const read = (file: string) => readFileSync(path.join(PROJECT_ROOT, file), "utf8")

describe("deploy/gateway-allocator.service", () => {
  it("ExecStart is npm start's command line", () => {
    const start: string = JSON.parse(read("package.json")).scripts.start
    const execStart = /^ExecStart=(.+)$/m.exec(read("deploy/gateway-allocator.service"))?.[1]
    expect(start).toMatch(/^exec node /)
    expect(execStart).toBe(start.replace(/^exec node /, "/usr/bin/node "))
  })
})
