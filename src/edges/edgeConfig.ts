import { Either } from "effect"
import { parseEdgeAddress } from "../domain/edgeAddress.ts"
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
