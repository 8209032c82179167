// gateway-allocator/client as a caller gets it: built (scripts/buildClient.mjs: dist/client/index.js
// and its declarations in dist/types), it loads in Node by the package's name, and a caller
// importing it by that name (package.json "exports", a self-reference) type-checks, its wrong calls
// refused (@ts-expect-error: a wrong call accepted fails the check as an unused directive). And its
// import graph: the API's definition and errors, never the server (Postgres, processes, the
// server's own packages).
import { describe, expect, it } from "@effect/vitest"
import { Data, Effect } from "effect"
import * as esbuild from "esbuild"
import { execFile } from "node:child_process"
import { readdirSync } from "node:fs"
import path from "node:path"
import ts from "typescript"
import { PROJECT_ROOT } from "../support/server.ts"

class CommandFailed extends Data.TaggedError("CommandFailed")<{ readonly command: string; readonly stderr: string }> {}

const node = (...args: ReadonlyArray<string>) =>
  Effect.async<string, CommandFailed>((resume) => {
    execFile(process.execPath, args, { cwd: PROJECT_ROOT, timeout: 60_000 }, (error, stdout, stderr) =>
      resume(error === null ? Effect.succeed(stdout) : Effect.fail(new CommandFailed({ command: args.join(" "), stderr }))))
  })

const entry = path.join(PROJECT_ROOT, "src", "client", "index.ts")

/** A caller's module, in the package (so the package's name resolves to itself), never written to disk. */
const callerFile = path.join(PROJECT_ROOT, "test", "build", "client-caller.ts")

const callerSource = `
import { FetchHttpClient } from "@effect/platform"
import { Effect, Layer, Redacted } from "effect"
import {
  createClient,
  GatewayAllocatorClient,
  isGatewayAllocatorError,
  type StartError,
  type Started,
  type StopError,
  type Stopped
} from "gateway-allocator/client"

const ClientLive = GatewayAllocatorClient.layer({
  baseUrl: "http://127.0.0.1:8080",
  token: Redacted.make("token"),
  retry: { attempts: 5, baseDelay: "50 millis" }
}).pipe(Layer.provide(FetchHttpClient.layer))

/** Every error a start can fail with, by its tag: a tag added to the API fails this switch. */
export const explain = (error: StartError): string => {
  switch (error._tag) {
    case "NoGatewayAvailable":
    case "ActivationFailed":
    case "ServiceUnavailable":
    case "Unauthorized":
    case "InvalidRequest":
      return error.message
    case "StepFailed":
      return \`\${error.step}: \${error.attempts.length} attempts, undos \${error.rollback.map((undo) => undo.status).join(",")}\`
    case "StepTimedOut":
      return \`\${error.step} after \${error.timeout_ms} ms\`
    case "TransportError":
      return \`\${error.reason} \${error.status ?? "without an answer"}\`
    default: {
      const unhandled: never = error
      return unhandled
    }
  }
}

export const startThenStop = (
  organizationId: string
): Effect.Effect<readonly [Started, Stopped | "already stopped"], StartError | StopError> =>
  Effect.gen(function*() {
    const client = yield* GatewayAllocatorClient
    const started = yield* client.start(organizationId)
    const hostname: string = started.gateway_hostname
    const reused: boolean = started.reused
    yield* Effect.log(hostname, reused)
    const stopped = yield* client.stop(organizationId).pipe(
      Effect.catchTag("NotFound", () => Effect.succeed("already stopped" as const))
    )
    return [started, stopped] as const
  }).pipe(Effect.provide(ClientLive))

export const promised = async (organizationId: string): Promise<string> => {
  const client = createClient({ baseUrl: "http://127.0.0.1:8080", token: "token", retry: false })
  try {
    return (await client.start(organizationId)).gateway_hostname
  } catch (error) {
    if (!isGatewayAllocatorError(error)) throw error
    return error._tag === "StepFailed" ? error.step : error._tag
  } finally {
    await client.close()
  }
}

// @ts-expect-error start takes the org's id, not the request's body
export const wrongArgument = Effect.flatMap(GatewayAllocatorClient, (client) => client.start({ organization_id: "x" }))

// @ts-expect-error the Effect API takes the token Redacted
export const plainToken = GatewayAllocatorClient.layer({ baseUrl: "http://127.0.0.1:8080", token: "token" })

// @ts-expect-error a stop never fails with NoGatewayAvailable
export const wrongTag: StopError["_tag"] = "NoGatewayAvailable"
`

