import { createHash } from "node:crypto"
import { escapeRegex, PROBE_PATH, PROBE_SECRET_HEADER, PROXY_TO_UPSTREAM, READY_PATH } from "./config.ts"
import { FENCES_DICT, LOCK_TABLE_SIZE, LOCKS_DICT, routeApiLua, SHARED_DICT } from "./luaRouteApi.ts"
import { renderOrgServers, type TlsServing } from "./tls.ts"

/**
 * NGINX_ROUTING=lua: the service's http-context file. Routes live in a `lua_shared_dict`, a
 * shared-memory zone every worker reads under its lock, so a write is served by every worker's
 * next request: no reload, no worker generations, one probe proves it.
 *
 * Three zones, so that nothing the table keeps for fencing can crowd routes out:
 * - `gateway_allocator_routes` (NGINX_ROUTE_TABLE_SIZE), routes only, keyed by org id:
 *   `R {upstream} {allocation} {generation}`, plus two marks: `#boot`, made on first use of a
 *   fresh zone (a new nginx, or a restart: shared memory survives reloads, not restarts), so the
 *   service can tell the table was emptied; and `#ready`, the boot id once the service has pushed
 *   every active route into this table (until then an unknown org is answered 503, not 404).
 *   `#ready`'s room is taken with `#boot` (a placeholder of the same length), so marking the
 *   table ready replaces a value in place and never needs memory the routes may have taken.
 * - `gateway_allocator_fences` (NGINX_FENCE_TABLE_SIZE): the org's fence (tombstone), the
 *   greatest generation removed for it, kept for as long as the removal says (`fence_ms`) and
 *   never longer than MAX_FENCE_MS. The service passes its own bound: a write can land at most
 *   STEP_TIMEOUT_MS (the step that sends it) plus one outside call (its `until`, checked here)
 *   after its owner's fence check, and the removal comes after that check, so the fence outlives
 *   every write that could still land. Fences therefore hold removals of the last few seconds,
 *   not of every org ever stopped: a number value (one 128-byte slab slot each), replaced in
 *   place when raised. A removal writes its fence before it removes; when the fence zone has no
 *   room (after reclaiming expired fences) the removal fails and removes nothing, so it is
 *   retried, never weakened.
 * - `gateway_allocator_locks` (LOCK_TABLE_SIZE): a short lock per org for its compare-and-set,
 *   held for one request's table work; its own zone, so a full route or fence zone never makes
 *   a lock fail.
 *
 * Fencing lives in the table: a write older (by generation) than the org's route or fence is
 * refused, and so is a write that arrives after its deadline (`until`, epoch ms: the route API is
 * on loopback, so nginx and the service read the same clock); a removal names its allocation,
 * removes only that allocation's route, and always raises the fence to its generation (even when
 * it found nothing, or another allocation's route). So a late write or removal (a zombie runner,
 * a restore racing a stop) is harmless. A restore (`restore=1`: drift repair, which holds the
 * allocation active in Postgres while it writes) may replace whatever entry the org holds: no
 * other allocation of the org can be live then, so a different upstream, a greater generation or
 * another allocation's id can only be forged or stale. It is refused like any write by the org's
 * fence, so it can never undo a removal.
 */
