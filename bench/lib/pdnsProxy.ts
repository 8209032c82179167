// An HTTP proxy in front of PowerDNS's API, between the service and PowerDNS.
//
// - "pass" (the default): forwards every request as it comes. It exists for the stub switch.
// - "serialize": forwards one request at a time. The local stack's PowerDNS uses the gsqlite3
//   backend, which cannot take concurrent writes: two PATCHes in flight deadlock on SQLite's lock
//   upgrade and one answers HTTP 500 ("database is locked (5)"). A service that sends concurrent
//   PATCHes (before its DNS group commit) fails most starts at c>=4 without this.
// - stub (switched on per case): PATCHes are answered 204 at once and never reach PowerDNS, to
//   see what the rest of the pipeline allows without the DNS write path.
// The raw PATCH figures are measured directly against PowerDNS, not through this proxy.
import * as http from "node:http"
import { now } from "./stats.ts"

export interface PdnsProxy {
  readonly url: string
  /**
   * Stub mode: PATCHes are answered 204 at once and never reach PowerDNS (reads still do), so a
   * throughput case measures the service and nginx without the DNS write path. Starts and stops
   * made in stub mode leave PowerDNS as it was.
   */
  readonly setStub: (on: boolean) => void
  readonly stats: () => { stubbed: number; requests: number; maxQueue: number; meanWaitMs: number; maxWaitMs: number }
  readonly close: () => Promise<void>
}

export const startPdnsProxy = async (target: string, mode: "pass" | "serialize"): Promise<PdnsProxy> => {
  const upstream = new URL(target)
  const agent = new http.Agent({ keepAlive: true, maxSockets: mode === "serialize" ? 1 : 64 })
  let chain: Promise<void> = Promise.resolve()
  let queued = 0
  let requests = 0
  let maxQueue = 0
  let waitSum = 0
  let maxWait = 0
  let stub = false
  let stubbed = 0

  const forward = (req: http.IncomingMessage, body: Buffer, res: http.ServerResponse) =>
    new Promise<void>((resolve) => {
      const headers = { ...req.headers, host: upstream.host, "content-length": String(body.length) }
      const request = http.request(
        { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers, agent },
        (response) => {
          res.writeHead(response.statusCode ?? 502, response.headers)
          response.pipe(res)
          response.on("end", resolve)
          response.on("error", () => {
            res.destroy()
            resolve()
          })
        }
      )
      request.setTimeout(30_000, () => request.destroy(new Error("PowerDNS did not answer within 30 s")))
      request.on("error", (error) => {
        if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" })
        res.end(`bench proxy: ${error.message}`)
        resolve()
      })
      request.end(body)
    })

  const server = http.createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (chunk: Buffer) => chunks.push(chunk))
    req.on("end", () => {
      if (stub && req.method === "PATCH") {
        stubbed += 1
        res.writeHead(204)
        res.end()
        return
      }
      const enqueued = now()
      queued += 1
      maxQueue = Math.max(maxQueue, queued)
      const run = async () => {
        const wait = now() - enqueued
        waitSum += wait
        maxWait = Math.max(maxWait, wait)
        requests += 1
        await forward(req, Buffer.concat(chunks), res)
        queued -= 1
      }
      if (mode === "serialize") chain = chain.then(run)
      else void run()
    })
  })
  server.keepAliveTimeout = 5000
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => resolve())
  })
  const address = server.address()
  const port = typeof address === "object" && address !== null ? address.port : 0
  return {
    url: `http://127.0.0.1:${port}`,
    setStub: (on) => {
      stub = on
    },
    stats: () => ({
      stubbed,
      requests,
      maxQueue,
      meanWaitMs: requests === 0 ? 0 : Math.round((waitSum / requests) * 100) / 100,
      maxWaitMs: Math.round(maxWait * 100) / 100
    }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
        agent.destroy()
      })
  }
}
