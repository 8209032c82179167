import { Either } from "effect"
import { listenPort, type TlsListener } from "../config.ts"
import { renderLuaConfig } from "../nginx/luaConfig.ts"
import type { TlsCertificate } from "../nginx/tls.ts"

/**
 * Who may reach a remote edge's probe and route API: loopback and the private networks (RFC 1918,
 * IPv6 unique-local), where its replicas call from. The edge's own secret (in a header of every
 * call, compared by digest) guards both as well; the operator firewalls the route API's address
 * from everything but the replicas.
 */
export const REMOTE_EDGE_ALLOW: ReadonlyArray<string> = [
  "127.0.0.0/8",
  "::1",
  "10.0.0.0/8",
  "172.16.0.0/12",
  "192.168.0.0/16",
  "fc00::/7"
]

/** `http://{IP}:{port}`, nothing after it: the address an edge's server block listens on. */
export interface EdgeAddress {
  readonly host: string
  readonly port: number
  /** nginx's `listen` form: `10.0.0.5:8089`, `[fd00::5]:8089`. */
  readonly listen: string
  /** The URL in one spelling: `http://10.0.0.5:8089`. */
  readonly url: string
}

const ipv4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/
const ipv6 = /^[0-9a-f:]+$/

/**
 * An edge URL as POST /edges takes it: `http://`, an IP address (nginx listens on it: a name
 * would resolve once, at nginx's start) and an explicit port, no path, query or credentials.
 * Left: what is wrong, for the 400.
 */
export const parseEdgeAddress = (field: string, text: string): Either.Either<EdgeAddress, string> => {
  if (!URL.canParse(text)) return Either.left(`${field} is not a URL: ${JSON.stringify(text.slice(0, 100))}`)
  const url = new URL(text)
  if (url.protocol !== "http:") return Either.left(`${field} must be http:// (the edge secret guards it; put the edges on a private network)`)
  if (url.username !== "" || url.password !== "") return Either.left(`${field} must not carry credentials`)
  if ((url.pathname !== "/" && url.pathname !== "") || url.search !== "" || url.hash !== "") {
    return Either.left(`${field} must be http://{IP}:{port} with nothing after the port`)
  }
  if (url.port === "") return Either.left(`${field} must name its port`)
  const bracketed = url.hostname.startsWith("[")
  const host = bracketed ? url.hostname.slice(1, -1) : url.hostname
  if (!(ipv4.test(host) || (bracketed && ipv6.test(host)))) {
    return Either.left(`${field} must use an IP address, not a name (nginx listens on it)`)
  }
  const port = Number(url.port)
  const listen = `${bracketed ? `[${host}]` : host}:${port}`
  return Either.right({ host, port, listen, url: `http://${listen}` })
}

/**
 * The http-context file a remote edge installs (GET /edges/{id}/config): the org server block on
 * its probe URL's address, the route API on its route API URL's address, its own secret, the
 * private networks allowed in. The same file the local edge runs, but for addresses and secret.
 * With TLS, its HTTPS listener is on the probe's address with NGINX_TLS_LISTEN's port, and reads
 * the certificate from the same paths as the local edge (installed there by the operator).
 */
export const renderEdgeConfig = (edge: {
  readonly routeApiUrl: string
  readonly probeUrl: string
  readonly secret: string
}, settings: {
  readonly domain: string
  readonly tableSize: string
  readonly fenceTableSize: string
  /** The TLS this replica serves with, and its certificate as read here. */
  readonly tls?: { readonly listener: TlsListener; readonly certificate: TlsCertificate }
}): Either.Either<string, string> =>
  Either.gen(function*() {
    const routeApi = yield* parseEdgeAddress("route_api_url", edge.routeApiUrl)
    const probe = yield* parseEdgeAddress("probe_url", edge.probeUrl)
    return renderLuaConfig({
      domain: settings.domain,
      listen: probe.listen,
      routeApiListen: routeApi.listen,
      tableSize: settings.tableSize,
      fenceTableSize: settings.fenceTableSize,
      secret: edge.secret,
      allow: REMOTE_EDGE_ALLOW,
      ...(settings.tls === undefined ? {} : {
        tls: {
          tls: settings.tls.listener,
          listen: `${probe.listen.slice(0, probe.listen.lastIndexOf(":"))}:${listenPort(settings.tls.listener.listen)}`,
          certificate: settings.tls.certificate,
          // That edge's operator reloads it on renewal; its file does not change with the certificate.
          stampDigest: false
        }
      })
    }).text
  })
