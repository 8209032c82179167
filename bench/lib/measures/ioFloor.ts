// The floor under the service's CPU per start and stop: the same I/O made by plain Node, in a
// process of its own (profile/ioFloorChild.mjs), on the same stack. Per operation:
// - an HTTP request on a connection of its own, closed after the answer (the service's calls to
//   PowerDNS and to the gateways: PowerDNS's webserver closes every connection, and a gateway is
//   one of thousands), to nginx on loopback, the answer read to its end;
// - an HTTP request on a kept-alive connection (its calls to nginx's route API and probe);
// - a Postgres statement with one row back, on a pool of one connection, through `pg`;
// - an HTTP request served: a POSTed JSON body parsed, a JSON answer (its API), the server's CPU
//   read from /proc while this process sends the requests on a kept-alive connection.
// The cycle's floor multiplies them by what the trace pass counted per cycle (http.client,
// sql.execute and http.server spans): the client requests all kept-alive for the lower bound, all
// on connections of their own for the upper one. Nothing of the service's own work is in it (the
// journal's rows built, JSON and Schema, logs, spans, timeouts): it is the I/O alone.
import { spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import http from "node:http"
import path from "node:path"
import { Redacted } from "effect"
import type { BenchContext } from "../context.ts"
import { processCpuMs } from "../cpu.ts"
import type { IoFloorFigures, TraceBreakdown } from "../results.ts"
import { projectRoot } from "../stack.ts"
import { round } from "../stats.ts"

const CHILD = path.join(projectRoot, "bench", "lib", "profile", "ioFloorChild.mjs")
/** Operations measured per kind (after the child's own warm-up of 50). */
const REPS = 1000

/** Runs a client mode of the child; its CPU per operation, ms. */
const clientMode = (mode: "fresh" | "kept" | "statement", target: string, reps: number) =>
  new Promise<number>((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, mode, target, String(reps)], { stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString("utf8")))
    child.stderr.on("data", (chunk: Buffer) => (err += chunk.toString("utf8")))
    child.on("error", reject)
    child.on("exit", (code) => {
      const parsed = code === 0 ? (JSON.parse(out.trim()) as { readonly cpuMs: number; readonly reps: number }) : undefined
      if (parsed === undefined) reject(new Error(`io floor (${mode}) exited ${code}: ${err.trim().slice(0, 400)}`))
      else resolve(parsed.cpuMs / parsed.reps)
    })
  })

const post = (agent: http.Agent, port: number, body: string) =>
  new Promise<void>((resolve, reject) => {
    const request = http.request(
      { host: "127.0.0.1", port, path: "/allocations", method: "POST", agent, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
      (response) => {
        response.on("data", () => {})
        response.on("end", resolve)
        response.on("error", reject)
      }
    )
    request.on("error", reject)
    request.end(body)
  })

/** The child's server mode: its CPU per request served, read from /proc around `reps` requests. */
const servedMs = async (reps: number): Promise<number> => {
  const child = spawn(process.execPath, [CHILD, "serve"], { stdio: ["ignore", "pipe", "inherit"] })
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.stdout.once("data", (chunk: Buffer) => resolve((JSON.parse(chunk.toString("utf8").trim()) as { readonly port: number }).port))
      child.on("error", reject)
      child.on("exit", (code) => reject(new Error(`io floor (serve) exited ${code} before listening`)))
    })
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    const once = () => post(agent, port, JSON.stringify({ organizationId: randomUUID() }))
    for (let i = 0; i < 50; i++) await once()
    const before = processCpuMs(child.pid ?? -1)
    for (let i = 0; i < reps; i++) await once()
    const after = processCpuMs(child.pid ?? -1)
    agent.destroy()
    if (before === undefined || after === undefined) throw new Error("io floor (serve): /proc/PID/stat could not be read")
    return (after.userMs + after.systemMs - before.userMs - before.systemMs) / reps
  } finally {
    child.kill("SIGTERM")
  }
}

const countOf = (traces: TraceBreakdown, match: (name: string) => boolean) =>
  traces.bySpan.filter((row) => match(row.name)).reduce((sum, row) => sum + row.countPerCycle, 0)

export const measureIoFloor = async (ctx: BenchContext, traces: TraceBreakdown): Promise<IoFloorFigures> => {
  const nginxUrl = `http://127.0.0.1:${ctx.stack.nginx.listenPort}/`
  ctx.run.log(`io floor: the same I/O in plain Node (${REPS} of each, a process of its own)`)
  const perOperationMs = {
    freshRequest: round(await clientMode("fresh", nginxUrl, REPS), 4),
    keptRequest: round(await clientMode("kept", nginxUrl, REPS), 4),
    statement: round(await clientMode("statement", Redacted.value(ctx.stack.databaseUrl), REPS), 4),
    servedRequest: round(await servedMs(REPS), 4)
  }
  const perCycle = {
    clientRequests: countOf(traces, (name) => name.startsWith("http.client")),
    statements: countOf(traces, (name) => name === "sql.execute"),
    servedRequests: countOf(traces, (name) => name.startsWith("http.server"))
  }
  const rest = perCycle.statements * perOperationMs.statement + perCycle.servedRequests * perOperationMs.servedRequest
  const floor = {
    lowerMsPerCycle: round(perCycle.clientRequests * perOperationMs.keptRequest + rest, 3),
    upperMsPerCycle: round(perCycle.clientRequests * perOperationMs.freshRequest + rest, 3)
  }
  ctx.run.log(
    `  per operation, ms CPU: fresh request ${perOperationMs.freshRequest}, kept-alive ${perOperationMs.keptRequest}, ` +
      `statement ${perOperationMs.statement}, served ${perOperationMs.servedRequest}; per cycle ` +
      `(${perCycle.clientRequests} requests, ${perCycle.statements} statements, ${perCycle.servedRequests} served): ` +
      `${floor.lowerMsPerCycle}-${floor.upperMsPerCycle} ms`
  )
  return { reps: REPS, perOperationMs, perCycle, ...floor }
}
