// A bystander org's clients: a few kept-alive connections through nginx, used every few
// milliseconds while other orgs start and stop. A reload makes nginx close its old workers' idle
// kept-alive connections, so a request sent on one at that moment fails (ECONNRESET, or an empty
// reply) for an org nobody touched; a route-table write touches no connection.
import * as http from "node:http"
import { sleep } from "./stats.ts"

export interface BystanderTally {
  readonly requests: number
  readonly ok: number
  /** Requests that failed: reset, closed without an answer, or not a 200. */
  readonly broken: number
  /** Requests that went out on a connection that had carried one before. */
  readonly reused: number
}

export const startBystander = (options: { readonly port: number; readonly host: string; readonly connections: number }) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: options.connections })
  let ok = 0
  let broken = 0
  let reused = 0
  let running = true
  const once = () =>
    new Promise<void>((resolve) => {
      const request = http.request({ host: "127.0.0.1", port: options.port, path: "/bystander", headers: { host: options.host }, agent }, (response) => {
        response.resume()
        response.on("end", () => {
          if (response.statusCode === 200) ok += 1
          else broken += 1
          resolve()
        })
        response.on("error", () => {
          broken += 1
          resolve()
        })
      })
      request.on("socket", () => {
        if (request.reusedSocket) reused += 1
      })
      request.on("error", () => {
        broken += 1
        resolve()
      })
      request.end()
    })
  const client = async () => {
    while (running) {
      await once()
      await sleep(5)
    }
  }
  const clients = Array.from({ length: options.connections }, client)
  return {
    stop: async (): Promise<BystanderTally> => {
      running = false
      await Promise.all(clients)
      agent.destroy()
      return { requests: ok + broken, ok, broken, reused }
    }
  }
}
