import { PROBE_SECRET_HEADER } from "./config.ts"

// The route API's Lua program and the shared-memory zones it keeps (see luaConfig.ts for how the
// zones divide the work and how fencing uses them). Its own module: the http-context file only
// embeds it.

export const SHARED_DICT = "gateway_allocator_routes"
export const FENCES_DICT = "gateway_allocator_fences"
export const LOCKS_DICT = "gateway_allocator_locks"

/**
 * The lock zone: one 128-byte slot per org whose compare-and-set is running right now, so 1m
 * holds ~8,000 at once, far above the route API requests nginx's workers can hold open.
 */
export const LOCK_TABLE_SIZE = "1m"

/**
 * The longest fence the table keeps (and what a removal that names none gets: the 10 minutes
 * every fence lasted before removals said how long theirs must).
 */
export const MAX_FENCE_MS = 600_000

/** A Lua pattern for a lowercase UUID. */
const LUA_UUID = `^${"[0-9a-f]".repeat(8)}%-${"[0-9a-f]".repeat(4)}%-${"[0-9a-f]".repeat(4)}%-${"[0-9a-f]".repeat(4)}%-${"[0-9a-f]".repeat(12)}$`

/**
 * The route API's answer to a request without this edge's secret (401): how an install knows it
 * is this service's route API, rendered with another secret (an edge file recreated), and not
 * another process holding the address.
 */
export const SECRET_REFUSED = "the edge secret is missing or wrong"

/**
 * The route API, one handler:
 * - `GET /boot` -> `boot {id} ready {0|1} version {config version}`
 * - `GET /routes` -> that line, then `{org} {upstream} {allocation} {generation}` per route
 * - `GET /routes/{org}` -> the org's route line, or 404
 * - `GET /fences/{org}` -> `{generation} {ms left}`, or 404
 * - `GET /zones` -> `{zone} {capacity} {free}` per zone (bytes)
 * - `PUT /routes/{org}?upstream=&allocation=&generation=[&until=][&restore=1]` -> 200
 *   stored|restored|unchanged, 409 stale|expired, 507 full
 * - `DELETE /routes/{org}?allocation=&generation=[&fence_ms=]` -> 200 removed|absent|other, 507
 *   when its fence has no room (nothing removed)
 * - `POST /routes?boot={id}[&until=][&ready=0]` with route lines -> each put fenced as one PUT,
 *   then (unless `ready=0`: a part of a push) the table marked ready for that boot; 409 when the
 *   table's boot id is another (nothing put)
 * - `POST /fences?boot={id}` with lines `fence {org} {allocation} {generation} {fence_ms}`: each a
 *   removal (after a restart emptied the fences); never marks the table ready
 * - `POST /heartbeat?boot={id}&ttl_ms={n}[&serving=0]`: a replica reached this edge and found it
 *   up to date; its readiness (READY_PATH) holds for `ttl_ms` (`serving=0`: draining, not ready);
 *   409 when the table's boot id is another
 */
