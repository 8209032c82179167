// Direct calls to the outside systems, the way the service makes them, for the raw-cost figures:
// nginx as a process (`-s reload`, `-t`), PowerDNS's HTTP API, the gateway protocol (health,
// handshake, release), and the route probe through nginx on a fresh connection.
import { execFile } from "node:child_process"
import { randomUUID } from "node:crypto"
import { readFileSync } from "node:fs"
import { rename, rm, writeFile } from "node:fs/promises"
import * as http from "node:http"
import path from "node:path"
import { EDGE_FILE, PROBE_PATH, PROBE_SECRET_HEADER } from "../../src/nginx/config.ts"
import { now, sleep } from "./stats.ts"

export interface CommandResult {
  readonly code: number | null
  readonly stderr: string
  readonly ms: number
}

/** Runs a command to its end (bounded by `timeoutMs`), timing spawn to exit. */
export const runCommand = (command: string, args: ReadonlyArray<string>, timeoutMs = 30_000): Promise<CommandResult> =>
  new Promise((resolve) => {
    const start = now()
    execFile(command, [...args], { timeout: timeoutMs, killSignal: "SIGKILL" }, (error, _stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : null
      resolve({ code, stderr: String(stderr), ms: now() - start })
    })
  })

export interface NginxTarget {
  readonly bin: string
  readonly mainConf: string
  readonly confDir: string
  readonly port: number
}

export const nginxReload = async (nginx: NginxTarget): Promise<number> => {
  const result = await runCommand(nginx.bin, ["-s", "reload", "-c", nginx.mainConf])
  if (result.code !== 0) throw new Error(`nginx -s reload exited ${result.code}: ${result.stderr.trim()}`)
  return result.ms
}

export const nginxTest = async (nginx: NginxTarget): Promise<number> => {
  const result = await runCommand(nginx.bin, ["-t", "-q", "-c", nginx.mainConf])
  if (result.code !== 0) throw new Error(`nginx -t exited ${result.code}: ${result.stderr.trim()}`)
  return result.ms
}

/** The edge's probe secret, from the file the service keeps in NGINX_CONF_DIR. */
export const probeSecretOf = (confDir: string): string =>
  (JSON.parse(readFileSync(path.join(confDir, EDGE_FILE), "utf8")) as { probeSecret: string }).probeSecret

/** One GET of the route-probe location with the org's Host, on a fresh connection (as the service does). */
export const probe = (port: number, host: string, secret: string, timeoutMs = 2000): Promise<{ status: number; body: string }> =>
  new Promise((resolve, reject) => {
    const request = http.request(
      {
        host: "127.0.0.1",
        port,
        path: PROBE_PATH,
        method: "GET",
        headers: { host, connection: "close", [PROBE_SECRET_HEADER]: secret },
        agent: false
      },
      (response) => {
        const chunks: Array<Buffer> = []
        response.on("data", (chunk: Buffer) => chunks.push(chunk))
        response.on("end", () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }))
        response.on("error", reject)
      }
    )
    request.setTimeout(timeoutMs, () => request.destroy(new Error(`probe: no answer within ${timeoutMs} ms`)))
    request.on("error", reject)
    request.end()
  })

export const timedProbe = async (nginx: NginxTarget, host: string): Promise<number> => {
  const start = now()
  const answer = await probe(nginx.port, host, probeSecretOf(nginx.confDir))
  if (answer.status !== 200) throw new Error(`probe answered HTTP ${answer.status}`)
  return now() - start
}

/**
 * A map entry of the benchmark's own, in a file the service does not own (its name is not
 * `org-{uuid}.conf`, so the reconciler never lists or removes it), used to see when a reload
 * is served: rewrite it with a new marker, reload, and poll the probe until nginx answers it.
 */
export class ProbeRoute {
  readonly organizationId = randomUUID()
  readonly file: string
  readonly host: string
  marker = ""
  constructor(readonly nginx: NginxTarget, domain: string) {
    this.file = path.join(nginx.confDir, "routes", "zz-bench-probe.conf")
    this.host = `org-${this.organizationId}.${domain}`
  }
  async write(): Promise<string> {
    this.marker = randomUUID()
    const entry = `.${this.host} "127.0.0.1:9 ${this.marker}";\n`
    const temp = `${path.dirname(this.file)}/.zz-bench-probe.tmp`
    await writeFile(temp, entry)
    await rename(temp, this.file)
    return this.marker
  }
  remove(): Promise<void> {
    return rm(this.file, { force: true })
  }
  /**
   * Rewrites the entry, reloads, then probes (fresh connections) until nginx answers the new
   * marker, and then until no worker older than the one that answered still accepts connections
   * (nginx keeps the old generation accepting for 100 ms after starting the new one). Where the
   * probe does not name the answering worker (`$pid`, older service versions), the second wait is
   * `confirmations` answers in a row instead. Returns the reload's own time, the time to the first
   * new answer and the time until nginx surely serves the change, within `timeoutMs`.
   */
  async reloadUntilLive(confirmations = 3, timeoutMs = 5000): Promise<{ reloadMs: number; firstMs: number; liveMs: number }> {
    const marker = await this.write()
    const start = now()
    const reloadMs = await nginxReload(this.nginx)
    let firstMs = Number.NaN
    let streak = 0
    let delay = 1
    while (now() - start < timeoutMs) {
      const answer = await probe(this.nginx.port, this.host, probeSecretOf(this.nginx.confDir)).catch(() => ({ status: 0, body: "" }))
      const [served, pid] = answer.body.trim().split(/\s+/)
      if (answer.status === 200 && served === marker) {
        if (Number.isNaN(firstMs)) firstMs = now() - start
        if (pid !== undefined && /^\d+$/.test(pid)) {
          while (now() - start < timeoutMs) {
            if (olderWorkersClosed(Number(pid))) return { reloadMs, firstMs, liveMs: now() - start }
            await sleep(2)
          }
          break
        }
        streak += 1
        if (streak >= confirmations) return { reloadMs, firstMs, liveMs: now() - start }
        continue
      }
      streak = 0
      await sleep(delay)
      delay = Math.min(delay * 2, 20)
    }
    throw new Error(`nginx did not surely serve the reloaded probe route within ${timeoutMs} ms`)
  }
}

