// A V8 CPU profile (node --cpu-prof) read back: each node's frame attributed to a category (an
// npm package, node's internals, native code, the service's own folders, V8's states), the
// samples kept to a time window, self time by category and by function, and the call tree merged
// by frame for the flame graph (flame.ts).
import { readFileSync } from "node:fs"
import { SourceMap } from "node:module"
import path from "node:path"
import { fileURLToPath } from "node:url"
import type { BundleMap } from "./bundleMap.ts"

export interface CallFrame {
  readonly functionName: string
  readonly scriptId: string
  readonly url: string
  /** 0-based, of the function's start. */
  readonly lineNumber: number
  readonly columnNumber: number
}

export interface ProfileNode {
  readonly id: number
  readonly callFrame: CallFrame
  readonly children?: ReadonlyArray<number>
}

/** The .cpuprofile format: nodes, and samples (node ids) with µs deltas from `startTime`. */
export interface CpuProfile {
  readonly nodes: ReadonlyArray<ProfileNode>
  /** µs of CLOCK_MONOTONIC, the clock of process.hrtime (any process on the machine). */
  readonly startTime: number
  readonly endTime: number
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
}

export const readCpuProfile = (file: string): CpuProfile => JSON.parse(readFileSync(file, "utf8")) as CpuProfile

export type CategoryKind = "state" | "package" | "node" | "native" | "service" | "bundle" | "other"

/** What a frame is, for the tables and the flame graph. */
export interface Frame {
  readonly name: string
  /** Source file (mapped through the bundle's source map), relative to the server's root; "" for none. */
  readonly file: string
  /** 1-based line of the function's start in `file`; 0 for none. */
  readonly line: number
  readonly category: string
  readonly kind: CategoryKind
}

const STATES = new Set(["(idle)", "(garbage collector)", "(program)", "(root)"])

/** `effect`, `@effect/platform`, ... from a path through node_modules (the innermost package). */
const packageOf = (file: string): string | undefined => {
  const at = file.lastIndexOf("node_modules/")
  if (at < 0) return undefined
  const parts = file.slice(at + "node_modules/".length).split("/")
  return parts[0]?.startsWith("@") ? `${parts[0]}/${parts[1] ?? ""}` : parts[0]
}

/** `src/allocation`, ... for the service's own files; `src` for the top-level ones. */
const serviceFolderOf = (file: string): string | undefined => {
  if (!file.startsWith("src/")) return undefined
  const parts = file.split("/")
  return parts.length > 2 ? `src/${parts[1]}` : "src (top level)"
}

const categoryOfFile = (file: string): { readonly category: string; readonly kind: CategoryKind } => {
  const pkg = packageOf(file)
  if (pkg !== undefined) return { category: pkg, kind: "package" }
  const folder = serviceFolderOf(file)
  if (folder !== undefined) return { category: folder, kind: "service" }
  return { category: `other (${path.basename(file)})`, kind: "other" }
}

/** Attributes every frame of the profile once (by node id). */
export const resolveFrames = (profile: CpuProfile, bundle: BundleMap, serverRoot: string): Map<number, Frame> => {
  const map = bundle.payload === undefined ? undefined : new SourceMap(bundle.payload)
  const frames = new Map<number, Frame>()
  const cache = new Map<string, Frame>()
  for (const node of profile.nodes) {
    const { functionName, url, lineNumber, columnNumber } = node.callFrame
    const key = `${functionName}\0${url}\0${lineNumber}\0${columnNumber}`
    let frame = cache.get(key)
    if (frame === undefined) {
      frame = resolveFrame(node.callFrame, bundle, map, serverRoot)
      cache.set(key, frame)
    }
    frames.set(node.id, frame)
  }
  return frames
}

const resolveFrame = (callFrame: CallFrame, bundle: BundleMap, map: SourceMap | undefined, serverRoot: string): Frame => {
  const { functionName, url, lineNumber, columnNumber } = callFrame
  const name = functionName === "" ? "(anonymous)" : functionName
  if (STATES.has(functionName) && url === "") return { name: functionName, file: "", line: 0, category: functionName, kind: "state" }
  // C++ bindings and V8 builtins (writev, JSON's parse, ...) have no script.
  if (url === "") return { name, file: "", line: 0, category: "native", kind: "native" }
  if (url.startsWith("node:")) return { name, file: url, line: lineNumber + 1, category: "node: internals", kind: "node" }
  if (url === bundle.scriptUrl) {
    if (map === undefined) return { name, file: "dist/main.js", line: lineNumber + 1, category: "dist/main.js (not attributed)", kind: "bundle" }
    const entry = map.findEntry(lineNumber, columnNumber) as { originalSource?: string; originalLine?: number }
    if (entry.originalSource === undefined) {
      // esbuild's own helpers (__esm, __toESM, ...) and the banner have no source.
      return { name, file: "dist/main.js", line: lineNumber + 1, category: "dist/main.js (esbuild's helpers)", kind: "bundle" }
    }
    const source = entry.originalSource.startsWith("file://") ? fileURLToPath(entry.originalSource) : path.resolve(bundle.mapDir, entry.originalSource)
    const file = path.relative(serverRoot, source)
    return { name, file, line: (entry.originalLine ?? 0) + 1, ...categoryOfFile(file) }
  }
  if (url.startsWith("file://")) {
    const file = path.relative(serverRoot, fileURLToPath(url))
    return { name, file, line: lineNumber + 1, ...categoryOfFile(file) }
  }
  return { name, file: url, line: lineNumber + 1, category: "other", kind: "other" }
}

