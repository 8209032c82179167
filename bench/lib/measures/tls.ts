// HTTPS (NGINX_TLS_*): what TLS costs a start, and a request through nginx. A server of its own,
// lua, over the same stack with a wildcard certificate signed by a bench CA: its c=1 start (the
// health wait then goes over HTTPS) against the plain lua server's just before (same route count),
// and GETs to one started org's gateway through nginx, plain and over HTTPS: on a kept-alive
// connection, on a new connection with a full handshake, and on a new connection that resumes its
// TLS session (nginx's shared session cache).
import { NodeContext } from "@effect/platform-node"
import { Effect } from "effect"
import { randomUUID } from "node:crypto"
import * as http from "node:http"
import * as https from "node:https"
import { readFileSync } from "node:fs"
import path from "node:path"
import type { TLSSocket } from "node:tls"
import { signCertificate } from "../../../src/dev/certificate.ts"
import { freePort } from "../../../src/lib/ports.ts"
import { type BenchContext, checkAbort, reps } from "../context.ts"
import type { LatencyFigures, TlsFigures } from "../results.ts"
import { round, summarize } from "../stats.ts"
import { measureStartLatency } from "./startLatency.ts"

/** One GET through nginx for `host` with `agent` (or a fresh connection each): its time, and whether TLS resumed. */
const get = (options: {
  readonly port: number
  readonly host: string
  readonly agent: http.Agent | false
  readonly tls?: { readonly ca: string }
}) =>
  new Promise<{ readonly ms: number; readonly status: number; readonly resumed: boolean }>((resolve, reject) => {
    const began = performance.now()
    const request = (options.tls === undefined ? http : https).request(
      {
        host: "127.0.0.1",
        port: options.port,
        path: "/hello",
        headers: { host: options.host },
        agent: options.agent,
        ...(options.tls === undefined ? {} : { ca: options.tls.ca, servername: options.host })
      },
      (response) => {
        response.resume()
        response.on("end", () => {
          const socket = response.socket as TLSSocket | null
          resolve({
            ms: performance.now() - began,
            status: response.statusCode ?? 0,
            resumed: options.tls !== undefined && socket?.isSessionReused?.() === true
          })
        })
      }
    )
    request.on("error", reject)
    request.end()
  })

export const measureTls = async (ctx: BenchContext, plain: LatencyFigures): Promise<TlsFigures> => {
  const dataDir = ctx.stack.env.DATA_DIR ?? "."
  const certificate = await Effect.runPromise(
    signCertificate({ dir: path.join(dataDir, "tls-bench"), domain: ctx.stack.env.DOMAIN ?? "domain.local" }).pipe(
      Effect.provide(NodeContext.layer)
    )
  )
  const ca = readFileSync(certificate.caPath, "utf8")
  const tlsPort = await Effect.runPromise(freePort)
  const { api } = await ctx.fleet.launch("lua", "node", {
    NGINX_TLS_CERT: certificate.certPath,
    NGINX_TLS_KEY: certificate.keyPath,
    NGINX_TLS_LISTEN: `127.0.0.1:${tlsPort}`
  })
  try {
    const start = await measureStartLatency(ctx, reps(ctx.run, 50), "lua")
    ctx.run.log(`  TLS: start p50 ${start.latency.p50} ms (plain lua ${plain.latency.p50} ms)`)

    const org = randomUUID()
    const started = await ctx.allocations.start(api, org)
    if (started.status !== 200) throw new Error(`TLS measure: start answered ${started.status}`)
    const host = `org-${org}.${ctx.stack.env.DOMAIN ?? "domain.local"}`
    const count = reps(ctx.run, 300)
    const series = async (
      name: string,
      request: () => Promise<{ readonly ms: number; readonly status: number; readonly resumed: boolean }>
    ) => {
      const times: Array<number> = []
      let resumed = 0
      for (let i = 0; i < count + 10; i++) {
        checkAbort(ctx.run)
        const answer = await request()
        if (answer.status !== 200) throw new Error(`TLS measure, ${name}: HTTP ${answer.status}`)
        if (i < 10) continue
        times.push(answer.ms)
        if (answer.resumed) resumed += 1
      }
      return { latency: summarize(times), resumed }
    }
    const plainAgent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    const tlsAgent = new https.Agent({ keepAlive: true, maxSockets: 1 })
    // No keep-alive, but the agent keeps TLS sessions: each new connection offers the last session.
    const resumingAgent = new https.Agent({ keepAlive: false, maxCachedSessions: 10 })
    const nginxPort = ctx.stack.nginx.listenPort
    const requests = {
      plainKeptAlive: (await series("plain kept-alive", () => get({ port: nginxPort, host, agent: plainAgent }))).latency,
      tlsKeptAlive: (await series("https kept-alive", () => get({ port: tlsPort, host, agent: tlsAgent, tls: { ca } }))).latency,
      plainNewConnection: (await series("plain new", () => get({ port: nginxPort, host, agent: false }))).latency,
      tlsFullHandshake: (await series("https full handshake", () => get({ port: tlsPort, host, agent: false, tls: { ca } }))).latency,
      tlsResumed: await series("https resumed", () => get({ port: tlsPort, host, agent: resumingAgent, tls: { ca } }))
    }
    plainAgent.destroy()
    tlsAgent.destroy()
    resumingAgent.destroy()
    await ctx.allocations.stopWithRetry(api, org, "stop (TLS)")
    const figures: TlsFigures = {
      routes: start.routes,
      plainStart: plain,
      tlsStart: start,
      startRatio: round(start.latency.p50 / plain.latency.p50),
      requests: {
        plainKeptAlive: requests.plainKeptAlive,
        tlsKeptAlive: requests.tlsKeptAlive,
        plainNewConnection: requests.plainNewConnection,
        tlsFullHandshake: requests.tlsFullHandshake,
        tlsResumed: requests.tlsResumed.latency,
        resumedShare: round(requests.tlsResumed.resumed / count)
      }
    }
    ctx.run.log(
      `  TLS: GET p50 kept-alive ${figures.requests.tlsKeptAlive.p50} ms (plain ${figures.requests.plainKeptAlive.p50}), ` +
        `new connection ${figures.requests.tlsFullHandshake.p50} ms (plain ${figures.requests.plainNewConnection.p50}), ` +
        `resumed ${figures.requests.tlsResumed.p50} ms (${Math.round(figures.requests.resumedShare * 100)}% resumed)`
    )
    return figures
  } finally {
    await ctx.fleet.shutdown()
  }
}