/** /proc/PID/stat after the command name: [state, ppid, ...]; starttime is the 22nd field. */
const statFields = (pid: number): Array<string> | undefined => {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8")
    return text.slice(text.lastIndexOf(")") + 2).split(" ")
  } catch {
    return undefined
  }
}

/** True once no nginx worker started before `answeringPid` still accepts (is not "shutting down"). */
const olderWorkersClosed = (answeringPid: number): boolean => {
  const answering = statFields(answeringPid)
  if (answering === undefined) return false
  const master = Number(answering[1])
  const startTime = Number(answering[19])
  let children: Array<number>
  try {
    children = readFileSync(`/proc/${master}/task/${master}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number)
  } catch {
    return false
  }
  for (const child of children) {
    const fields = statFields(child)
    if (fields === undefined) continue
    let command = ""
    try {
      command = readFileSync(`/proc/${child}/cmdline`, "utf8").replace(/\0/g, " ")
    } catch {
      continue
    }
    if (!command.includes("worker process") || command.includes("shutting down")) continue
    // Generations are at least 100 ms (10 ticks) apart.
    if (Number(fields[19]) < startTime - 2) return false
  }
  return true
}

export interface PowerDnsTarget {
  readonly apiUrl: string
  readonly apiKey: string
  readonly serverId: string
  readonly zone: string
}

const zoneUrl = (pdns: PowerDnsTarget) =>
  `${pdns.apiUrl}/api/v1/servers/${encodeURIComponent(pdns.serverId)}/zones/${encodeURIComponent(pdns.zone)}`

/** PATCH of one A rrset, REPLACE (what the `dns` step sends); the name is the benchmark's own. */
export const pdnsReplace = async (pdns: PowerDnsTarget, name: string): Promise<number> => {
  const start = now()
  const response = await fetch(zoneUrl(pdns), {
    method: "PATCH",
    headers: { "x-api-key": pdns.apiKey, "content-type": "application/json" },
    body: JSON.stringify({
      rrsets: [{ name, type: "A", ttl: 60, changetype: "REPLACE", records: [{ content: "127.0.0.1", disabled: false }] }]
    }),
    signal: AbortSignal.timeout(30_000)
  })
  await response.arrayBuffer()
  if (response.status !== 204) throw new Error(`PowerDNS PATCH answered HTTP ${response.status}`)
  return now() - start
}

export const pdnsDelete = async (pdns: PowerDnsTarget, name: string): Promise<void> => {
  const response = await fetch(zoneUrl(pdns), {
    method: "PATCH",
    headers: { "x-api-key": pdns.apiKey, "content-type": "application/json" },
    body: JSON.stringify({ rrsets: [{ name, type: "A", changetype: "DELETE" }] }),
    signal: AbortSignal.timeout(30_000)
  })
  await response.arrayBuffer()
}

export const gatewayHealth = async (upstream: string): Promise<number> => {
  const start = now()
  const response = await fetch(`http://${upstream}/collab/ping`, { signal: AbortSignal.timeout(10_000) })
  await response.arrayBuffer()
  if (response.status !== 200) throw new Error(`health answered HTTP ${response.status}`)
  return now() - start
}

/**
 * A handshake for a new allocation, timed, then its release, not timed: a gateway holds one
 * allocation at a time and answers 409 to a handshake for another until it is released.
 */
export const gatewayHandshake = async (upstream: string): Promise<number> => {
  const ids = { organization_id: randomUUID(), gateway_id: randomUUID(), allocation_id: randomUUID() }
  const start = now()
  const response = await fetch(`http://${upstream}/collab/start`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...ids, gateway_hostname: "bench.domain.local" }),
    signal: AbortSignal.timeout(10_000)
  })
  await response.arrayBuffer()
  if (response.status !== 200) throw new Error(`handshake answered HTTP ${response.status}`)
  const ms = now() - start
  await gatewayRelease(upstream, ids)
  return ms
}

const gatewayRelease = async (
  upstream: string,
  ids: { readonly organization_id: string; readonly gateway_id: string; readonly allocation_id: string }
): Promise<void> => {
  const response = await fetch(`http://${upstream}/collab/stop`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(ids),
    signal: AbortSignal.timeout(10_000)
  })
  await response.arrayBuffer()
  if (response.status !== 200) throw new Error(`release answered HTTP ${response.status}`)
}
