import { existsSync } from "node:fs"
import path from "node:path"
import { fileURLToPath } from "node:url"

/**
 * The folder of this package's package.json, found by walking up from this module: the same from
 * src/ (tsx, tests) and from the dist/ bundle, so files read at run time (database/, assets) are
 * found either way.
 */
export const packageRoot = ((): string => {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  while (!existsSync(path.join(dir, "package.json")) && path.dirname(dir) !== dir) dir = path.dirname(dir)
  return dir
})()