export const routeApiLua = (secret: string) => `local routes = ngx.shared.${SHARED_DICT}
local fences = ngx.shared.${FENCES_DICT}
local locks = ngx.shared.${LOCKS_DICT}
local MAX_FENCE_MS = ${MAX_FENCE_MS}
local function answer(status, body)
    ngx.status = status
    ngx.print(body)
    return ngx.exit(ngx.OK)
end
-- Digests compared, so the time taken does not depend on how much of the secret was right.
local given = ngx.var.http_${PROBE_SECRET_HEADER.replace(/-/g, "_")}
if not given or ngx.sha1_bin(given) ~= ngx.sha1_bin("${secret}") then
    return answer(401, "${SECRET_REFUSED}\\n")
end

local function now_ms()
    ngx.update_time()
    return ngx.now() * 1000
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
    if routes:safe_add("#boot", hex) then
        -- The ready mark's room, taken before any route can take it (see the file's comment).
        routes:safe_add("#ready", string.rep("-", #hex))
    end
    return routes:get("#boot") or hex
end
-- Every request makes sure of the marks first: a fresh zone gets them before any route.
local boot_id = boot()

local function parse(value)
    if not value then return nil end
    local upstream, allocation, generation = value:match("^R (%S+) (%S+) (%d+)$")
    if not upstream then return nil end
    return { upstream = upstream, allocation = allocation, generation = tonumber(generation) }
end

-- A safe store (never evicts); when the zone has no room, its expired entries (reclaimed only
-- lazily) are reclaimed and the store is tried once more.
local function store(zone, method, key, value, exptime)
    local ok, err = zone[method](zone, key, value, exptime)
    if not ok and err == "no memory" then
        zone:flush_expired(0)
        ok, err = zone[method](zone, key, value, exptime)
    end
    return ok, err
end

-- One org's compare-and-set at a time, across workers (safe_add is atomic in the zone).
local function locked(org, f)
    for _ = 1, 2000 do
        local ok, err = store(locks, "safe_add", org, 1, 2)
        if ok then
            local done, result, detail = pcall(f)
            locks:delete(org)
            if not done then return "error", tostring(result) end
            return result, detail
        end
        if err ~= "exists" then return "full", "locks: " .. tostring(err) end
        ngx.sleep(0.001)
    end
    return "error", "the org's lock stayed taken"
end

-- The greatest generation removed for the org (its fence), or -1. A \`#gone:\` key in the routes
-- zone is a fence of the version before fences had a zone of their own (10 minutes at most).
local function gone(org)
    return math.max(tonumber(fences:get(org)) or -1, tonumber(routes:get("#gone:" .. org)) or -1)
end

-- Raises the org's fence to \`generation\` (or keeps a greater one), kept at least fence_ms from
-- now (one kept longer keeps its time). An existing fence is a number replaced in place: only a
-- new one needs room.
local function fence(org, generation, fence_ms)
    local keep = fence_ms / 1000
    local held = tonumber(fences:get(org))
    if held then
        local left = fences:ttl(org)
        if left and left > keep then keep = left end
        if held > generation then generation = held end
    end
    return store(fences, "safe_set", org, generation, keep)
end

-- restore: the caller holds the allocation active in Postgres (drift repair), so whatever else
-- the org's entry holds is forged or stale, and is replaced; the fence still refuses it.
local function put(org, upstream, allocation, generation_text, until_ms, restore)
    local generation = tonumber(generation_text)
    return locked(org, function()
        -- A write that arrives after its deadline (its sender gave up; nginx was busy) does not
        -- land: fences are kept only as long as a write can be in flight.
        if until_ms and now_ms() > until_ms then return "expired", "it arrived after its deadline" end
        local removed = gone(org)
        if generation <= removed then return "stale", "removed generation " .. removed end
        local current = parse(routes:get(org))
        if current then
            if current.allocation == allocation and current.generation == generation and current.upstream == upstream then
                return "unchanged"
            end
            -- An allocation has one upstream, so its own write puts it back; another allocation's
            -- entry of this generation or newer is left alone, unless this is a restore.
            local own = current.allocation == allocation and current.generation == generation
            if not restore and not own and current.generation >= generation then
                return "stale", "route of " .. current.allocation .. " generation " .. current.generation
            end
        end
        local ok, err = routes:safe_set(org, "R " .. upstream .. " " .. allocation .. " " .. generation_text)
        if not ok then return "full", "routes: " .. tostring(err) end
        return restore and "restored" or "stored"
    end)
end

local function remove(org, allocation, generation, fence_ms)
    return locked(org, function()
        -- The fence first: a removal that cannot fence late writes removes nothing (it fails and
        -- is retried) rather than remove without its fence.
        local ok, err = fence(org, generation, fence_ms)
        if not ok then return "full", "fences: " .. tostring(err) end
        local current = parse(routes:get(org))
        if current and current.allocation == allocation then
            routes:delete(org)
            return "removed"
        end
        if current then return "other", current.allocation end
        return "absent"
    end)
end

-- Lowercase UUIDs only, so every entry the table holds reads back as the service's own ids.
local function uuid(value)
    return type(value) == "string" and value:match("${LUA_UUID}") ~= nil
end
local function digits(value)
    return type(value) == "string" and #value <= 16 and value:match("^%d+$") ~= nil
end
local function upstream_ok(value)
    return type(value) == "string" and #value <= 300 and value:match("^[%w%.%-%[%]:]+$") ~= nil
end
-- fence_ms: absent, the longest fence; never longer than that.
local function fence_ms_of(value)
    if value == nil then return MAX_FENCE_MS end
    if not digits(value) or tonumber(value) < 1 then return nil end
    return math.min(tonumber(value), MAX_FENCE_MS)
end
-- until: absent, no deadline (a writer of the version before deadlines).
local function until_of(value)
    if value == nil then return true, nil end
    if not digits(value) then return false, nil end
    return true, tonumber(value)
end

local function status_line()
    return "boot " .. boot_id .. " ready " .. (routes:get("#ready") == boot_id and "1" or "0") .. " version __CONFIG_VERSION__\\n"
end

local function route_line(org, route)
    return org .. " " .. route.upstream .. " " .. route.allocation .. " " .. route.generation .. "\\n"
end

local method = ngx.req.get_method()
local uri = ngx.var.uri
local outcome_status = {
    stored = 200, restored = 200, unchanged = 200, removed = 200, absent = 200, other = 200,
    stale = 409, expired = 409, full = 507
}

if uri == "/boot" and method == "GET" then
    return answer(200, status_line())
end

if uri == "/zones" and method == "GET" then
    local lines = {}
    for _, zone in ipairs({ { "routes", routes }, { "fences", fences }, { "locks", locks } }) do
        lines[#lines + 1] = zone[1] .. " " .. zone[2]:capacity() .. " " .. zone[2]:free_space() .. "\\n"
    end
    return answer(200, table.concat(lines))
end

if uri == "/routes" and method == "GET" then
    local lines = { status_line() }
    -- get_keys holds the zone's lock while it copies the keys (every worker's lookups wait); the
    -- reads after it let this worker serve its other requests every 1,000 routes.
    for i, org in ipairs(routes:get_keys(0)) do
        if i % 1000 == 0 then ngx.sleep(0) end
        if org:sub(1, 1) ~= "#" then
            local route = parse(routes:get(org))
            if route then lines[#lines + 1] = route_line(org, route) end
        end
    end
    return answer(200, table.concat(lines))
end

if (uri == "/routes" or uri == "/fences") and method == "POST" then
    local args = ngx.req.get_uri_args()
    if args.boot ~= boot_id then return answer(409, "the table's boot id is " .. boot_id .. "\\n") end
    local deadline_ok, until_ms = until_of(args["until"])
    if not deadline_ok then return answer(400, "until must be epoch milliseconds\\n") end
    ngx.req.read_body()
    local data = ngx.req.get_body_data() or ""
    local counts = { stored = 0, restored = 0, unchanged = 0, stale = 0, expired = 0, full = 0, error = 0, fenced = 0 }
    for line in data:gmatch("([^\\n]+)\\n") do
        local fields = {}
        for field in line:gmatch("%S+") do fields[#fields + 1] = field end
        if uri == "/fences" and #fields == 5 and fields[1] == "fence" and uuid(fields[2]) and uuid(fields[3]) and digits(fields[4]) and fence_ms_of(fields[5]) then
            local outcome = remove(fields[2], fields[3], tonumber(fields[4]), fence_ms_of(fields[5]))
            if outcome == "full" or outcome == "error" then counts[outcome] = counts[outcome] + 1 else counts.fenced = counts.fenced + 1 end
        elseif uri == "/routes" and #fields == 4 and uuid(fields[1]) and upstream_ok(fields[2]) and uuid(fields[3]) and digits(fields[4]) then
            local outcome = put(fields[1], fields[2], fields[3], fields[4], until_ms, false)
            counts[outcome] = (counts[outcome] or 0) + 1
        else
            counts.error = counts.error + 1
        end
    end
    local complete = counts.full == 0 and counts.error == 0 and counts.expired == 0
    local ready = false
    -- ready=0: one part of a push; the last part marks the table ready.
    if complete and uri == "/routes" and args.ready ~= "0" then
        -- Replaces the placeholder in place; checked all the same.
        local ok, err = routes:safe_set("#ready", boot_id)
        if ok then
            ready = true
        else
            complete = false
            counts.full = counts.full + 1
            ngx.log(ngx.ERR, "gateway-allocator: no room to mark the route table ready: ", err)
        end
    end
    return answer(complete and 200 or (counts.full > 0 and 507 or 409), string.format(
        "stored %d unchanged %d stale %d expired %d full %d invalid %d fenced %d ready %d\\n",
        counts.stored, counts.unchanged, counts.stale, counts.expired, counts.full, counts.error, counts.fenced, ready and 1 or 0))
end

if uri == "/heartbeat" and method == "POST" then
    local args = ngx.req.get_uri_args()
    if args.boot ~= boot_id then return answer(409, "the table's boot id is " .. boot_id .. "\\n") end
    local ttl = digits(args.ttl_ms) and tonumber(args.ttl_ms) or nil
    if not ttl or ttl < 1 or ttl > 60000 then return answer(400, "ttl_ms must be 1-60000\\n") end
    -- In the lock zone, stored safely: a forcible set could evict an org's lock.
    local ok, err = store(locks, "safe_set", "#contact", args.serving == "0" and "draining" or "serving", ttl / 1000)
    if not ok then return answer(507, "locks: " .. tostring(err) .. "\\n") end
    return answer(200, "ok\\n")
end

local fenced_org = uri:match("^/fences/([0-9a-f%-]+)$")
if fenced_org and method == "GET" then
    local generation = fences:get(fenced_org)
    if not generation then return answer(404, "no fence\\n") end
    return answer(200, string.format("%d %d\\n", generation, math.floor((fences:ttl(fenced_org) or 0) * 1000)))
end

local org = uri:match("^/routes/([0-9a-f%-]+)$")
if not uuid(org) then return answer(404, "no such route API path\\n") end

if method == "GET" then
    local route = parse(routes:get(org))
    if not route then return answer(404, "no route\\n") end
    return answer(200, route_line(org, route))
end

local args = ngx.req.get_uri_args()
if method == "PUT" then
    local deadline_ok, until_ms = until_of(args["until"])
    if not (upstream_ok(args.upstream) and uuid(args.allocation) and digits(args.generation) and deadline_ok) then
        return answer(400, "PUT needs upstream, allocation and generation (and until, epoch ms, if any)\\n")
    end
    local outcome, detail = put(org, args.upstream, args.allocation, args.generation, until_ms, args.restore == "1")
    return answer(outcome_status[outcome] or 500, outcome .. (detail and (" " .. detail) or "") .. "\\n")
end
if method == "DELETE" then
    local fence_ms = fence_ms_of(args.fence_ms)
    if not (uuid(args.allocation) and digits(args.generation) and fence_ms) then
        return answer(400, "DELETE needs allocation and generation (and fence_ms, 1 or more, if any)\\n")
    end
    local outcome, detail = remove(org, args.allocation, tonumber(args.generation), fence_ms)
    return answer(outcome_status[outcome] or 500, outcome .. (detail and (" " .. detail) or "") .. "\\n")
end
return answer(405, "method not allowed\\n")`
