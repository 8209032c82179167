// The service's HTTP API (the README's API table), as the benchmark drives it.
import { now } from "./stats.ts"

export interface ApiAnswer<T = unknown> {
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

/** What the bench reads of a start's answer: the allocation on 200, the error's fields otherwise. */
export interface StartBody {
  readonly allocation_id?: string
  readonly _tag?: string
  readonly step?: string
  readonly message?: string
}

export interface PoolView {
  readonly total: number
  readonly free: number
  readonly allocated: number
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

  async call<T = unknown>(method: string, path: string, body?: unknown, timeoutMs = 120_000): Promise<ApiAnswer<T>> {
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
    return this.call<StartBody>("POST", "/gateway/start", { organization_id: organizationId })
  }

  stop(organizationId: string) {
    return this.call<StartBody>("POST", "/gateway/stop", { organization_id: organizationId })
  }

  allocation(allocationId: string) {
    return this.call<AllocationView>("GET", `/allocations/${allocationId}`)
  }

  pool() {
    return this.call<PoolView>("GET", "/pool")
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
