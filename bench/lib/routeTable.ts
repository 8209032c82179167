// nginx's route API (NGINX_ROUTING=lua): the table of routes in its shared memory, which the
// benchmark reads and writes directly for the raw figures, the propagation measure and the
// direct creation of allocations.
import * as http from "node:http"
import { PROBE_SECRET_HEADER } from "../../src/nginx/config.ts"
import { now } from "./stats.ts"

export interface RouteTableTarget {
  /** The org server block's port (NGINX_LISTEN). */
  readonly listenPort: number
  /** The route API's port (NGINX_ROUTE_API_LISTEN). */
  readonly routeApiPort: number
  readonly secret: string
  readonly domain: string
  readonly workers: number
}

/** One route API call (with the edge secret): its status and body, timing the round trip. */
export const routeApi = (
  target: Pick<RouteTableTarget, "routeApiPort" | "secret">,
  method: string,
  path: string,
  body?: string
): Promise<{ status: number; body: string; ms: number }> =>
  new Promise((resolve, reject) => {
    const start = now()
    const request = http.request({
      host: "127.0.0.1",
      port: target.routeApiPort,
      path,
      method,
      headers: { [PROBE_SECRET_HEADER]: target.secret },
      agent: false
    }, (response) => {
      const chunks: Array<Buffer> = []
      response.on("data", (chunk: Buffer) => chunks.push(chunk))
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8"), ms: now() - start }))
    })
    request.on("error", reject)
    request.end(body)
  })