/** The caller type-checked as a strict NodeNext project would, with the built declarations: the diagnostics, one line each. */
const checkCaller = (): ReadonlyArray<string> => {
  const options: ts.CompilerOptions = {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    lib: ["lib.es2022.d.ts"],
    types: ["node"],
    strict: true,
    noEmit: true
  }
  const host = ts.createCompilerHost(options)
  const isCaller = (file: string) => path.resolve(file) === callerFile
  const { fileExists, getSourceFile, readFile } = host
  host.fileExists = (file) => isCaller(file) || fileExists.call(host, file)
  host.readFile = (file) => isCaller(file) ? callerSource : readFile.call(host, file)
  host.getSourceFile = (file, language, ...rest) =>
    isCaller(file) ? ts.createSourceFile(file, callerSource, language) : getSourceFile.call(host, file, language, ...rest)
  const program = ts.createProgram({ rootNames: [callerFile], options, host })
  // The caller and the package's own declarations are checked; effect's are not (they are effect's).
  const declarations = path.join(PROJECT_ROOT, "dist", "types")
  const ours = program.getSourceFiles().filter((file) => isCaller(file.fileName) || file.fileName.startsWith(declarations))
  const diagnostics = [
    ...program.getOptionsDiagnostics(),
    ...program.getGlobalDiagnostics(),
    ...ours.flatMap((file) => [...program.getSyntacticDiagnostics(file), ...program.getSemanticDiagnostics(file)])
  ]
  return diagnostics.map((diagnostic) => {
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, " ")
    if (diagnostic.file === undefined || diagnostic.start === undefined) return message
    const { line } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start)
    return `${path.relative(PROJECT_ROOT, diagnostic.file.fileName)}:${line + 1}: ${message}`
  })
}

/** Every module the client's bundle is made of, and every package or built-in it imports. */
const importGraph = Effect.promise(() =>
  esbuild.build({
    entryPoints: [entry],
    bundle: true,
    write: false,
    metafile: true,
    platform: "node",
    format: "esm",
    packages: "external",
    logLevel: "silent"
  })
).pipe(Effect.map(({ metafile }) => ({
  modules: Object.keys(metafile.inputs),
  imports: [...new Set(Object.values(metafile.inputs).flatMap((input) => input.imports.filter((i) => i.external).map((i) => i.path)))]
})))

/** `@scope/name/sub` -> `@scope/name`, `name/sub` -> `name`. */
const packageOf = (specifier: string) => specifier.split("/").slice(0, specifier.startsWith("@") ? 2 : 1).join("/")

describe("gateway-allocator/client", () => {
  it.effect("imports the API's definition and errors, never the server: a caller needs effect and @effect/platform only", () =>
    Effect.gen(function*() {
      const { imports, modules } = yield* importGraph
      expect(modules).toEqual(expect.arrayContaining(["src/http/Api.ts", "src/http/errors.ts", "src/client/index.ts"]))
      const serverModules = modules.filter((module) =>
        /^src\/(allocation|db|pool|journal|readiness|telemetry|dns|handshake|dev|nginx|edges)\//.test(module) ||
        ["src/app.ts", "src/main.ts", "src/config.ts", "src/http/server.ts", "src/http/handlers.ts", "src/http/edgesHandlers.ts"].includes(module)
      )
      expect(serverModules).toEqual([])
      const packages = [...new Set(imports.filter((specifier) => !specifier.startsWith("node:")).map(packageOf))].sort()
      expect(packages).toEqual(["@effect/platform", "effect"])
      // Not a Node API at all: the same bundle runs wherever fetch does.
      expect(imports.filter((specifier) => specifier.startsWith("node:"))).toEqual([])
    }))

  it.effect("built: loads in Node by the package's name, and a caller importing it so type-checks (its wrong calls refused)", () =>
    Effect.gen(function*() {
      yield* node("scripts/buildClient.mjs")
      expect(readdirSync(path.join(PROJECT_ROOT, "dist", "client"))).toContain("index.js")
      const loaded = yield* node(
        "--input-type=module",
        "-e",
        "const client = await import('gateway-allocator/client');" +
          "console.log(JSON.stringify([" +
          "typeof client.createClient, typeof client.GatewayAllocatorClient.layer, new client.NotFound({ message: 'x' })._tag" +
          "]))"
      )
      expect(JSON.parse(loaded)).toEqual(["function", "function", "NotFound"])
      expect(checkCaller()).toEqual([])
    }), 120_000)
})
