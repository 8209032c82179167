// The service's HTTP API (the README's API table), as the benchmark drives it.
import { now } from "./stats.ts"

export interface ApiAnswer<T = any> {
  readonly status: number
  readonly body: T
  readonly ms: number
}

export interface JournalEntry {
  readonly step: string
  readonly event: string
  readonly actor: string
  readonly detail: string | null
  readonly duration_ms: number | null
  readonly at: string
}

export interface AllocationView {
  readonly allocation_id: string
  readonly state: string
  readonly created_at: string
  readonly steps: ReadonlyArray<JournalEntry>
  readonly rollback: ReadonlyArray<{ step: string; status: string; duration_ms?: number }>
}

export class ApiClient {
  constructor(readonly baseUrl: string, readonly token: string) {}

  async call<T = any>(method: string, path: string, body?: unknown, timeoutMs = 120_000): Promise<ApiAnswer<T>> {
    const start = now()
    const response = await fetch(`${this.baseUrl}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { "content-type": "application/json" })
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(timeoutMs)
    })
    const text = await response.text()
    const ms = now() - start
    let parsed: unknown = text
    try {
      parsed = text === "" ? null : JSON.parse(text)
    } catch {
      // not JSON: keep the text
    }
    return { status: response.status, body: parsed as T, ms }
  }

  start(organizationId: string) {
    return this.call("POST", "/gateway/start", { organization_id: organizationId })
  }

  stop(organizationId: string) {
    return this.call("POST", "/gateway/stop", { organization_id: organizationId })
  }

  allocation(allocationId: string) {
    return this.call<AllocationView>("GET", `/allocations/${allocationId}`)
  }

  addGateway(name: string, upstream: string) {
    return this.call("POST", "/pool/gateways", { name, upstream })
  }
}

/** Throws with the answer's body unless the status is the expected one. */
export const expectStatus = <T>(answer: ApiAnswer<T>, status: number, what: string): ApiAnswer<T> => {
  if (answer.status !== status) {
    throw new Error(`${what}: expected HTTP ${status}, got ${answer.status}: ${JSON.stringify(answer.body).slice(0, 500)}`)
  }
  return answer
}
