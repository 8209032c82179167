// The profiled server's flame graph as one self-contained SVG (no script, no font to fetch): an
// icicle, the root on top and callees below, each frame as wide as its share of the sampled time,
// coloured by category (legend at the top), each with a <title> tooltip (function, file:line, ms
// per cycle, share). Drawn from the call tree of profile/cpuProfile.ts (merged by frame, already
// restricted to the cycles' samples); idle time is left out of the graph and named in its title.
import type { CategoryKind, MergedNode } from "./profile/cpuProfile.ts"

export const FLAME_WIDTH = 1600
/** Frames narrower than this share of the graph's time are dropped (with their callees). */
export const FLAME_MIN_SHARE = 0.001
const ROW = 17
const FONT = 11
/** Average advance of an 11 px monospace glyph. */
const CHAR = 6.6
const PAD = 10

const escape = (text: string) =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")

/** Fixed colours for the common categories; the others get a hue from their name. */
const FIXED: Record<string, string> = {
  "(garbage collector)": "#d9534f",
  "(program)": "#9e9e9e",
  native: "#bdbdbd",
  "node: internals": "#7cb342",
  effect: "#f0a04b",
  "@effect/platform": "#e8b86d",
  "@effect/platform-node": "#e3c27a",
  "@effect/sql": "#d4a373",
  "@effect/sql-pg": "#c9965f",
  "@effect/opentelemetry": "#d98f8f",
  pg: "#5b8fd9",
  "pg-protocol": "#7aa7e6",
  "pg-pool": "#94b8ec",
  "dist/main.js (esbuild's helpers)": "#cfcfcf",
  "dist/main.js (not attributed)": "#e6dfc8"
}

const hash = (text: string) => {
  let h = 2166136261
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619)
  return h >>> 0
}

export const categoryColour = (category: string, kind: CategoryKind): string => {
  const fixed = FIXED[category]
  if (fixed !== undefined) return fixed
  const h = hash(category)
  // The service's own folders in purples and pinks, other packages in teals and blues.
  if (kind === "service") return `hsl(${270 + (h % 60)}, 55%, ${62 + (h % 14)}%)`
  if (category.startsWith("@opentelemetry/")) return `hsl(${170 + (h % 20)}, 45%, ${55 + (h % 15)}%)`
  if (kind === "package") return `hsl(${185 + (h % 45)}, 40%, ${58 + (h % 16)}%)`
  return `hsl(${h % 360}, 25%, 70%)`
}

export interface FlameOptions {
  readonly title: string
  readonly subtitle: string
  /** What one cycle is, for the tooltips' "ms per cycle". */
  readonly cycles: number
  /** The stack depth at which the tree was cut (mergedTree), said in the subtitle. */
  readonly depthCap: number
}

interface Box {
  readonly node: MergedNode
  readonly x: number
  readonly width: number
  readonly depth: number
  /** The callees too narrow to draw, summed into one grey box: how many there were. */
  readonly smaller?: number
}

const SMALLER = "(smaller frames)"

