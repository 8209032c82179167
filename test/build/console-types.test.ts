// The console takes the API's bodies from console/api.d.ts, generated from the OpenAPI document
// (scripts/console-types.ts). CI runs the tests, not `tsc -p console`, so both halves are checked
// here: the committed file is what the API generates now, and console.js type-checks against the
// API's current types. Two negative controls show that a change to the API fails that check.
import { OpenApi } from "@effect/platform"
import { readFileSync } from "node:fs"
import path from "node:path"
import ts from "typescript"
import { describe, expect, it } from "vitest"
import { consoleTypes, consoleTypesFile } from "../../scripts/console-types.ts"
import { Api } from "../../src/http/Api.ts"

const consoleConfig = path.join(path.dirname(consoleTypesFile), "tsconfig.json")

const parsed = new Map<string, ts.SourceFile>()

/** `tsc -p console` with api.d.ts read as `apiTypes`: its diagnostics, one line each. */
const checkConsole = (apiTypes: string): ReadonlyArray<string> => {
  const config = ts.getParsedCommandLineOfConfigFile(consoleConfig, {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (diagnostic) => {
      throw new Error(ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n"))
    }
  })
  if (config === undefined) throw new Error(`cannot read ${consoleConfig}`)
  const host = ts.createCompilerHost(config.options)
  const readFile = host.readFile.bind(host)
  const fileExists = host.fileExists.bind(host)
  const isTypesFile = (file: string) => path.resolve(file) === consoleTypesFile
  const getSourceFile = host.getSourceFile.bind(host)
  host.readFile = (file) => isTypesFile(file) ? apiTypes : readFile(file)
  host.fileExists = (file) => isTypesFile(file) || fileExists(file)
  // The other files (console.js, the DOM's lib) parsed once for every check.
  host.getSourceFile = (file, language, ...rest) => {
    if (isTypesFile(file)) return getSourceFile(file, language, ...rest)
    const known = parsed.get(file) ?? getSourceFile(file, language, ...rest)
    if (known !== undefined) parsed.set(file, known)
    return known
  }
  const program = ts.createProgram({ rootNames: config.fileNames, options: config.options, host })
  return ts.getPreEmitDiagnostics(program).map((diagnostic) => {
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, " ")
    if (diagnostic.file === undefined || diagnostic.start === undefined) return message
    const { line } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start)
    return `${path.basename(diagnostic.file.fileName)}:${line + 1}: ${message}`
  })
}

/** The object schema at `keys` in a copy of the document. */
const schemaAt = (document: unknown, keys: ReadonlyArray<string>): Record<string, unknown> => {
  const found = keys.reduce<unknown>((node, key) =>
    typeof node === "object" && node !== null ? (node as Record<string, unknown>)[key] : undefined, document)
  if (typeof found !== "object" || found === null) throw new Error(`no schema at ${keys.join(".")}`)
  return found as Record<string, unknown>
}

const jsonBody = ["content", "application/json", "schema"]

/** The document as a change to the API would make it. */
const changedApi = (change: (document: OpenApi.OpenAPISpec) => void) => {
  const document = structuredClone(OpenApi.fromApi(Api))
  change(document)
  return consoleTypes(document)
}

describe("console/api.d.ts", () => {
  const generated = consoleTypes()

  it("is what the API's OpenAPI document generates now", () => {
    const committed = readFileSync(consoleTypesFile, "utf8")
    expect(committed, "console/api.d.ts is stale: run `npm run console-types`").toBe(generated)
  })

  it("console.js type-checks against the API's current types", () => {
    expect(checkConsole(generated)).toEqual([])
  }, 30_000)

  it("a property the console reads, renamed in the API, fails the check", () => {
    const apiTypes = changedApi((document) => {
      const gateway = schemaAt(document, ["paths", "/pool", "get", "responses", "200", ...jsonBody, "properties", "gateways", "items"])
      const properties = schemaAt(gateway, ["properties"])
      properties["last_error"] = properties["last_failure"]
      delete properties["last_failure"]
      gateway["required"] = (gateway["required"] as Array<string>).map((name) => name === "last_failure" ? "last_error" : name)
    })
    expect(checkConsole(apiTypes).join("\n")).toMatch(/Property 'last_failure' does not exist/)
  }, 30_000)

  it("a field a payload now requires, unsent by the console, fails the check", () => {
    const apiTypes = changedApi((document) => {
      const payload = schemaAt(document, ["paths", "/pool/gateways", "post", "requestBody", ...jsonBody])
      schemaAt(payload, ["properties"])["weight"] = { type: "number" }
      payload["required"] = [...(payload["required"] as Array<string>), "weight"]
    })
    expect(checkConsole(apiTypes).join("\n")).toMatch(/Property 'weight' is missing/)
  }, 30_000)
})
