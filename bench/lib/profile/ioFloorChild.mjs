// The I/O of a start and a stop in plain Node, without the service: a process of its own (so
// that its CPU is that I/O's alone), run by measures/ioFloor.ts. Plain JavaScript on purpose: no
// Effect, no framework, no loader, the same `pg` driver the service's @effect/sql-pg runs on.
//
// argv: <mode> <target> <reps>
// - fresh <url> <reps>: GETs, each on a connection of its own closed after the answer (as the
//   service's calls to PowerDNS and the gateways), the answer read to its end;
// - kept <url> <reps>: GETs on one kept-alive connection (as its calls to nginx's route API);
// - statement <databaseUrl> <reps>: one parameterized statement with one row back, on a pool of
//   one connection (as each of its statements);
// - serve: an HTTP server answering POSTed JSON with JSON (as its API); prints its port, and the
//   caller reads this process's CPU from /proc while it sends requests.
// Each client mode warms up, then prints {"cpuMs": user + system over the reps, "reps"} on stdout.
import http from "node:http"
import pg from "pg"

const [mode, target, repsArg] = process.argv.slice(2)
const reps = Number(repsArg ?? 0)
const WARMUP = 50

const cpuMs = () => {
  const usage = process.cpuUsage()
  return (usage.user + usage.system) / 1000
}

const get = (url, agent) =>
  new Promise((resolve, reject) => {
    const request = http.get(url, { agent, headers: agent === false ? { connection: "close" } : {} }, (response) => {
      response.on("data", () => {})
      response.on("end", resolve)
      response.on("error", reject)
    })
    request.on("error", reject)
  })

const measure = async (once) => {
  for (let i = 0; i < WARMUP; i++) await once()
  const before = cpuMs()
  for (let i = 0; i < reps; i++) await once()
  process.stdout.write(`${JSON.stringify({ cpuMs: cpuMs() - before, reps })}\n`)
}

if (mode === "fresh") {
  await measure(() => get(target, false))
} else if (mode === "kept") {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  await measure(() => get(target, agent))
  agent.destroy()
} else if (mode === "statement") {
  const pool = new pg.Pool({ connectionString: target, max: 1 })
  let i = 0
  await measure(() => pool.query("select $1::text as value, now() as at", [`floor-${i++}`]))
  await pool.end()
} else if (mode === "serve") {
  const server = http.createServer((request, response) => {
    const chunks = []
    request.on("data", (chunk) => chunks.push(chunk))
    request.on("end", () => {
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8"))
      const answer = JSON.stringify({ ...body, status: "active", at: new Date().toISOString() })
      response.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(answer) })
      response.end(answer)
    })
  })
  server.listen(0, "127.0.0.1", () => {
    process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`)
  })
  process.on("SIGTERM", () => server.close(() => process.exit(0)))
} else {
  process.stderr.write(`ioFloorChild: unknown mode ${mode}\n`)
  process.exit(2)
}
