// CPU seconds per component (from /proc), to see where a phase's CPU went on this 2-core box.
import { readdirSync, readFileSync } from "node:fs"

const TICKS_PER_SECOND = 100 // USER_HZ on Linux

interface ProcStat {
  readonly ppid: number
  /** utime + stime: the process itself. */
  readonly self: number
  /** cutime + cstime: its children that exited and were reaped. */
  readonly reaped: number
}

const readStat = (pid: number): ProcStat | undefined => {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ")
    // fields[0] is state (field 3); utime is field 14 -> fields[11].
    const n = (i: number) => Number(fields[i])
    return { ppid: n(1), self: n(11) + n(12), reaped: n(13) + n(14) }
  } catch {
    return undefined
  }
}

/**
 * User and system CPU milliseconds of one process so far (all its threads: utime and stime of
 * /proc/PID/stat, in ticks of 10 ms), apart; its children not included.
 */
export const processCpuMs = (pid: number): { readonly userMs: number; readonly systemMs: number } | undefined => {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ")
    return { userMs: (Number(fields[11]) * 1000) / TICKS_PER_SECOND, systemMs: (Number(fields[12]) * 1000) / TICKS_PER_SECOND }
  } catch {
    return undefined
  }
}

const allStats = (): Map<number, ProcStat> => {
  const stats = new Map<number, ProcStat>()
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    const stat = readStat(Number(entry))
    if (stat !== undefined) stats.set(Number(entry), stat)
  }
  return stats
}

/** CPU seconds of `root`, its live descendants and its reaped children, in ticks. */
const treeTicks = (root: number, stats: Map<number, ProcStat>): number => {
  const rootStat = stats.get(root)
  if (rootStat === undefined) return Number.NaN
  let total = rootStat.self + rootStat.reaped
  const queue = [root]
  const seen = new Set(queue)
  for (let i = 0; i < queue.length && i < 100_000; i++) {
    for (const [pid, stat] of stats) {
      if (stat.ppid === queue[i] && !seen.has(pid)) {
        seen.add(pid)
        queue.push(pid)
        total += stat.self + stat.reaped
      }
    }
  }
  return total
}

export type CpuSnapshot = Record<string, number>

/** Busy CPU seconds of the whole machine (all cores) since boot, from /proc/stat. */
const machineBusySeconds = (): number => {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? ""
    const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number)
    return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / TICKS_PER_SECOND
  } catch {
    return Number.NaN
  }
}

/**
 * Seconds of CPU used so far by each named process tree, by this (benchmark) process and the
 * children it reaped, and by the whole machine. A tree must be alive at both ends of a delta.
 */
export const cpuSnapshot = (roots: Readonly<Record<string, number | undefined>>): CpuSnapshot => {
  const stats = allStats()
  const snapshot: CpuSnapshot = {}
  for (const [name, pid] of Object.entries(roots)) {
    if (pid !== undefined) snapshot[name] = treeTicks(pid, stats) / TICKS_PER_SECOND
  }
  // This process with its reaped children: the nginx commands it ran, and servers that exited.
  const self = readStat(process.pid)
  snapshot.bench = self === undefined ? Number.NaN : (self.self + self.reaped) / TICKS_PER_SECOND
  snapshot.machine = machineBusySeconds()
  return snapshot
}

/**
 * CPU seconds used between two snapshots, per component, their total, and "other": what the rest
 * of the machine used meanwhile (another job on the box shows up there and skews every figure).
 */
export const cpuDelta = (before: CpuSnapshot, after: CpuSnapshot): Record<string, number> => {
  const delta: Record<string, number> = {}
  let total = 0
  for (const [name, value] of Object.entries(after)) {
    if (name === "machine") continue
    const used = Math.round((value - (before[name] ?? 0)) * 100) / 100
    if (Number.isFinite(used)) {
      delta[name] = used
      total += used
    }
  }
  delta.total = Math.round(total * 100) / 100
  const machine = (after.machine ?? Number.NaN) - (before.machine ?? Number.NaN)
  if (Number.isFinite(machine)) delta.other = Math.max(0, Math.round((machine - total) * 100) / 100)
  return delta
}
