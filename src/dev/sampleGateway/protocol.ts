// The sample gateway's HTTP requests: the gateway protocol (health, handshake, release), the
// control endpoints, and proxied requests checked against the allocation it holds.
import { Either, Schema } from "effect"
import type * as http from "node:http"
import { admit, type GatewayContext, heldId, holding } from "./context.ts"
import { readBody, readRequest, send } from "./http.ts"
import { type Behaviour, BehaviourPatch, Held, ReleaseRequest } from "./model.ts"
import { stream } from "./streams.ts"

const decodeControl = Schema.decodeUnknownEither(Schema.parseJson(BehaviourPatch))
const decodeHandshake = Schema.decodeUnknownEither(Held)
const decodeRelease = Schema.decodeUnknownEither(ReleaseRequest)

/** The `request` listener of one sample gateway's server. */
export const makeRequestHandler = (ctx: GatewayContext) => {
  const { state, connections, timers, paths } = ctx

  const fail = (res: http.ServerResponse) => send(res, 500, { error: "sample gateway told to fail", gateway: state.name })

  const answer = (res: http.ServerResponse, mode: Behaviour["health"], body: unknown): void => {
    // "hang": leave the response open; the client must give up by itself.
    if (mode === "ok") send(res, 200, body)
    else if (mode === "fail") fail(res)
  }

  const handshake = (req: http.IncomingMessage, res: http.ServerResponse) =>
    readRequest(req, res, decodeHandshake, (json) => state.handshakes.push(json), (body) => {
      const held = state.held
      if (held !== null && held.allocation_id !== body.allocation_id) {
        return send(res, 409, {
          error: `this gateway holds allocation ${held.allocation_id}`,
          gateway: state.name,
          held: held.allocation_id
        })
      }
      const { handshake, handshakeDelayMs } = state.behaviour
      // Taken on receipt, as a real gateway starts initialising: "hang" takes it too, only its answer is lost.
      if (handshake !== "fail") state.held = body
      if (handshake === "hang") return
      timers.later(
        handshakeDelayMs,
        () => (handshake === "ok" ? send(res, 200, { initialised: true, gateway: state.name }) : fail(res))
      )
    })

  const release = (req: http.IncomingMessage, res: http.ServerResponse) =>
    readRequest(req, res, decodeRelease, (json) => state.releases.push(json), (body) => {
      const { release, releaseDelayMs } = state.behaviour
      if (release === "hang") return
      timers.later(releaseDelayMs, () => {
        if (release === "fail") return fail(res)
        // Forgotten first: from here on no request of that allocation passes the header check.
        if (heldId(state) === body.allocation_id) state.held = null
        if (state.behaviour.isolation === "off") return send(res, 200, { released: true, closed: 0, gateway: state.name })
        connections.spareOwn(req, res, body.allocation_id)
        connections.closeTagged(body.allocation_id, (closed) => send(res, 200, { released: true, closed, gateway: state.name }))
      })
    })

  const control = (req: http.IncomingMessage, res: http.ServerResponse, pathname: string, method: string) => {
    if (pathname === "/__control" && method === "POST") {
      return readBody(req, (text) => {
        const patch = decodeControl(text)
        if (Either.isLeft(patch)) return send(res, 400, { error: String(patch.left) })
        state.behaviour = { ...state.behaviour, ...patch.right }
        send(res, 200, state.behaviour)
      })
    }
    if (pathname === "/__control" && method === "GET") return send(res, 200, state.behaviour)
    if (pathname === "/__handshakes" && method === "GET") return send(res, 200, state.handshakes)
    if (pathname === "/__releases" && method === "GET") return send(res, 200, state.releases)
    if (pathname === "/__held" && method === "GET") return send(res, 200, state.held)
    if (pathname === "/__reset" && method === "POST") {
      connections.spareOwn(req, res, null)
      return ctx.reset(() => send(res, 200, state.behaviour))
    }
    send(res, 404, { error: `no control endpoint ${method} ${pathname}`, gateway: state.name })
  }

  return (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const url = new URL(req.url ?? "/", "http://gateway")
    const method = req.method ?? "GET"
    // The protocol calls come without the header: health through nginx before the handshake (and
    // straight when idle), handshake and release straight from the service.
    if (url.pathname === paths.health && (method === "GET" || method === "HEAD")) {
      return answer(res, state.behaviour.health, { status: "ok", gateway: state.name })
    }
    if (url.pathname === paths.handshake && method === "POST") return handshake(req, res)
    if (url.pathname === paths.release && method === "POST") return release(req, res)
    if (url.pathname.startsWith("/__")) return control(req, res, url.pathname, method)
    const admitted = admit(state, req)
    if (Either.isLeft(admitted)) return send(res, 421, admitted.left)
    // A kept-alive connection that carried this allocation's requests is closed by its release.
    if (admitted.right !== null) connections.tag(req.socket, admitted.right)
    if (url.pathname === "/stream" && method === "GET") return stream(ctx, res, admitted.right)
    send(res, 200, { gateway: state.name, path: url.pathname, method, host: req.headers.host ?? null, ...holding(state) })
  }
}
