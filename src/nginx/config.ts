import type { AllocationId, Generation, OrganizationId, Upstream } from "../domain/ids.ts"
import { renderOrgServers, type TlsServing } from "./tls.ts"

/** The location nginx answers itself with the allocation id its map gives for the Host. */
export const PROBE_PATH = "/__gateway_allocator/route"

/** In NGINX_CONF_DIR: the edge's id and probe secret, made by the first process that uses the directory. */
export const EDGE_FILE = ".gateway-allocator-edge.json"

/**
 * lua mode: each edge answers it itself, on the org server block (with any org hostname as the
 * Host): 200 only while its table is filled for its boot id and a replica reached it lately, so a
 * load balancer takes a behind or cut-off edge out of rotation.
 */
export const READY_PATH = "/__gateway_allocator/ready"

/** The header a probe carries the edge's probe secret in (see `renderMainConfig`). */
export const PROBE_SECRET_HEADER = "x-gateway-allocator-probe"

/**
 * The header nginx puts on every request it proxies to a gateway: the allocation of the route it
 * used. A gateway answers only its own allocation's requests (421 otherwise), so an edge holding
 * a stale route can never make a gateway serve another org. `proxy_set_header` replaces a
 * client-sent header of that name (nginx skips request headers it sets itself).
 */
export const ALLOCATION_HEADER = "X-Gateway-Allocation"

/**
 * How the org server block proxies to `$gateway_allocator_upstream` in both routing modes:
 * HTTP/1.1 with WebSocket upgrades, the original Host, the route's allocation, and long timeouts
 * for long-lived streams.
 */
export const PROXY_TO_UPSTREAM = `        proxy_pass http://$gateway_allocator_upstream;
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header ${ALLOCATION_HEADER} $gateway_allocator_allocation;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $gateway_allocator_connection;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_read_timeout 1h;
        proxy_send_timeout 1h;`

export const routeFileName = (organizationId: OrganizationId) => `org-${organizationId}.conf`

export const escapeRegex = (value: string) => value.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/**
 * The service's own http-context file. Routes are data: one map entry per org (included from
 * `routes/`), one server block for all orgs. A reload with 10,000 map entries costs a fraction
 * of 10,000 server blocks.
 */
export const renderMainConfig = (options: {
  readonly confDir: string
  readonly domain: string
  readonly listen: string
  /** Only requests carrying it in PROBE_SECRET_HEADER see the probe (hex, so safe in the file). */
  readonly probeSecret: string
  /** HTTPS on the org server block too (NGINX_TLS_*). */
  readonly tls?: TlsServing
}) => {
  const domain = escapeRegex(options.domain)
  const own = `    # Route probe: nginx itself answers with the allocation its map holds for this Host (and the
    # answering worker's pid), so a start completes only once nginx really serves its route.
    # Loopback only, and only with the secret: behind a proxy on this host, every client is on
    # loopback.
    location = ${PROBE_PATH} {
        allow 127.0.0.0/8;
        allow ::1;
        deny all;
        if ($http_${PROBE_SECRET_HEADER.replace(/-/g, "_")} != "${options.probeSecret}") {
            return 404;
        }
        default_type text/plain;
        add_header Cache-Control no-store;
        return 200 "$gateway_allocator_allocation $pid";
    }`
  const site = `    location / {
        if ($gateway_allocator_upstream = "") {
            return 404;
        }
${PROXY_TO_UPSTREAM}
    }`
  return `# Written by gateway-allocator at start-up; edits are overwritten. Routes live in routes/.
map_hash_max_size 131072;
map_hash_bucket_size 128;

# Host -> "upstream allocation-id", one entry per org (routes/org-{uuid}.conf).
map $host $gateway_allocator_route {
    hostnames;
    default "";
    include ${options.confDir}/routes/*.conf;
}

map $gateway_allocator_route $gateway_allocator_upstream {
    default "";
    "~^(?<gateway_allocator_u>\\S+) " $gateway_allocator_u;
}

map $gateway_allocator_route $gateway_allocator_allocation {
    default "";
    "~ (?<gateway_allocator_a>\\S+)$" $gateway_allocator_a;
}

map $http_upgrade $gateway_allocator_connection {
    default upgrade;
    "" close;
}

${renderOrgServers({
    listen: options.listen,
    serverName: `~^([a-z0-9-]+\\.)*org-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\\.${domain}$`,
    tls: options.tls,
    own,
    site
  })}`
}

/**
 * What a route file names: its allocation (from the map entry) and generation (from the comment
 * line; files written before generations existed count as 0). None if unreadable.
 */
export const routeOf = (content: string): { readonly allocationId: string; readonly generation: string } | undefined => {
  const allocationId = /"\S+ ([0-9a-f-]{36})";\s*$/.exec(content)?.[1]
  if (allocationId === undefined) return undefined
  return { allocationId, generation: /^# generation (\d+)$/m.exec(content)?.[1] ?? "0" }
}

/**
 * One org's map entry. `.org-{uuid}.{domain}` matches the name and all its subdomains. Every
 * value here was validated (UUIDs, host:port), so nothing user-supplied can break the syntax.
 */
export const renderRoute = (options: {
  readonly organizationId: OrganizationId
  readonly allocationId: AllocationId
  readonly generation: Generation
  readonly upstream: Upstream
  readonly domain: string
}) =>
  `# generation ${options.generation}\n.org-${options.organizationId}.${options.domain} "${options.upstream} ${options.allocationId}";\n`
