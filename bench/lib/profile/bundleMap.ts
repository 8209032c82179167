// The whole source map of the server's dist/main.js, for its CPU profile. The map on disk keeps
// the service's own sources only (scripts/build.mjs), so the bundle is built again in memory with
// the same esbuild options (scripts/serviceBundle.mjs) and a map that keeps node_modules; that map
// is used only if the JavaScript built in memory is the very file the profiled server ran.
import { createHash } from "node:crypto"
import { readFileSync } from "node:fs"
import type { SourceMapPayload } from "node:module"
import path from "node:path"
import { pathToFileURL } from "node:url"

/** How the bundle's frames of a profile are attributed. */
export interface BundleMap {
  /** file:// URL of the bundle as the profile names it; undefined when the server did not run one. */
  readonly scriptUrl: string | undefined
  /** Set only when the in-memory build is the file on disk (node:module's SourceMap is made from it when needed). */
  readonly payload: SourceMapPayload | undefined
  /** sha256 of dist/main.js as compared: the server must run this very file. */
  readonly hash: string | undefined
  /** The directory the map's `sources` are relative to (dist/). */
  readonly mapDir: string
  /** What was done, or why the bundle's frames are left unattributed. */
  readonly note: string
}

/** The trailing comment of dist/main.js ("linked"), which the in-memory build ("external") lacks. */
const MAP_COMMENT = "//# sourceMappingURL=main.js.map\n"

interface ServiceBundleModule {
  readonly buildServiceBundleInMemory: (root: string) => Promise<{ readonly outfile: string; readonly js: string; readonly map: string }>
}

export const sha256 = (text: string | Buffer): string => createHash("sha256").update(text).digest("hex")

/** The bundle's bytes as the server will load them. */
export const readBundle = (serverRoot: string): { readonly file: string; readonly text: string; readonly hash: string } | undefined => {
  const file = path.join(serverRoot, "dist", "main.js")
  try {
    const text = readFileSync(file, "utf8")
    return { file, text, hash: sha256(text) }
  } catch {
    return undefined
  }
}

/**
 * The bundle's full source map, when the JavaScript built in memory from `serverRoot`'s sources
 * equals `onDisk` (dist/main.js as read before the server started) without its trailing
 * `//# sourceMappingURL=main.js.map` line. The options come from this working tree's
 * scripts/serviceBundle.mjs: a BENCH_REF built with other options fails the comparison and is not
 * attributed.
 */
export const bundleSourceMap = async (
  projectRoot: string,
  serverRoot: string,
  onDisk: { readonly file: string; readonly text: string } | undefined
): Promise<BundleMap> => {
  const mapDir = path.join(serverRoot, "dist")
  if (onDisk === undefined) {
    return { scriptUrl: undefined, payload: undefined, hash: undefined, mapDir, note: "no dist/main.js: the server ran through tsx (frames attributed by file)" }
  }
  const scriptUrl = pathToFileURL(onDisk.file).href
  const hash = sha256(onDisk.text)
  const refuse = (why: string): BundleMap => ({ scriptUrl, payload: undefined, hash, mapDir, note: `dist/main.js not attributed: ${why}` })
  let built: Awaited<ReturnType<ServiceBundleModule["buildServiceBundleInMemory"]>>
  try {
    const module = (await import(pathToFileURL(path.join(projectRoot, "scripts", "serviceBundle.mjs")).href)) as ServiceBundleModule
    built = await module.buildServiceBundleInMemory(serverRoot)
  } catch (error) {
    return refuse(`the in-memory build failed (${(error as Error).message.split("\n")[0]})`)
  }
  if (!onDisk.text.endsWith(MAP_COMMENT)) return refuse(`it does not end with \`${MAP_COMMENT.trim()}\` (built with other options?)`)
  const code = onDisk.text.slice(0, -MAP_COMMENT.length)
  if (code !== built.js) {
    let at = 0
    while (at < code.length && code[at] === built.js[at]) at++
    return refuse(
      `the bundle built in memory from the sources differs from it at character ${at.toLocaleString("en")} of ` +
        `${code.length.toLocaleString("en")} (sources changed since dist/ was built, or other build options)`
    )
  }
  const payload = JSON.parse(built.map) as SourceMapPayload
  return {
    scriptUrl,
    payload,
    hash,
    mapDir,
    note: `dist/main.js mapped with its whole source map (${payload.sources.length} sources), built in memory with ` +
      "scripts/serviceBundle.mjs's options and checked equal to the file the server ran"
  }
}