/** Self µs of each node over the samples taken in [fromUs, toUs): a sample lasts until the next one. */
export const selfTimeInWindow = (profile: CpuProfile, fromUs: number, toUs: number): { readonly self: Map<number, number>; readonly samples: number; readonly totalUs: number } => {
  const self = new Map<number, number>()
  const { samples, timeDeltas } = profile
  let at = profile.startTime
  let count = 0
  let totalUs = 0
  for (let i = 0; i < samples.length; i++) {
    at += timeDeltas[i] ?? 0
    const next = i + 1 < samples.length ? at + (timeDeltas[i + 1] ?? 0) : profile.endTime
    if (at < fromUs || at >= toUs) continue
    const us = Math.max(0, Math.min(next, toUs) - at)
    const id = samples[i]!
    self.set(id, (self.get(id) ?? 0) + us)
    count += 1
    totalUs += us
  }
  return { self, samples: count, totalUs }
}

/** A node of the call tree merged by frame (name, file, line) along each path from the root. */
export interface MergedNode {
  readonly frame: Frame
  /** µs sampled in this frame itself, and in it with everything it called. */
  self: number
  total: number
  readonly children: Map<string, MergedNode>
  /** Its callees were cut off at the depth cap (their time is in `self`). */
  truncated: boolean
}

const frameKey = (frame: Frame) => `${frame.name}\0${frame.file}\0${frame.line}`

/**
 * The call tree with the profile's nodes merged by frame, the window's self times in it; stacks
 * deeper than `depthCap` frames are cut there (the deeper frames' time stays in the frame at the
 * cap). Also the deepest stack seen (frames below the root).
 */
export const mergedTree = (
  profile: CpuProfile,
  frames: Map<number, Frame>,
  self: Map<number, number>,
  depthCap: number
): { readonly root: MergedNode; readonly maxDepth: number } => {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]))
  const rootNode = profile.nodes[0]!
  const root: MergedNode = { frame: frames.get(rootNode.id)!, self: 0, total: 0, children: new Map(), truncated: false }
  let maxDepth = 0
  // Iterative: Effect's stacks are deep.
  const stack: Array<{ readonly id: number; readonly into: MergedNode; readonly depth: number }> = [{ id: rootNode.id, into: root, depth: 0 }]
  while (stack.length > 0) {
    const { id, into, depth } = stack.pop()!
    const node = byId.get(id)!
    const us = self.get(id) ?? 0
    if (us > 0 && depth > maxDepth) maxDepth = depth
    into.self += us
    for (const childId of node.children ?? []) {
      if (depth >= depthCap) {
        into.truncated = true
        stack.push({ id: childId, into, depth: depth + 1 })
        continue
      }
      const frame = frames.get(childId)!
      const key = frameKey(frame)
      let child = into.children.get(key)
      if (child === undefined) {
        child = { frame, self: 0, total: 0, children: new Map(), truncated: false }
        into.children.set(key, child)
      }
      stack.push({ id: childId, into: child, depth: depth + 1 })
    }
  }
  const totals = (node: MergedNode): number => {
    node.total = node.self
    for (const child of node.children.values()) node.total += totals(child)
    return node.total
  }
  totals(root)
  return { root, maxDepth }
}

/** Self µs by category, and by function (name, file, line), over the window. */
export const selfTimeBy = (frames: Map<number, Frame>, self: Map<number, number>) => {
  const categories = new Map<string, { readonly kind: CategoryKind; us: number }>()
  const functions = new Map<string, { readonly frame: Frame; us: number }>()
  for (const [id, us] of self) {
    const frame = frames.get(id)
    if (frame === undefined) continue
    const category = categories.get(frame.category) ?? { kind: frame.kind, us: 0 }
    category.us += us
    categories.set(frame.category, category)
    const key = frameKey(frame)
    const fn = functions.get(key) ?? { frame, us: 0 }
    fn.us += us
    functions.set(key, fn)
  }
  return { categories, functions }
}
