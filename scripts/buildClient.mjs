// gateway-allocator/client (package.json "exports"), built by `npm run build`: dist/client/index.js,
// one ESM bundle of src/client and the API definition it imports (its packages, effect and
// @effect/platform, stay imports: the caller's own copies), and its declarations under dist/types
// (tsconfig.client.json). `node scripts/buildClient.mjs` builds it alone (test/build/client.test.ts).
import * as esbuild from "esbuild"
import { rmSync } from "node:fs"
import path from "node:path"
import { fileURLToPath } from "node:url"
import ts from "typescript"
import { root } from "./buildInputs.mjs"

export const clientEntry = path.join(root, "src", "client", "index.ts")

/** The sources import "./x.ts"; the declarations import "./x.js", which any TypeScript (and tool) resolves. */
const jsSpecifiers = (text) => text.replace(/((?:from|import)\s*\(?\s*)(["'])(\.{1,2}\/[^"']*)\.ts\2/g, "$1$2$3.js$2")

/** The declarations, or the compiler's diagnostics as one message. */
const emitDeclarations = () => {
  const configFile = path.join(root, "tsconfig.client.json")
  const config = ts.getParsedCommandLineOfConfigFile(configFile, {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (diagnostic) => {
      throw new Error(ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n"))
    }
  })
  if (config === undefined) throw new Error(`cannot read ${configFile}`)
  const program = ts.createProgram({ rootNames: config.fileNames, options: config.options })
  const result = program.emit(undefined, (file, text) => ts.sys.writeFile(file, jsSpecifiers(text)), undefined, true)
  const diagnostics = [...ts.getPreEmitDiagnostics(program), ...result.diagnostics]
  if (diagnostics.length > 0) {
    throw new Error(ts.formatDiagnostics(diagnostics, {
      getCanonicalFileName: (file) => file,
      getCurrentDirectory: () => root,
      getNewLine: () => "\n"
    }))
  }
}

/** dist/client and dist/types, made anew; dist/main.js is left as it is. */
export const buildClient = async () => {
  for (const dir of ["client", "types"]) rmSync(path.join(root, "dist", dir), { recursive: true, force: true })
  const built = await esbuild.build({
    entryPoints: [clientEntry],
    outfile: path.join(root, "dist", "client", "index.js"),
    bundle: true,
    // effect and @effect/platform are the caller's: one copy of Effect in its process.
    packages: "external",
    platform: "node",
    format: "esm",
    target: "node20",
    sourcemap: "linked",
    sourcesContent: false,
    metafile: true,
    logLevel: "warning"
  })
  emitDeclarations()
  return built.metafile
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const started = performance.now()
  await buildClient()
  process.stderr.write(`built dist/client and dist/types in ${Math.round(performance.now() - started)} ms\n`)
}