export const renderLuaConfig = (options: {
  readonly domain: string
  readonly listen: string
  readonly routeApiListen: string
  readonly tableSize: string
  /** The fence zone's size (nginx size syntax). */
  readonly fenceTableSize: string
  /** Guards the probe and the route API (hex, so safe in the file). */
  readonly secret: string
  /**
   * Who may reach the probe and the route API besides: loopback for the local edge (the default);
   * a remote edge's file adds the private networks its replicas call from. The secret guards both
   * either way.
   */
  readonly allow?: ReadonlyArray<string>
  /** HTTPS on the org server block too (NGINX_TLS_*). */
  readonly tls?: TlsServing
}) => {
  const domain = escapeRegex(options.domain)
  const allow = (options.allow ?? LOOPBACK).map((network) => `allow ${network};`).join("\n        ")
  const secretVariable = `$http_${PROBE_SECRET_HEADER.replace(/-/g, "_")}`
  // What nginx answers itself, on every listener of the org server block.
  const ownLocations = `    # Route probe: nginx itself answers with the allocation its table holds for this Host (and the
    # answering worker's pid). Only from the service's addresses, and only with the secret.
    location = ${PROBE_PATH} {
        ${allow}
        deny all;
        if (${secretVariable} != "${options.secret}") {
            return 404;
        }
        default_type text/plain;
        add_header Cache-Control no-store;
        content_by_lua_block {
            local value = ngx.shared.${SHARED_DICT}:get(ngx.var.gateway_allocator_org)
            local allocation = value and value:match("^R %S+ (%S+) ") or ""
            ngx.print(allocation, " ", ngx.worker.pid())
        }
    }

    # The edge's own readiness, for a load balancer (any org hostname as the Host): 200 only while
    # its table is filled for its boot id, a replica reached it within its last heartbeat's time,
    # and it is not draining.
    location = ${READY_PATH} {
        default_type text/plain;
        add_header Cache-Control no-store;
        content_by_lua_block {
${indent(edgeReadyLua, 12)}
        }
    }`
  // The org's traffic: its route from the table, proxied to its gateway.
  const siteLocation = `    location / {
        set $gateway_allocator_upstream "";
        set $gateway_allocator_allocation "";
        rewrite_by_lua_block {
            local routes = ngx.shared.${SHARED_DICT}
            local value = routes:get(ngx.var.gateway_allocator_org)
            local upstream, allocation
            if value then upstream, allocation = value:match("^R (%S+) (%S+) ") end
            if upstream then
                ngx.var.gateway_allocator_upstream = upstream
                ngx.var.gateway_allocator_allocation = allocation
                return
            end
            local ready = routes:get("#ready")
            if ready and ready == routes:get("#boot") then
                return ngx.exit(404)
            end
            -- nginx restarted and the service has not pushed the routes back yet: retry soon.
            ngx.header["Retry-After"] = "1"
            return ngx.exit(503)
        }
${PROXY_TO_UPSTREAM}
    }`
  const body = `lua_shared_dict ${SHARED_DICT} ${options.tableSize};
lua_shared_dict ${FENCES_DICT} ${options.fenceTableSize};
lua_shared_dict ${LOCKS_DICT} ${LOCK_TABLE_SIZE};

map $http_upgrade $gateway_allocator_connection {
    default upgrade;
    "" close;
}

${renderOrgServers({
    listen: options.listen,
    serverName: `~^([a-z0-9-]+\\.)*org-(?<gateway_allocator_org>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\\.${domain}$`,
    tls: options.tls,
    own: ownLocations,
    site: siteLocation
  })}
# The route API (the service's only way in): the service's addresses, and the secret header.
server {
    listen ${options.routeApiListen};
    ${allow.replace(/\n {8}/g, "\n    ")}
    deny all;
    access_log off;

    location / {
        default_type text/plain;
        add_header Cache-Control no-store;
        # A bulk restore carries every active route in one body, read in memory.
        client_max_body_size 64m;
        client_body_buffer_size 64m;
        content_by_lua_block {
${indent(routeApiLua(options.secret), 12)}
        }
    }
}
`
  // The route API reports the version of the file it runs, so an install knows when nginx runs it.
  const version = createHash("sha256").update(body).digest("hex").slice(0, 16)
  return {
    version,
    text: `# Written by gateway-allocator at start-up (NGINX_ROUTING=lua); edits are overwritten.
# Routes live in nginx's shared memory, changed through the route API below, without reloads.
${body.replace("__CONFIG_VERSION__", version)}`
  }
}

/**
 * The edge's readiness (READY_PATH), on the org server block: ready while its table is filled for
 * its boot id and the last heartbeat has not lapsed (see `POST /heartbeat`).
 */
const edgeReadyLua = `local routes = ngx.shared.${SHARED_DICT}
local contact = ngx.shared.${LOCKS_DICT}:get("#contact")
local boot = routes:get("#boot")
local function say(status, text)
    ngx.status = status
    ngx.print(text, "\\n")
    return ngx.exit(ngx.OK)
end
if not boot or routes:get("#ready") ~= boot then
    return say(503, "not ready: the route table is not filled since nginx started")
end
if contact == "draining" then return say(503, "not ready: draining") end
if not contact then return say(503, "not ready: no replica reached this edge lately") end
return say(200, "ready " .. boot)`

/** The local edge's probe and route API: this host only. */
const LOOPBACK: ReadonlyArray<string> = ["127.0.0.0/8", "::1"]

const indent = (text: string, spaces: number) =>
  text.split("\n").map((line) => (line === "" ? line : " ".repeat(spaces) + line)).join("\n")
