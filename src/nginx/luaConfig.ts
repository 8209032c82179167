import { createHash } from "node:crypto"
import { escapeRegex, PROBE_PATH, PROBE_SECRET_HEADER, PROXY_TO_UPSTREAM } from "./config.ts"

/**
 * NGINX_ROUTING=lua: the service's http-context file. Routes live in one `lua_shared_dict`, a
 * shared-memory zone every worker reads under its lock, so a write is served by every worker's
 * next request: no reload, no worker generations, one probe proves it.
 *
 * The table, keyed by org id:
 * - `R {upstream} {allocation} {generation}`: the org's route;
 * - `#gone:{org}`: the greatest generation removed for the org, kept TOMBSTONE_TTL_S (a tombstone);
 * - `#boot`: made on first use of a fresh zone (a new nginx, or a restart: shared memory survives
 *   reloads, not restarts), so the service can tell the table was emptied;
 * - `#ready`: the boot id once the service has pushed every active route into this table. Until
 *   then an unknown org is answered 503 (retry), not 404;
 * - `#lock:{org}`: a short lock for one org's compare-and-set.
 *
 * Fencing lives in the table: a write older (by generation) than the org's route or tombstone is
 * refused; a removal names its allocation, removes only that allocation's route, and always
 * raises the tombstone to its generation (even when it found nothing, or another allocation's
 * route). So a late write or removal (a zombie runner, a restore racing a stop) is harmless.
 */
