// Small numeric helpers for the benchmark: timing, percentiles, bounded concurrency.

export interface Summary {
  readonly n: number
  readonly p50: number
  readonly p99: number
  readonly mean: number
  readonly min: number
  readonly max: number
}

/** Nearest-rank percentile (p in 0..100) of an unsorted sample; NaN for an empty one. */
export const percentile = (values: ReadonlyArray<number>, p: number): number => {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)))
  return sorted[rank - 1]!
}

export const summarize = (values: ReadonlyArray<number>): Summary => ({
  n: values.length,
  p50: round(percentile(values, 50)),
  p99: round(percentile(values, 99)),
  mean: round(values.length === 0 ? Number.NaN : values.reduce((a, b) => a + b, 0) / values.length),
  min: round(values.length === 0 ? Number.NaN : Math.min(...values)),
  max: round(values.length === 0 ? Number.NaN : Math.max(...values))
})

export const median = (values: ReadonlyArray<number>): number => round(percentile(values, 50))

export const round = (value: number, digits = 2): number => {
  if (!Number.isFinite(value)) return value
  const factor = 10 ** digits
  return Math.round(value * factor) / factor
}

export const now = (): number => performance.now()

export const timed = async <A>(f: () => Promise<A>): Promise<{ readonly value: A; readonly ms: number }> => {
  const start = now()
  const value = await f()
  return { value, ms: now() - start }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * `concurrency` workers, each running `task` while `more()` says so. `more` is checked before
 * every task, so callers bound the work (count and deadline) there; every loop ends.
 */
export const runWorkers = async (
  concurrency: number,
  more: () => boolean,
  task: (worker: number) => Promise<void>
): Promise<void> => {
  const workers = Array.from({ length: concurrency }, async (_, worker) => {
    while (more()) await task(worker)
  })
  await Promise.all(workers)
}

/** Runs `task` over `items` with at most `concurrency` at a time. */
export const forEachConcurrent = async <T>(
  items: ReadonlyArray<T>,
  concurrency: number,
  task: (item: T) => Promise<void>
): Promise<void> => {
  let next = 0
  await runWorkers(Math.min(concurrency, Math.max(1, items.length)), () => next < items.length, async () => {
    const item = items[next++]!
    await task(item)
  })
}
