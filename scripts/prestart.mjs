// Runs before `npm start`: builds dist/ when it is missing or was built from other sources, so a
// fresh clone's `npm start` works. Needs esbuild (a dev dependency) only when it must build.
import { existsSync, readFileSync } from "node:fs"
import { buildInfoFile, inputsHash } from "./buildInputs.mjs"

const built = existsSync(buildInfoFile) ? JSON.parse(readFileSync(buildInfoFile, "utf8")).inputsHash : undefined
if (built !== inputsHash()) {
  process.stderr.write(built === undefined ? "dist/ is missing: building\n" : "dist/ is stale: rebuilding\n")
  if (!existsSync(new URL("../node_modules/esbuild/package.json", import.meta.url))) {
    process.stderr.write("esbuild is not installed (a production install): run `npm run build` where dev dependencies are, then deploy dist/\n")
    process.exit(1)
  }
  await import("./build.mjs")
}
