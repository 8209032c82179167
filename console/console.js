// @ts-check
// The operator console: a page over the public API, polled every 2 s. Data from the service is
// only ever put in the page as text (textContent, DOM APIs), never parsed as markup.

/**
 * The API's bodies are not written here: api.d.ts has them, generated from the service's OpenAPI
 * document (`npm run console-types`), so a change to the API this file does not follow fails its
 * type check (test/build/console-types.test.ts).
 * @template {keyof import("./api").Operations} K
 * @template {keyof import("./api").Operations[K]["responses"]} S
 * @typedef {import("./api").ResponseBody<K, S>} ResponseBody
 */
/**
 * @template {keyof import("./api").Operations} K
 * @typedef {import("./api").RequestBody<K>} RequestBody
 */
/**
 * @typedef {ResponseBody<"pool.get", 200>} Pool
 * @typedef {Pool["gateways"][number]} PoolGateway
 * @typedef {ResponseBody<"edges.list", 200>["edges"][number]} Edge
 * @typedef {ResponseBody<"allocations.get", 200>} Allocation
 * @typedef {Allocation["steps"][number]} JournalEntry
 * @typedef {Allocation["rollback"][number]} UndoOutcome
 * @typedef {ResponseBody<"health.readyz", 503>["not_ready"][number]} NotReadyDependency
 * What the page shows as not ready: what /readyz names, or the service itself when /readyz is unreadable.
 * @typedef {Omit<NotReadyDependency, "dependency"> & { dependency: NotReadyDependency["dependency"] | "service" }} NotReady
 * @typedef {{ pool: Pool, edges: Edge[], live: Allocation[], finished: Allocation[], rolledBack: Allocation[],
 *   repairs: Map<string, number>, notReady: NotReady[] }} Snapshot
 */

const TOKEN_KEY = "gateway-allocator.token"
const POLL_MS = 2000
const LIVE_STATES = ["starting", "active", "stopping", "rolling_back"]
const FINAL_STATES = ["released", "rolled_back"]
const RECENT = 25
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
/** A second click within this time confirms a stop or a removal. */
const CONFIRM_MS = 4000

/** The API answered with an error (or not at all): `message` is what the operator reads. */
class ApiError extends Error {
  /** @param {number} status @param {string} message @param {unknown} body */
  constructor(status, message, body) {
    super(message)
    this.status = status
    this.body = body
  }
}

// ---------------------------------------------------------------------------------------------
// DOM

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string | undefined>} [attributes] set as attributes (never `style` or `on*`)
 * @param {...(Node | string | null | undefined)} children text is added as text
 * @returns {HTMLElementTagNameMap[K]}
 */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag)
  for (const [name, value] of Object.entries(attributes)) if (value !== undefined) element.setAttribute(name, value)
  for (const child of children) if (child !== null && child !== undefined) element.append(child)
  return element
}

/**
 * @template {HTMLElement} T
 * @param {string} selector
 * @param {{ new(): T }} type
 * @returns {T}
 */
function $(selector, type) {
  const element = document.querySelector(selector)
  if (!(element instanceof type)) throw new Error(`console.html lacks ${selector}`)
  return element
}

/** Replaces a container's content only when what it shows changed (no flicker, clicks land). */
const rendered = new WeakMap()
/** @param {HTMLElement} container @param {unknown} data @param {() => Array<Node | null>} build */
function renderInto(container, data, build) {
  const key = JSON.stringify(data)
  if (rendered.get(container) === key) return
  rendered.set(container, key)
  container.replaceChildren(...build().filter((node) => node !== null))
}

/** @param {string | null} iso */
function time(iso) {
  if (iso === null) return ""
  const date = new Date(iso)
  const today = new Date().toDateString() === date.toDateString()
  return today ? date.toLocaleTimeString() : date.toLocaleString()
}

