// What dist/ is built from, hashed: the build records it, `npm start` compares it (scripts/prestart.mjs).
import { createHash } from "node:crypto"
import { readdirSync, readFileSync } from "node:fs"
import path from "node:path"

export const root = path.resolve(import.meta.dirname, "..")
export const buildInfoFile = path.join(root, "dist", "build-info.json")

const files = (dir) =>
  readdirSync(path.join(root, dir), { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.relative(root, path.join(entry.parentPath, entry.name)))

/** What the build reads besides src/: the lock file, the build scripts and the client's tsconfig. */
const BUILD_FILES = [
  "package-lock.json",
  "scripts/build.mjs",
  "scripts/buildInputs.mjs",
  "scripts/serviceBundle.mjs",
  "scripts/buildClient.mjs",
  "tsconfig.client.json"
]

/** sha256 over the sources and BUILD_FILES, by path and content. */
export const inputsHash = () => {
  const hash = createHash("sha256")
  const inputs = [...files("src"), ...BUILD_FILES].sort()
  for (const file of inputs) hash.update(`${file}\0`).update(readFileSync(path.join(root, file))).update("\0")
  return hash.digest("hex")
}