export const renderLuaConfig = (options: {
  readonly domain: string
  readonly listen: string
  readonly routeApiListen: string
  readonly tableSize: string
  /** Guards the probe and the route API (hex, so safe in the file). */
  readonly secret: string
}) => {
  const domain = escapeRegex(options.domain)
  const secretVariable = `$http_${PROBE_SECRET_HEADER.replace(/-/g, "_")}`
  const body = `lua_shared_dict ${SHARED_DICT} ${options.tableSize};

map $http_upgrade $gateway_allocator_connection {
    default upgrade;
    "" close;
}

server {
    listen ${options.listen};
    server_name "~^([a-z0-9-]+\\.)*org-(?<gateway_allocator_org>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\\.${domain}$";

    # Route probe: nginx itself answers with the allocation its table holds for this Host (and the
    # answering worker's pid). Loopback only, and only with the secret.
    location = ${PROBE_PATH} {
        allow 127.0.0.0/8;
        allow ::1;
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

    location / {
        set $gateway_allocator_upstream "";
        rewrite_by_lua_block {
            local routes = ngx.shared.${SHARED_DICT}
            local value = routes:get(ngx.var.gateway_allocator_org)
            local upstream = value and value:match("^R (%S+) ")
            if upstream then
                ngx.var.gateway_allocator_upstream = upstream
                return
            end
            if routes:get("#ready") then
                return ngx.exit(404)
            end
            -- nginx restarted and the service has not pushed the routes back yet: retry soon.
            ngx.header["Retry-After"] = "1"
            return ngx.exit(503)
        }
${PROXY_TO_UPSTREAM}
    }
}

# The route API (the service's only way in): loopback, and the secret header.
server {
    listen ${options.routeApiListen};
    allow 127.0.0.0/8;
    allow ::1;
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

export const SHARED_DICT = "gateway_allocator_routes"

/** How long a removal's tombstone fences late writes: far beyond any call's bound. */
export const TOMBSTONE_TTL_S = 600

const indent = (text: string, spaces: number) =>
  text.split("\n").map((line) => (line === "" ? line : " ".repeat(spaces) + line)).join("\n")

/**
 * The route API, one handler:
 * - `GET /boot` -> `boot {id} ready {0|1} version {config version}`
 * - `GET /routes` -> that line, then `{org} {upstream} {allocation} {generation}` per route
 * - `GET /routes/{org}` -> the org's route line, or 404
 * - `PUT /routes/{org}?upstream=&allocation=&generation=` -> 200 stored|unchanged, 409 stale, 507 full
 * - `DELETE /routes/{org}?allocation=&generation=` -> 200 removed|absent|other
 * - `POST /routes?boot={id}` with route lines -> every route put (fenced as one PUT each), then the
 *   table marked ready for that boot; 409 when the table's boot id is another (nothing put)
 */
const routeApiLua = (secret: string) => `local routes = ngx.shared.${SHARED_DICT}
local function answer(status, body)
    ngx.status = status
    ngx.print(body)
    return ngx.exit(ngx.OK)
end
-- Digests compared, so the time taken does not depend on how much of the secret was right.
local given = ngx.var.http_${PROBE_SECRET_HEADER.replace(/-/g, "_")}
if not given or ngx.sha1_bin(given) ~= ngx.sha1_bin("${secret}") then
    return answer(401, "the edge secret is missing or wrong\\n")
end

local function boot()
    local id = routes:get("#boot")
    if id then return id end
    local raw
    local random = io.open("/dev/urandom", "rb")
    if random then
        raw = random:read(16)
        random:close()
    end
    raw = raw or (tostring(ngx.now()) .. " " .. tostring(ngx.worker.pid()))
    local hex = raw:gsub(".", function(c) return string.format("%02x", c:byte()) end)
    routes:safe_add("#boot", hex)
    return routes:get("#boot") or hex
end

local function parse(value)
    if not value then return nil end
    local upstream, allocation, generation = value:match("^R (%S+) (%S+) (%d+)$")
    if not upstream then return nil end
    return { upstream = upstream, allocation = allocation, generation = tonumber(generation) }
end

-- One org's compare-and-set at a time, across workers (safe_add is atomic in the zone).
local function locked(org, f)
    local key = "#lock:" .. org
    for _ = 1, 2000 do
        local ok, err = routes:safe_add(key, 1, 2)
        if ok then
            local done, result, detail = pcall(f)
            routes:delete(key)
            if not done then return "error", tostring(result) end
            return result, detail
        end
        if err ~= "exists" then return "full", err end
        ngx.sleep(0.001)
    end
    return "error", "the org's lock stayed taken"
end

-- The greatest generation removed for the org (its tombstone), or -1.
local function gone(org)
    return tonumber(routes:get("#gone:" .. org)) or -1
end

local function put(org, upstream, allocation, generation)
    return locked(org, function()
        local removed = gone(org)
        if generation <= removed then return "stale", "removed generation " .. removed end
        local current = parse(routes:get(org))
        if current then
            if current.allocation == allocation and current.generation == generation then return "unchanged" end
            if current.generation >= generation then
                return "stale", "route of " .. current.allocation .. " generation " .. current.generation
            end
        end
        local ok, err = routes:safe_set(org, "R " .. upstream .. " " .. allocation .. " " .. generation)
        if not ok then return "full", err end
        return "stored"
    end)
end

local function remove(org, allocation, generation)
    return locked(org, function()
        local current = parse(routes:get(org))
        local mine = current ~= nil and current.allocation == allocation
        if mine then routes:delete(org) end
        -- The tombstone fences a late write of this allocation, or of any older one.
        if generation > gone(org) then
            local ok, err = routes:safe_set("#gone:" .. org, generation, ${TOMBSTONE_TTL_S})
            if not ok then ngx.log(ngx.ERR, "gateway-allocator: no room for the tombstone of ", org, ": ", err) end
        end
        if mine then return "removed" end
        if current then return "other", current.allocation end
        return "absent"
    end)
end

local function valid(org, upstream, allocation, generation)
    return org and #org == 36 and org:match("^[0-9a-f%-]+$")
        and (upstream == nil or (type(upstream) == "string" and upstream:match("^[%w%.%-%[%]:]+$")))
        and type(allocation) == "string" and #allocation == 36 and allocation:match("^[0-9a-f%-]+$")
        and type(generation) == "string" and generation:match("^%d+$")
end

local function status_line()
    local id = boot()
    return "boot " .. id .. " ready " .. (routes:get("#ready") == id and "1" or "0") .. " version __CONFIG_VERSION__\\n"
end

local function route_line(org, route)
    return org .. " " .. route.upstream .. " " .. route.allocation .. " " .. route.generation .. "\\n"
end

local method = ngx.req.get_method()
local uri = ngx.var.uri
local outcome_status = { stored = 200, unchanged = 200, removed = 200, absent = 200, other = 200, stale = 409, full = 507 }

if uri == "/boot" and method == "GET" then
    return answer(200, status_line())
end

if uri == "/routes" and method == "GET" then
    local lines = { status_line() }
    for _, org in ipairs(routes:get_keys(0)) do
        if org:sub(1, 1) ~= "#" then
            local route = parse(routes:get(org))
            if route then lines[#lines + 1] = route_line(org, route) end
        end
    end
    return answer(200, table.concat(lines))
end

if uri == "/routes" and method == "POST" then
    local args = ngx.req.get_uri_args()
    local id = boot()
    if args.boot ~= id then return answer(409, "the table's boot id is " .. id .. "\\n") end
    ngx.req.read_body()
    local data = ngx.req.get_body_data() or ""
    local counts = { stored = 0, unchanged = 0, stale = 0, full = 0, error = 0 }
    for org, upstream, allocation, generation in data:gmatch("(%S+) (%S+) (%S+) (%d+)\\n") do
        if valid(org, upstream, allocation, generation) then
            local outcome = put(org, upstream, allocation, tonumber(generation))
            counts[outcome] = (counts[outcome] or 0) + 1
        else
            counts.error = counts.error + 1
        end
    end
    local complete = counts.full == 0 and counts.error == 0
    if complete then routes:safe_set("#ready", id) end
    return answer(complete and 200 or 507, string.format("stored %d unchanged %d stale %d full %d invalid %d ready %d\\n",
        counts.stored, counts.unchanged, counts.stale, counts.full, counts.error, complete and 1 or 0))
end

local org = uri:match("^/routes/([0-9a-f%-]+)$")
if not org or #org ~= 36 then return answer(404, "no such route API path\\n") end

if method == "GET" then
    local route = parse(routes:get(org))
    if not route then return answer(404, "no route\\n") end
    return answer(200, route_line(org, route))
end

local args = ngx.req.get_uri_args()
if method == "PUT" then
    if type(args.upstream) ~= "string" or not valid(org, args.upstream, args.allocation, args.generation) then
        return answer(400, "PUT needs upstream, allocation and generation\\n")
    end
    local outcome, detail = put(org, args.upstream, args.allocation, tonumber(args.generation))
    return answer(outcome_status[outcome] or 500, outcome .. (detail and (" " .. detail) or "") .. "\\n")
end
if method == "DELETE" then
    if not valid(org, nil, args.allocation, args.generation) then
        return answer(400, "DELETE needs allocation and generation\\n")
    end
    local outcome, detail = remove(org, args.allocation, tonumber(args.generation))
    return answer(outcome_status[outcome] or 500, outcome .. (detail and (" " .. detail) or "") .. "\\n")
end
return answer(405, "method not allowed\\n")`
