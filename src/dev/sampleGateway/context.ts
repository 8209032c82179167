// What every handler of one sample gateway shares: its state, its connections and timers, and
// the isolation checks that decide which allocation a request or a message may be served for.
import { Either } from "effect"
import type * as http from "node:http"
import { type Connections, makeConnections } from "./connections.ts"
import { ALLOCATION_HEADER, type Behaviour, type Held } from "./model.ts"

/** Changed in place by the handlers (and `setBehaviour`); read at each request. */
export interface GatewayState {
  /** Known once listening when not given (it names the port). */
  name: string
  behaviour: Behaviour
  handshakes: Array<unknown>
  releases: Array<unknown>
  held: Held | null
}

export interface Timers {
  /** Runs `run` after `delayMs` (now when 0), unless the gateway closes first. */
  readonly later: (delayMs: number, run: () => void) => void
  /** Runs `run` every `intervalMs` until the returned stop is called or the gateway closes. */
  readonly every: (intervalMs: number, run: () => void) => () => void
  readonly clear: () => void
}

const makeTimers = (): Timers => {
  const timers = new Set<NodeJS.Timeout>()
  return {
    later: (delayMs, run) => {
      if (delayMs === 0) return run()
      const timer = setTimeout(() => {
        timers.delete(timer)
        run()
      }, delayMs)
      timers.add(timer)
    },
    every: (intervalMs, run) => {
      const interval = setInterval(run, intervalMs)
      timers.add(interval)
      return () => {
        clearInterval(interval)
        timers.delete(interval)
      }
    },
    clear: () => {
      for (const timer of timers) clearTimeout(timer)
      timers.clear()
    }
  }
}

export interface GatewayContext {
  readonly state: GatewayState
  readonly connections: Connections
  readonly timers: Timers
  readonly paths: { readonly health: string; readonly handshake: string; readonly release: string }
  /** Between two events of `GET /stream`. */
  readonly streamIntervalMs: number
  /** Back to the initial behaviour, nothing held or received, every tagged connection closed; then `onDone`. */
  readonly reset: (onDone: () => void) => void
}

export const makeContext = (options: {
  readonly name: string
  readonly initial: Behaviour
  readonly paths: GatewayContext["paths"]
  readonly streamIntervalMs: number
}): GatewayContext => {
  const state: GatewayState = { name: options.name, behaviour: options.initial, handshakes: [], releases: [], held: null }
  const connections = makeConnections()
  return {
    state,
    connections,
    timers: makeTimers(),
    paths: options.paths,
    streamIntervalMs: options.streamIntervalMs,
    reset: (onDone) => {
      state.behaviour = options.initial
      state.handshakes = []
      state.releases = []
      state.held = null
      connections.closeTagged(null, () => onDone())
    }
  }
}

export const heldId = (state: GatewayState): string | null => state.held?.allocation_id ?? null

/** What a connection of `allocation` may no longer be answered (nothing is, with isolation "off"). */
export const fenced = (state: GatewayState, allocation: string | null): boolean =>
  state.behaviour.isolation === "enforce" && (allocation === null || allocation !== heldId(state))

/** What it holds, as every proxied answer, event and message says it. */
export const holding = (state: GatewayState) => ({
  allocation: heldId(state),
  organization_id: state.held?.organization_id ?? null
})

/** The allocation a proxied request is served for (null: none named, isolation "off" only), or the 421 body. */
export const admit = (
  state: GatewayState,
  req: http.IncomingMessage
): Either.Either<string | null, Record<string, unknown>> => {
  const header = req.headers[ALLOCATION_HEADER]
  const allocation = typeof header === "string" ? header : null
  const held = heldId(state)
  if (state.behaviour.isolation === "off" || (allocation !== null && allocation === held)) return Either.right(allocation)
  const error = allocation === null
    ? `misdirected request: no ${ALLOCATION_HEADER} header`
    : held === null
    ? `misdirected request: this gateway holds no allocation, not ${allocation}`
    : `misdirected request: this gateway holds allocation ${held}, not ${allocation}`
  return Either.left({ error, gateway: state.name, allocation, held })
}
