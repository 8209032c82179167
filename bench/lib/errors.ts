// Failed calls by phase and kind, with counts, for the report: a benchmark that hides its errors lies.

/** The fields of an error answer worth a line, whatever the body turned out to be. */
const describeAnswer = (answer: { readonly status: number; readonly body: unknown }): string => {
  const body = typeof answer.body === "object" && answer.body !== null ? answer.body as Record<string, unknown> : undefined
  const text = (value: unknown) => (value === undefined || value === null ? "" : String(value))
  const message = body?.message ?? JSON.stringify(answer.body)
  return `HTTP ${answer.status} ${text(body?._tag)} ${text(body?.step)}: ${normalize(String(message))}`
}

/** Times, pids, ids and temp paths vary per call: dropped, so that one kind of error is one line. */
const normalize = (text: string): string =>
  text
    .replace(/\d{4}\/\d\d\/\d\d \d\d:\d\d:\d\d /g, "")
    .replace(/\d+#\d+: /g, "")
    .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, "{uuid}")
    .replace(/\/tmp\/ga-bench-[^/]+/g, "{tmp}")
    .slice(0, 220)

export class ErrorTally {
  private readonly kinds = new Map<string, number>()

  /** An answer that was not the expected one. */
  answer(phase: string, answer: { readonly status: number; readonly body: unknown }): void {
    this.count(`${phase}: ${describeAnswer(answer)}`)
  }

  /** A call that threw (connection refused, timeout...). */
  exception(phase: string, error: unknown): void {
    this.count(`${phase}: exception: ${normalize(error instanceof Error ? error.message : String(error))}`)
  }

  /** Something the service did that the run noted and went on with. */
  note(phase: string, what: string): void {
    this.count(`${phase}: ${what}`)
  }

  /** Most frequent first. */
  toRecord(): Record<string, number> {
    return Object.fromEntries([...this.kinds].sort((a, b) => b[1] - a[1]))
  }

  private count(key: string): void {
    this.kinds.set(key, (this.kinds.get(key) ?? 0) + 1)
  }
}
