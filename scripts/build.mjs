// `npm run build`: the service as one ESM bundle, dist/main.js with its source map. Effect's
// packages are free of side effects, so the bundle keeps only the modules the service reaches
// (the barrels' cluster, rpc, workflow... are left out). dist/build-info.json records the inputs'
// hash for scripts/prestart.mjs. Files read at run time stay where they are: database/*.sql (found
// from the package root, see src/lib/packageRoot.ts) and Swagger UI (the swagger-ui-dist package).
// The bundle's esbuild options are in scripts/serviceBundle.mjs (the benchmark's profile builds it
// again in memory with them). Then the callers' client, gateway-allocator/client: dist/client and
// dist/types (scripts/buildClient.mjs).
import * as esbuild from "esbuild"
import { readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import path from "node:path"
import { buildClient } from "./buildClient.mjs"
import { buildInfoFile, inputsHash, root } from "./buildInputs.mjs"
import { serviceBundleOptions } from "./serviceBundle.mjs"

const started = performance.now()
const hash = inputsHash()
rmSync(path.join(root, "dist"), { recursive: true, force: true })
await esbuild.build(serviceBundleOptions(root))
// The map keeps the service's own sources only: mapped, node_modules' code made ~95% of it, and
// Node holds a parsed map in memory (measured: ~65 MiB of RSS with the whole map).
const mapFile = path.join(root, "dist", "main.js.map")
writeFileSync(mapFile, JSON.stringify(ownSourcesOnly(JSON.parse(readFileSync(mapFile, "utf8")))))
const serviceMs = Math.round(performance.now() - started)
await buildClient()
writeFileSync(buildInfoFile, `${JSON.stringify({ inputsHash: hash, builtAt: new Date().toISOString() }, null, 2)}\n`)
const mib = (file) => (statSync(path.join(root, "dist", file)).size / 1024 / 1024).toFixed(1)
process.stderr.write(
  `built dist/main.js (${mib("main.js")} MiB, map ${mib("main.js.map")} MiB) in ${serviceMs} ms, ` +
    `and the client (dist/client, dist/types) in ${Math.round(performance.now() - started) - serviceMs} ms\n`
)

/**
 * A source map with the mappings into node_modules removed: a run of them becomes one
 * "unmapped" segment (generated column only), so a position there maps to nothing rather than
 * to the service code before it.
 */
function ownSourcesOnly(map) {
  const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  const decode = (text) => {
    const values = []
    for (let i = 0, shift = 0, value = 0; i < text.length; i++) {
      const digit = B64.indexOf(text[i])
      value += (digit & 31) << shift
      if (digit & 32) shift += 5
      else {
        values.push(value & 1 ? -(value >>> 1) : value >>> 1)
        shift = 0
        value = 0
      }
    }
    return values
  }
  const encode = (n) => {
    let vlq = n < 0 ? (-n << 1) | 1 : n << 1
    let out = ""
    do {
      const digit = vlq & 31
      vlq >>>= 5
      out += B64[vlq > 0 ? digit | 32 : digit]
    } while (vlq > 0)
    return out
  }
  const foreign = map.sources.map((source) => source.includes("node_modules/"))
  const state = [0, 0, 0, 0] // source, line, column, name: relative across the whole map
  const written = [0, 0, 0, 0]
  let unmapped = false
  const lines = map.mappings.split(";").map((line) => {
    let column = 0
    let writtenColumn = 0
    const kept = []
    for (const segment of line === "" ? [] : line.split(",")) {
      const [dc, ...rest] = decode(segment)
      column += dc
      for (let k = 0; k < rest.length; k++) state[k] += rest[k]
      const drop = rest.length === 0 || foreign[state[0]]
      if (drop && unmapped) continue
      let out = encode(column - writtenColumn)
      writtenColumn = column
      if (!drop) {
        for (let k = 0; k < rest.length; k++) {
          out += encode(state[k] - written[k])
          written[k] = state[k]
        }
      }
      unmapped = drop
      kept.push(out)
    }
    return kept.join(",")
  })
  return { ...map, mappings: lines.join(";") }
}