/** @param {number | null} ms */
const duration = (ms) => ms === null ? "" : ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`

/** @param {string} text @param {string} kind */
const badge = (text, kind) => h("span", { class: `badge ${kind}` }, text)

/** @param {string} state */
const stateBadge = (state) =>
  badge(state, { active: "ok", released: "muted", rolled_back: "bad", rolling_back: "warn", draining: "warn" }[state] ?? "info")

/** @param {string} label @param {string} action @param {string} id @param {string} [confirm] label of the second click */
function actionButton(label, action, id, confirm) {
  const armed = confirm !== undefined && pendingConfirm?.key === `${action}:${id}`
  return h("button", { type: "button", "data-action": action, "data-id": id, class: armed ? "armed" : undefined }, armed ? confirm ?? label : label)
}

/** @param {string[]} headings @param {Node[]} rows @param {string} empty */
function table(headings, rows, empty) {
  if (rows.length === 0) return [h("p", { class: "muted" }, empty)]
  return [h("table", {}, h("thead", {}, h("tr", {}, ...headings.map((text) => h("th", {}, text)))), h("tbody", {}, ...rows))]
}

// ---------------------------------------------------------------------------------------------
// API

/** @returns {string | null} */
const token = () => sessionStorage.getItem(TOKEN_KEY)

/**
 * One call with the bearer token. A 401 forgets the token and asks for it again. The caller says
 * which body it expects (a ResponseBody cast), so what it reads of the answer is type-checked.
 * @param {string} method @param {string} path @param {unknown} [body]
 * @returns {Promise<unknown>}
 */
async function api(method, path, body) {
  const bearer = token()
  if (bearer === null) throw new ApiError(401, "no token", undefined)
  /** @type {Record<string, string>} */
  const headers = { authorization: `Bearer ${bearer}` }
  if (body !== undefined) headers["content-type"] = "application/json"
  const response = await fetch(path, {
    method,
    headers,
    cache: "no-store",
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  }).catch((/** @type {unknown} */ error) => {
    throw new ApiError(0, `cannot reach the service (${error instanceof Error ? error.message : String(error)})`, undefined)
  })
  const text = await response.text()
  const json = parseJson(text)
  if (response.status === 401) {
    signOut("The service refused this token (401 Unauthorized): enter the API_TOKEN it runs with.")
    throw new ApiError(401, "token refused", json)
  }
  if (!response.ok) throw new ApiError(response.status, errorText(response.status, json, text), json)
  return json
}

/** @param {string} text @returns {unknown} */
function parseJson(text) {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** What an error answer says, in one line: its tag, the failed step, its message. @param {number} status @param {any} body @param {string} text */
function errorText(status, body, text) {
  if (typeof body !== "object" || body === null) return `HTTP ${status}: ${text.slice(0, 200)}`
  const step = typeof body.step === "string" ? ` at ${body.step}` : ""
  return `HTTP ${status} ${body._tag ?? ""}${step}: ${body.message ?? JSON.stringify(body).slice(0, 200)}`
}

/** @param {Record<string, string | number | undefined>} query */
const allocationsPath = (query) => {
  const params = new URLSearchParams()
  for (const [name, value] of Object.entries(query)) if (value !== undefined && value !== "") params.set(name, String(value))
  return `/allocations?${params}`
}

/**
 * What /readyz (no auth) says is not usable now: none while Postgres, PowerDNS and an nginx edge
 * answer; unreadable answers count as the service itself.
 * @returns {Promise<NotReady[]>}
 */
async function readiness() {
  const response = await fetch("/readyz", { cache: "no-store" })
  if (response.ok) return []
  const body = /** @type {Partial<ResponseBody<"health.readyz", 503>> | undefined} */ (parseJson(await response.text()))
  return Array.isArray(body?.not_ready)
    ? body.not_ready
    : [{ dependency: "service", reason: `/readyz answered HTTP ${response.status}`, since: new Date().toISOString() }]
}

/** The reconciler's drift repairs counted by this replica, by kind, from /metrics (no auth). */
async function repairCounts() {
  const response = await fetch("/metrics", { cache: "no-store" })
  /** @type {Map<string, number>} */
  const counts = new Map()
  if (!response.ok) return counts
  for (const line of (await response.text()).split("\n")) {
    const match = /^gateway_allocator_reconciler_repairs_total\{[^}]*kind="([^"]+)"[^}]*\} ([0-9.e+]+)/.exec(line)
    if (match !== null) counts.set(match[1], (counts.get(match[1]) ?? 0) + Number(match[2]))
  }
  return counts
}

// ---------------------------------------------------------------------------------------------
// State

/** @type {Snapshot | null} */
let snapshot = null
/** @type {Allocation | null} */
let selected = null
/** @type {string | null} */
let selectedId = null
/** @type {{ key: string, until: number } | null} */
let pendingConfirm = null
/** @type {number | undefined} */
let timer

/** @returns {{ state: string, organization_id: string }} */
function filters() {
  const form = $("#filters", HTMLFormElement)
  const state = String(new FormData(form).get("state") ?? "")
  const organization = String(new FormData(form).get("organization_id") ?? "").trim()
  $("#filter-error", HTMLElement).textContent = organization === "" || UUID.test(organization) ? "" : "not a UUID: filter ignored"
  return { state, organization_id: UUID.test(organization) ? organization : "" }
}

/** @returns {Promise<Snapshot>} */
async function load() {
  const filter = filters()
  /** One request per distinct path in a refresh. @type {Map<string, Promise<ResponseBody<"allocations.list", 200>>>} */
  const lists = new Map()
  /** @param {string} path */
  const list = (path) => {
    const known = lists.get(path)
    if (known !== undefined) return known
    const loading = /** @type {Promise<ResponseBody<"allocations.list", 200>>} */ (api("GET", path))
    lists.set(path, loading)
    return loading
  }
  /** @param {Promise<ResponseBody<"allocations.list", 200>>[]} loading @returns {Promise<Allocation[]>} */
  const merged = async (loading) =>
    (await Promise.all(loading)).flatMap((answer) => answer.allocations).sort((a, b) => b.created_at.localeCompare(a.created_at))
  const finalStates = filter.state === "" ? FINAL_STATES : FINAL_STATES.filter((state) => state === filter.state)
  const [pool, edges, live, finished, rolledBack, repairs, notReady] = await Promise.all([
    /** @type {Promise<Pool>} */ (api("GET", "/pool")),
    /** @type {Promise<ResponseBody<"edges.list", 200>>} */ (api("GET", "/edges")),
    // Every live allocation (the pool shows whom each gateway serves); the filters apply on display.
    merged(LIVE_STATES.map((state) => list(allocationsPath({ state, limit: 500 })))),
    merged(finalStates.map((state) => list(allocationsPath({ state, organization_id: filter.organization_id, limit: RECENT })))),
    merged([list(allocationsPath({ state: "rolled_back", limit: RECENT }))]),
    repairCounts().catch(() => /** @type {Map<string, number>} */ (new Map())),
    readiness().catch(() => /** @type {NotReady[]} */ ([]))
  ])
  return { pool, edges: edges.edges, live, finished: finished.slice(0, RECENT), rolledBack, repairs, notReady }
}

/** Bumped at every sign-in and sign-out: a refresh still loading from an earlier session renders nothing. */
let session = 0

async function refresh() {
  window.clearTimeout(timer)
  if (token() === null) return
  const started = session
  try {
    const loaded = await load()
    const detail = selectedId === null ? selected : /** @type {Allocation} */ (await api("GET", `/allocations/${selectedId}`))
    if (started !== session) return
    snapshot = loaded
    selected = detail
    setStatus(`Updated ${new Date().toLocaleTimeString()}, every ${POLL_MS / 1000} s`, false)
    render()
  } catch (error) {
    if (started !== session || (error instanceof ApiError && error.status === 401)) return
    setStatus(error instanceof Error ? error.message : String(error), true)
  }
  // One timer at a time, however many refreshes ran at once (polling, actions).
  window.clearTimeout(timer)
  if (token() !== null && !document.hidden) timer = window.setTimeout(refresh, POLL_MS)
}

/** @param {string} text @param {boolean} failed */
function setStatus(text, failed) {
  const status = $("#status", HTMLElement)
  status.textContent = text
  status.classList.toggle("error", failed)
}

/** @param {string} text @param {boolean} failed */
function say(text, failed) {
  const message = $("#message", HTMLElement)
  message.textContent = text
  message.className = failed ? "error" : "ok"
}

// ---------------------------------------------------------------------------------------------
// Rendering

function render() {
  if (snapshot === null) return
  const { pool, live } = snapshot
  const filter = filters()
  const gatewayNames = new Map(pool.gateways.map((gateway) => [gateway.gateway_id, gateway.name]))
  const liveByAllocation = new Map(live.map((allocation) => [allocation.allocation_id, allocation]))
  /** @param {string | null} id */
  const gatewayName = (id) => id === null ? "(removed)" : gatewayNames.get(id) ?? id
  const confirming = pendingConfirm?.key ?? null

  // Not ready: starts will fail until what is named here answers again.
  renderInto($("#readiness", HTMLElement), snapshot.notReady, () =>
    snapshot === null || snapshot.notReady.length === 0
      ? []
      : [h("strong", {}, "Not ready: "),
        ...snapshot.notReady.map((item) => h("span", { "data-dependency": item.dependency }, `${item.dependency} (since ${time(item.since)}: ${item.reason}) `))])

  renderInto($("#pool-counts", HTMLElement), [pool.total, pool.free, pool.allocated, pool.available, pool.quarantined, pool.draining, pool.unreleased, pool.held], () =>
    ["total", "free", "allocated", "available", "quarantined", "draining", "unreleased", "held"].flatMap((name) => [
      h("div", { "data-count": name }, h("dt", {}, name), h("dd", {}, String(pool[/** @type {keyof Pool} */ (name)])))
    ]))

  renderInto($("#pool-gateways", HTMLElement), [pool.gateways, [...liveByAllocation.keys()], confirming], () =>
    table(["Name", "Upstream", "State", "Health", "Organization", "Quarantined until", "Last failure", ""],
      pool.gateways.map((gateway) => {
        const allocation = gateway.allocation_id === null ? undefined : liveByAllocation.get(gateway.allocation_id)
        const quarantined = gateway.quarantined_until !== null && Date.parse(gateway.quarantined_until) > Date.now()
        return h("tr", { "data-gateway": gateway.name, class: quarantined ? "quarantined" : undefined },
          h("td", {}, gateway.name),
          h("td", { class: "mono" }, gateway.upstream),
          // Held: an edge may still route its last org to it (it owes that removal), so it is not handed out.
          h("td", {}, stateBadge(gateway.state), ...gateway.held_by_edges.map((edge) => badge(`held by edge ${edge}`, "warn"))),
          // unreleased: its release failed, so it may still hold an org's connections: not handed out.
          h("td", {}, badge(gateway.health, gateway.health === "healthy" ? "ok" : gateway.health === "unknown" ? "muted" : "bad")),
          h("td", { class: "mono" }, allocation === undefined
            ? (gateway.allocation_id === null ? "" : "(allocated)")
            : h("button", { type: "button", class: "link", "data-action": "open", "data-id": allocation.allocation_id }, allocation.organization_id)),
          h("td", {}, quarantined ? time(gateway.quarantined_until) : ""),
          h("td", { class: "failure" }, gateway.last_failure ?? ""),
          h("td", { class: "actions" },
            gateway.state === "active"
              ? actionButton("Drain", "drain", gateway.gateway_id)
              : actionButton("Undrain", "undrain", gateway.gateway_id),
            gateway.allocation_id === null ? actionButton("Remove", "remove", gateway.gateway_id, "Confirm remove") : null))
      }), "No gateway in the pool."))

  renderEdges(snapshot.edges)

  const shownLive = live.filter((allocation) =>
    (filter.state === "" || allocation.state === filter.state) &&
    (filter.organization_id === "" || allocation.organization_id === filter.organization_id.toLowerCase()))
  renderInto($("#live", HTMLElement), [shownLive.map(summary), [...gatewayNames], confirming, selectedId], () =>
    table(["Organization", "Gateway", "Hostname", "State", "Since", ""], shownLive.map((allocation) =>
      h("tr", { "data-org": allocation.organization_id, "data-allocation": allocation.allocation_id, class: allocation.allocation_id === selectedId ? "selected" : undefined },
        h("td", { class: "mono" }, allocation.organization_id),
        h("td", {}, gatewayName(allocation.gateway_id)),
        h("td", { class: "mono" }, allocation.gateway_hostname),
        h("td", {}, stateBadge(allocation.state)),
        h("td", {}, time(allocation.created_at)),
        h("td", { class: "actions" },
          actionButton("Steps", "open", allocation.allocation_id),
          allocation.state === "active" ? actionButton("Stop", "stop", allocation.organization_id, "Confirm stop") : null))
    ), "No live allocation."))

  const { finished } = snapshot
  renderInto($("#finished", HTMLElement), [finished.map(summary), [...gatewayNames], selectedId], () =>
    table(["Organization", "Gateway", "State", "Started", "Finished", "Failed step", ""], finished.map((allocation) =>
      h("tr", { "data-org": allocation.organization_id, "data-allocation": allocation.allocation_id, class: allocation.allocation_id === selectedId ? "selected" : undefined },
        h("td", { class: "mono" }, allocation.organization_id),
        h("td", {}, gatewayName(allocation.gateway_id)),
        h("td", {}, stateBadge(allocation.state)),
        h("td", {}, time(allocation.created_at)),
        h("td", {}, time(allocation.finished_at)),
        h("td", {}, failureOf(allocation)?.step ?? ""),
        h("td", { class: "actions" }, actionButton("Steps", "open", allocation.allocation_id)))
    ), "Nothing finished recently."))

  renderRollbacks(snapshot, gatewayName)
  renderDetail(gatewayName)
}

/** @type {Record<Edge["state"], string>} */
const EDGE_STATUS = { ready: "ok", behind: "warn", unreachable: "bad", draining: "muted" }

/** Every edge: its status, what it last told a replica, the gateways it holds. @param {Edge[]} edges */
function renderEdges(edges) {
  renderInto($("#edge-list", HTMLElement), edges, () =>
    table(["Name", "Status", "Boot", "Last seen", "Routes", "Held gateways", "Last error"], edges.map((edge) =>
      h("tr", { "data-edge": edge.name },
        h("td", {}, edge.name, edge.local ? " " : null, edge.local ? badge("local", "info") : null,
          h("small", { class: "mono" }, edge.route_api_url)),
        h("td", {}, badge(edge.state, EDGE_STATUS[edge.state])),
        h("td", { class: "mono", title: edge.boot_id ?? undefined }, edge.boot_id === null ? "-" : edge.boot_id.slice(0, 8)),
        h("td", {}, edge.last_seen === null ? "never" : time(edge.last_seen)),
        h("td", {}, String(edge.route_count)),
        // It owes their last org's removal: none of them is handed out until it has acknowledged it.
        h("td", { "data-held": String(edge.held_gateways) }, edge.held_gateways === 0 ? "0" : badge(String(edge.held_gateways), "warn")),
        h("td", { class: "failure" }, edge.last_error ?? ""))
    ), "No edge registered."))
}

/** What a table row shows of an allocation (its re-render key). @param {Allocation} allocation */
const summary = (allocation) => [allocation.allocation_id, allocation.state, allocation.gateway_id, allocation.finished_at, allocation.steps.length]

/** The forward step that failed or timed out, if one did. @param {Allocation} allocation */
const failureOf = (allocation) => allocation.steps.find((entry) => entry.event === "failed" || entry.event === "timed_out")

/** @param {UndoOutcome} outcome */
const unfinished = (outcome) => outcome.status === "failed" || outcome.status === "timed_out"

/** @param {Snapshot} data @param {(id: string | null) => string} gatewayName */
function renderRollbacks(data, gatewayName) {
  // Failed starts still rolling back (an incomplete rollback waits for the reconciler), then the recent ones.
  const rollbacks = [...data.live.filter((allocation) => allocation.state === "rolling_back"), ...data.rolledBack]
  const reconciled = [...data.live, ...data.finished, ...data.rolledBack]
    .filter((allocation, index, all) => all.findIndex((other) => other.allocation_id === allocation.allocation_id) === index)
    .filter((allocation) => allocation.steps.some((entry) => entry.actor === "reconciler"))
  renderInto($("#rollback-list", HTMLElement), [rollbacks.map(summary), reconciled.map(summary), selectedId], () => [
    ...table(["Organization", "Failed step", "Rollback", ""], rollbacks.map((allocation) => {
      const incomplete = allocation.rollback.some(unfinished)
      const byReconciler = allocation.steps.some((entry) => entry.event.startsWith("undo") && entry.actor === "reconciler")
      return h("tr", { "data-allocation": allocation.allocation_id, class: incomplete ? "incomplete" : undefined },
        h("td", { class: "mono" }, allocation.organization_id, h("small", {}, `${gatewayName(allocation.gateway_id)}, ${time(allocation.created_at)}`)),
        h("td", {}, failureOf(allocation)?.step ?? (allocation.state === "rolling_back" ? "(rolling back)" : "")),
        h("td", { class: "chips" },
          incomplete ? badge(allocation.state === "rolling_back" ? "incomplete" : "was incomplete", "bad") : null,
          byReconciler ? badge("by the reconciler", "warn") : null,
          ...allocation.rollback.map((outcome) => badge(`${outcome.step}: ${outcome.status}`, unfinished(outcome) ? "bad" : outcome.status === "done" ? "ok" : "muted"))),
        h("td", { class: "actions" }, actionButton("Steps", "open", allocation.allocation_id)))
    }), "No failed start recently."),
    h("h3", {}, "Taken over by the reconciler"),
    ...table(["Organization", "State", "Last change", ""], reconciled.map((allocation) =>
      h("tr", { "data-allocation": allocation.allocation_id },
        h("td", { class: "mono" }, allocation.organization_id),
        h("td", {}, stateBadge(allocation.state)),
        h("td", {}, time(allocation.updated_at)),
        h("td", { class: "actions" }, actionButton("Steps", "open", allocation.allocation_id)))
    ), "None among the allocations shown.")
  ])
  renderInto($("#repairs", HTMLElement), [...data.repairs], () =>
    data.repairs.size === 0
      ? [h("div", {}, h("dt", {}, "none"), h("dd", {}, "0"))]
      : [...data.repairs].map(([kind, count]) => h("div", {}, h("dt", {}, kind.replaceAll("_", " ")), h("dd", {}, String(count)))))
}

// ---------------------------------------------------------------------------------------------
// One allocation: its steps and undos as a waterfall

/**
 * @typedef {{ undo: boolean, step: string, actor: string, outcome: string, detail: string | null, start: number, ms: number | null }} Bar
 */

/** Pairs each `started` with the outcome that follows it (a step or undo still running has none). @param {JournalEntry[]} entries @returns {Bar[]} */
function barsOf(entries) {
  /** @type {Map<string, JournalEntry>} */
  const open = new Map()
  /** @type {Bar[]} */
  const bars = []
  for (const entry of entries) {
    const undo = entry.event.startsWith("undo")
    const key = `${undo}:${entry.step}:${entry.actor}`
    if (entry.event === "started" || entry.event === "undo_started") {
      open.set(key, entry)
      continue
    }
    const started = open.get(key)
    open.delete(key)
    const end = Date.parse(entry.at)
    const ms = entry.duration_ms ?? (started === undefined ? null : end - Date.parse(started.at))
    bars.push({ undo, step: entry.step, actor: entry.actor, outcome: entry.event, detail: entry.detail, start: started === undefined ? end - (ms ?? 0) : Date.parse(started.at), ms })
  }
  for (const entry of open.values()) {
    bars.push({ undo: entry.event === "undo_started", step: entry.step, actor: entry.actor, outcome: "running", detail: null, start: Date.parse(entry.at), ms: null })
  }
  // Forward steps first, then the undos, each in the order they ran.
  return [...bars.filter((bar) => !bar.undo), ...bars.filter((bar) => bar.undo)].sort((a, b) => Number(a.undo) - Number(b.undo) || a.start - b.start)
}

/** @type {Record<string, [string, string]>} */
const OUTCOMES = {
  completed: ["completed", "ok"],
  failed: ["failed", "bad"],
  timed_out: ["timed out", "bad"],
  skipped: ["skipped", "muted"],
  undone: ["undone", "ok"],
  undo_failed: ["undo failed", "bad"],
  undo_timed_out: ["undo timed out", "bad"],
  undo_skipped: ["undo skipped", "muted"],
  running: ["running", "info"]
}

/** @param {string | null} url */
const safeLink = (url) => {
  if (url === null) return null
  const parsed = URL.canParse(url) ? new URL(url) : null
  return parsed !== null && (parsed.protocol === "http:" || parsed.protocol === "https:") ? parsed.href : null
}

/** @param {(id: string | null) => string} gatewayName */
function renderDetail(gatewayName) {
  const body = $("#detail-body", HTMLElement)
  const allocation = selected
  if (allocation === null) {
    renderInto(body, null, () => [h("p", { class: "muted" }, "Select an allocation to see its steps and undos.")])
    return
  }
  renderInto(body, [allocation, gatewayName(allocation.gateway_id)], () => {
    const bars = barsOf(allocation.steps)
    const t0 = Math.min(...bars.map((bar) => bar.start))
    const t1 = Math.max(...bars.map((bar) => bar.start + (bar.ms ?? 0)))
    const span = Math.max(t1 - t0, 1)
    const failure = failureOf(allocation)
    const link = safeLink(allocation.trace_url)
    return [
      h("dl", { class: "facts" },
        ...[
          ["Allocation", allocation.allocation_id],
          ["Organization", allocation.organization_id],
          ["Gateway", `${gatewayName(allocation.gateway_id)} (${allocation.upstream})`],
          ["Hostname", allocation.gateway_hostname],
          ["Runner", allocation.runner],
          ["Started", time(allocation.created_at)],
          ["Finished", time(allocation.finished_at) || "-"]
        ].flatMap(([name, value]) => [h("dt", {}, name), h("dd", { class: "mono" }, value)]),
        h("dt", {}, "State"), h("dd", { id: "detail-state" }, stateBadge(allocation.state)),
        h("dt", {}, "Trace"),
        h("dd", { class: "mono", id: "detail-trace" },
          allocation.trace_id ?? "-",
          link === null ? null : " ",
          link === null ? null : h("a", { href: link, target: "_blank", rel: "noopener noreferrer" }, "open trace"))),
      failure === undefined ? null : h("div", { class: "caller-error", id: "detail-error" },
        h("strong", {}, `The caller got: ${failure.step} ${failure.event === "timed_out" ? "timed out" : "failed"}`),
        h("p", {}, failure.detail ?? "")),
      allocation.error === null ? null : h("details", {}, h("summary", {}, "Cause, as recorded"),
        h("pre", {}, typeof allocation.error === "string" ? allocation.error : JSON.stringify(allocation.error, null, 2))),
      h("ol", { class: "waterfall", id: "waterfall" }, ...bars.map((bar) => {
        const [label, kind] = OUTCOMES[bar.outcome] ?? [bar.outcome, "info"]
        const track = h("span", { class: "track" })
        const fill = h("span", { class: `bar ${kind}` })
        // Positions go through the CSSOM, which the Content-Security-Policy allows (no style attributes).
        fill.style.left = `${((bar.start - t0) / span) * 100}%`
        fill.style.width = `${Math.max(((bar.ms ?? 0) / span) * 100, 0.5)}%`
        track.append(fill)
        return h("li", { class: bar.undo ? "undo" : "step", "data-step": bar.step, "data-outcome": bar.outcome, title: bar.detail ?? undefined },
          h("span", { class: "name" }, bar.undo ? `undo ${bar.step}` : bar.step),
          h("span", { class: "actor" }, bar.actor),
          badge(label, kind),
          h("span", { class: "ms" }, duration(bar.ms)),
          track)
      }))
    ]
  })
}

// ---------------------------------------------------------------------------------------------
// Actions

/** Says what went wrong (a refused token has said so already). @param {unknown} error */
function report(error) {
  if (error instanceof ApiError && error.status === 401) return
  say(error instanceof Error ? error.message : String(error), true)
}

/** Shows one allocation's steps and undos. @param {string} id */
async function show(id) {
  try {
    selectedId = id
    selected = /** @type {Allocation} */ (await api("GET", `/allocations/${id}`))
    render()
    $("#detail", HTMLElement).scrollIntoView({ block: "nearest" })
  } catch (error) {
    report(error)
  }
}

/**
 * Runs an action, says how it went, refreshes. A failed start that made an allocation opens it.
 * @param {() => Promise<string>} action
 */
async function act(action) {
  try {
    say(await action(), false)
  } catch (error) {
    report(error)
    const made = error instanceof ApiError && typeof error.body === "object" && error.body !== null && "allocation_id" in error.body
      ? error.body.allocation_id
      : undefined
    if (typeof made === "string") {
      $("#message", HTMLElement).append(" ", h("button", { type: "button", class: "link", "data-action": "open", "data-id": made }, "see its steps"))
      void show(made)
    }
  }
  await refresh()
}

/** A stop or a removal needs a second click within CONFIRM_MS. @param {string} key */
function confirmed(key) {
  if (pendingConfirm !== null && pendingConfirm.key === key && pendingConfirm.until > Date.now()) {
    pendingConfirm = null
    return true
  }
  pendingConfirm = { key, until: Date.now() + CONFIRM_MS }
  window.setTimeout(() => {
    if (pendingConfirm?.key === key && pendingConfirm.until <= Date.now()) {
      pendingConfirm = null
      render()
    }
  }, CONFIRM_MS + 50)
  render()
  return false
}

/** @param {string} action @param {string} id */
function onAction(action, id) {
  switch (action) {
    case "open":
      return show(id)
    case "drain":
    case "undrain":
      return act(async () => {
        const gateway = /** @type {ResponseBody<"pool.setGatewayState", 200>} */ (await api("PATCH", `/pool/gateways/${id}`,
          /** @satisfies {RequestBody<"pool.setGatewayState">} */ ({ state: action === "drain" ? "draining" : "active" })))
        return `${gateway.name} is ${gateway.state}`
      })
    case "remove":
      if (!confirmed(`remove:${id}`)) return
      return act(async () => {
        await api("DELETE", `/pool/gateways/${id}`)
        return "gateway removed from the pool"
      })
    case "stop":
      if (!confirmed(`stop:${id}`)) return
      return act(async () => {
        const stopped = /** @type {ResponseBody<"gateway.stop", 200>} */ (await api("POST", "/gateway/stop",
          /** @satisfies {RequestBody<"gateway.stop">} */ ({ organization_id: id })))
        return `${stopped.organization_id} stopped: its gateway is back in the pool`
      })
  }
}

/** What the service said is gone from the page with the token. */
const VIEWS = ["#pool-counts", "#pool-gateways", "#edge-list", "#live", "#finished", "#rollback-list", "#repairs", "#detail-body", "#message"]

/** @param {string} message */
function signOut(message) {
  session += 1
  sessionStorage.removeItem(TOKEN_KEY)
  window.clearTimeout(timer)
  snapshot = null
  selected = null
  selectedId = null
  for (const selector of VIEWS) {
    const view = $(selector, HTMLElement)
    rendered.delete(view)
    view.replaceChildren()
  }
  $("#app", HTMLElement).hidden = true
  $("#sign-out", HTMLElement).hidden = true
  $("#login", HTMLElement).hidden = false
  $("#login-error", HTMLElement).textContent = message
  setStatus("", false)
  $("#token", HTMLInputElement).focus()
}

function signIn() {
  session += 1
  $("#login", HTMLElement).hidden = true
  $("#app", HTMLElement).hidden = false
  $("#sign-out", HTMLElement).hidden = false
  $("#login-error", HTMLElement).textContent = ""
  void refresh()
}

/** @param {string} selector @param {(data: FormData, form: HTMLFormElement) => void} handler */
function onSubmit(selector, handler) {
  const form = $(selector, HTMLFormElement)
  form.addEventListener("submit", (event) => {
    event.preventDefault()
    handler(new FormData(form), form)
  })
}

/** @param {FormData} data @param {string} name */
const field = (data, name) => String(data.get(name) ?? "").trim()

onSubmit("#login-form", (data, form) => {
  sessionStorage.setItem(TOKEN_KEY, field(data, "token"))
  form.reset()
  signIn()
})

onSubmit("#add-gateway", (data, form) =>
  act(async () => {
    const added = /** @type {ResponseBody<"pool.addGateway", 201>} */ (await api("POST", "/pool/gateways",
      /** @satisfies {RequestBody<"pool.addGateway">} */ ({ name: field(data, "name"), upstream: field(data, "upstream") })))
    form.reset()
    return `${added.name} (${added.upstream}) added to the pool`
  }))

onSubmit("#start-org", (data) =>
  act(async () => {
    const started = /** @type {ResponseBody<"gateway.start", 200>} */ (await api("POST", "/gateway/start",
      /** @satisfies {RequestBody<"gateway.start">} */ ({ organization_id: field(data, "organization_id") })))
    void show(started.allocation_id)
    return `${started.organization_id} ${started.reused ? "already had" : "started on"} ${started.gateway_hostname}`
  }))

onSubmit("#filters", () => void refresh())
$("#filters", HTMLFormElement).addEventListener("change", () => void refresh())
$("#random-org", HTMLButtonElement).addEventListener("click", () => {
  const input = $("#start-org", HTMLFormElement).elements.namedItem("organization_id")
  if (input instanceof HTMLInputElement) input.value = crypto.randomUUID()
})
$("#sign-out", HTMLButtonElement).addEventListener("click", () => signOut("Token forgotten."))

document.addEventListener("click", (event) => {
  const button = event.target instanceof Element ? event.target.closest("button[data-action]") : null
  if (!(button instanceof HTMLButtonElement)) return
  void onAction(button.dataset["action"] ?? "", button.dataset["id"] ?? "")
})

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) void refresh()
})

if (token() === null) signOut("")
else signIn()