/** The SVG of `root` (the merged tree without its idle frame: `root.total` is the graph's 100%). */
export const renderFlameGraph = (root: MergedNode, options: FlameOptions): string => {
  const total = root.total
  const usable = FLAME_WIDTH - 2 * PAD
  const boxes: Array<Box> = []
  // Self time by category over the whole tree, dropped frames included (the legend's shares).
  const categories = new Map<string, { readonly kind: CategoryKind; us: number }>()
  const tally = (node: MergedNode) => {
    const seen = categories.get(node.frame.category) ?? { kind: node.frame.kind, us: 0 }
    seen.us += node.self
    categories.set(node.frame.category, seen)
    for (const child of node.children.values()) tally(child)
  }
  tally(root)
  let dropped = 0
  const place = (node: MergedNode, x: number, depth: number) => {
    const width = (node.total / total) * usable
    boxes.push({ node, x, width, depth })
    let cx = x
    let small = 0
    let smallCount = 0
    for (const child of [...node.children.values()].sort((a, b) => b.total - a.total)) {
      if (child.total / total < FLAME_MIN_SHARE) {
        small += child.total
        smallCount += 1
        continue
      }
      place(child, cx, depth + 1)
      cx += (child.total / total) * usable
    }
    dropped += small
    // The callees too narrow to draw, together, when that is wide enough: the rest of the width
    // under a frame is then its self time alone.
    if (small / total >= FLAME_MIN_SHARE) {
      const frame = { name: `${smallCount} smaller frames`, file: "", line: 0, category: SMALLER, kind: "other" as const }
      boxes.push({ node: { frame, self: small, total: small, children: new Map(), truncated: false }, x: cx, width: (small / total) * usable, depth: depth + 1, smaller: smallCount })
    }
  }
  if (total > 0) place(root, PAD, 0)
  const depth = boxes.reduce((max, box) => Math.max(max, box.depth), 0)

  // The legend: categories by self time, largest first, wrapped over as many lines as needed.
  // (Categories under 0.05% of the graph are left out of it.)
  const legend = [...categories.entries()].filter(([, c]) => c.us / total >= 0.0005).sort((a, b) => b[1].us - a[1].us)
  const legendItems: Array<{ readonly x: number; readonly y: number; readonly name: string; readonly kind: CategoryKind; readonly share: number }> = []
  let lx = PAD
  let ly = 62
  for (const [name, c] of legend) {
    const label = `${name} ${((c.us / total) * 100).toFixed(1)}%`
    const w = 16 + label.length * CHAR + 14
    if (lx + w > FLAME_WIDTH - PAD) {
      lx = PAD
      ly += 18
    }
    legendItems.push({ x: lx, y: ly, name, kind: c.kind, share: c.us / total })
    lx += w
  }
  const top = ly + 22
  const height = top + (depth + 1) * ROW + PAD + 16

  const ms = (us: number) => (us / 1000 / options.cycles).toFixed(3)
  const out: Array<string> = []
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${FLAME_WIDTH}" height="${height}" viewBox="0 0 ${FLAME_WIDTH} ${height}" ` +
      `font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="${FONT}">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="${PAD}" y="22" font-size="15" font-weight="bold">${escape(options.title)}</text>`,
    `<text x="${PAD}" y="42" fill="#444">${escape(options.subtitle)}</text>`
  )
  for (const item of legendItems) {
    out.push(
      `<g><title>${escape(`${item.name}: ${(item.share * 100).toFixed(2)}% of the graph's time in its own frames`)}</title>` +
        `<rect x="${item.x.toFixed(1)}" y="${item.y - 10}" width="12" height="12" fill="${categoryColour(item.name, item.kind)}" stroke="#666" stroke-width="0.5"/>` +
        `<text x="${(item.x + 16).toFixed(1)}" y="${item.y}">${escape(`${item.name} ${(item.share * 100).toFixed(1)}%`)}</text></g>`
    )
  }
  for (const box of boxes) {
    const { frame } = box.node
    const y = top + box.depth * ROW
    const where = frame.file === "" ? "" : ` ${frame.file}${frame.line > 0 ? `:${frame.line}` : ""}`
    const isRoot = box.depth === 0
    const name = isRoot ? "all (busy) samples" : frame.name
    const tooltip = box.smaller !== undefined
      ? `${box.smaller} callees of ${box.depth - 1 === 0 ? "the root" : "the frame above"}, each under ${FLAME_MIN_SHARE * 100}% of the graph: ` +
        `${ms(box.node.total)} ms per cycle together (${((box.node.total / total) * 100).toFixed(2)}%)`
      : `${name}${where}\n${frame.category}\n` +
      `total ${ms(box.node.total)} ms per cycle (${((box.node.total / total) * 100).toFixed(2)}%), ` +
      `self ${ms(box.node.self)} ms per cycle (${((box.node.self / total) * 100).toFixed(2)}%)` +
      (box.node.truncated ? `\ncallees deeper than ${options.depthCap} frames cut: their time is in this frame's self` : "")
    const fill = isRoot ? "#e0e0e0" : box.smaller !== undefined ? "#eeeeee" : categoryColour(frame.category, frame.kind)
    const chars = Math.floor((box.width - 4) / CHAR)
    const label = chars < 3 ? "" : name.length <= chars ? name : `${name.slice(0, chars - 1)}…`
    out.push(
      `<g><title>${escape(tooltip)}</title><rect x="${box.x.toFixed(2)}" y="${y}" width="${Math.max(0.5, box.width - 0.5).toFixed(2)}" ` +
        `height="${ROW - 1}" fill="${fill}"${box.node.truncated || box.smaller !== undefined ? ` stroke="#999" stroke-dasharray="2,2"` : ""}/>` +
        (label === "" ? "" : `<text x="${(box.x + 2).toFixed(2)}" y="${y + ROW - 5}">${escape(label)}</text>`) +
        `</g>`
    )
  }
  out.push(
    `<text x="${PAD}" y="${height - 8}" fill="#666">${
      escape(
        `Not drawn: frames under ${FLAME_MIN_SHARE * 100}% of the graph (${((dropped / Math.max(1, total)) * 100).toFixed(1)}% of the time); ` +
          `dashed grey: a frame's callees under ${FLAME_MIN_SHARE * 100}% each, together. Dashed coloured: callees below ${options.depthCap} ` +
          "frames cut. Hover a frame for its file:line and ms."
      )
    }</text>`,
    `</svg>`
  )
  return `${out.join("\n")}\n`
}
