import { HttpClient } from "@effect/platform"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Effect, Layer } from "effect"

/** Connections kept per server: enough for a burst of concurrent starts; more wait for one. */
const MAX_SOCKETS = 64
/** Idle connections kept per server beyond a burst. */
const MAX_FREE_SOCKETS = 16
/**
 * An idle connection is closed by this side after this long: well before nginx's own idle
 * timeout (keepalive_timeout, 75 s by default) could close it under a request being sent.
 */
const IDLE_MS = 2000

/**
 * An HTTP client for the nginx edges this service calls on every start and stop (the route API
 * and the org listener, local or remote): connections are kept alive and reused, so a call costs
 * no TCP connect (measured: about a third of a call's CPU on loopback). Bounded per server
 * (MAX_SOCKETS open, MAX_FREE_SOCKETS idle, IDLE_MS). A request that must reach a fresh nginx
 * worker says `connection: close` itself. Not for PowerDNS (its webserver closes every connection
 * after its answer) nor for gateways (thousands of them, each asked now and then, would each keep
 * a socket).
 */
export const makeKeptAliveClient = NodeHttpClient.make.pipe(
  Effect.provideServiceEffect(
    NodeHttpClient.HttpAgent,
    NodeHttpClient.makeAgent({
      keepAlive: true,
      maxSockets: MAX_SOCKETS,
      maxFreeSockets: MAX_FREE_SOCKETS,
      timeout: IDLE_MS,
      scheduling: "lifo"
    })
  )
)

/** The kept-alive client as the HttpClient of a layer (the edges). */
export const KeptAliveHttpClient = Layer.scoped(HttpClient.HttpClient, makeKeptAliveClient)
