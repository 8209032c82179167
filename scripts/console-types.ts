// `npm run console-types`: writes console/api.d.ts, the body types of every operation of the API,
// from the OpenAPI document the service serves (OpenApi.fromApi over src/http/Api.ts; no server).
// console.js takes its types from that file (JSDoc imports), so the console is type-checked
// against the API itself; test/build/console-types.test.ts fails when the file is stale or when
// console.js does not type-check against the API's current types.
import { OpenApi } from "@effect/platform"
import { writeFileSync } from "node:fs"
import path from "node:path"
import { pathToFileURL } from "node:url"
import { Api } from "../src/http/Api.ts"

export const consoleTypesFile = path.resolve(import.meta.dirname, "..", "console", "api.d.ts")

/** A JSON Schema as the document holds it: a JSON object, read defensively (the platform's own
 * JsonSchema type leaves out `{ "type": "null" }`, which the document has). */
type Json = { readonly [key: string]: unknown }

const isJson = (value: unknown): value is Json => typeof value === "object" && value !== null && !Array.isArray(value)

const schemaRef = "#/components/schemas/"
const unknownIds = new Set(["/schemas/any", "/schemas/unknown", "/schemas/void"])
// Keywords that only narrow a type's values (or describe it): no TypeScript counterpart needed.
const narrowing = new Set([
  "$id", "$comment", "title", "description", "default", "examples", "format", "pattern", "minLength", "maxLength",
  "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "allOf",
  "nullable", "contentMediaType", "contentSchema", "required", "propertyNames"
])
const shaping = new Set(["$ref", "enum", "const", "anyOf", "oneOf", "not", "type", "items", "additionalItems", "properties",
  "additionalProperties", "patternProperties"])

/** A keyword this converter does not know fails the generation rather than being dropped. */
const unknownKeyword = (schema: Json) => Object.keys(schema).find((key) => !narrowing.has(key) && !shaping.has(key))

const propertyName = (name: string) => /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(name) ? name : JSON.stringify(name)

const literal = (value: unknown) => {
  if (value === null || ["string", "number", "boolean"].includes(typeof value)) return JSON.stringify(value)
  throw new Error(`console-types: a literal that is not a JSON scalar: ${JSON.stringify(value)}`)
}

const union = (members: ReadonlyArray<string>) => {
  const distinct = [...new Set(members)].filter((member) => member !== "never")
  return distinct.includes("unknown") ? "unknown" : distinct.length === 0 ? "never" : distinct.join(" | ")
}

/** An array of `element`: `Array<...>` when it holds a union anywhere (`A | B[]` would be wrong). */
const arrayOf = (element: string) => /[|&]/.test(element) ? `Array<${element}>` : `${element}[]`

/** The TypeScript type of `schema` at `indent` (object members go one level deeper). */
const typeOf = (schema: unknown, indent: string, at: string): string => {
  if (schema === true) return "unknown"
  if (schema === false) return "never"
  if (!isJson(schema)) throw new Error(`console-types: ${at} is not a schema`)
  const unknownKey = unknownKeyword(schema)
  if (unknownKey !== undefined) throw new Error(`console-types: ${at} uses "${unknownKey}", which this script does not convert`)
  const type = shapeOf(schema, indent, at)
  return schema["nullable"] === true ? union([type, "null"]) : type
}

const shapeOf = (schema: Json, indent: string, at: string): string => {
  const ref = schema["$ref"]
  if (typeof ref === "string") {
    if (!ref.startsWith(schemaRef)) throw new Error(`console-types: ${at} refers outside the components: ${ref}`)
    return `Schemas[${JSON.stringify(ref.slice(schemaRef.length))}]`
  }
  if (Array.isArray(schema["enum"])) return union(schema["enum"].map(literal))
  if ("const" in schema) return literal(schema["const"])
  const members = schema["anyOf"] ?? schema["oneOf"]
  if (Array.isArray(members)) return union(members.map((member, i) => typeOf(member, indent, `${at}.anyOf[${i}]`)))
  if ("not" in schema) {
    // Schema.Never is `{ "not": {} }`; "anything but X" has no TypeScript type.
    if (isJson(schema["not"]) && Object.keys(schema["not"]).length === 0) return "never"
    throw new Error(`console-types: ${at} uses "not", which this script does not convert`)
  }
  const type = schema["type"]
  if (Array.isArray(type)) return union(type.map((one) => typeOf({ ...schema, type: one }, indent, at)))
  switch (type) {
    case "null":
      return "null"
    case "string":
      return "string"
    case "number":
    case "integer":
      return "number"
    case "boolean":
      return "boolean"
    case "array":
      return arrayType(schema, indent, at)
    case "object":
      return objectType(schema, indent, at)
    case undefined:
      // No type keyword (Schema.Unknown, Schema.Any): any JSON value.
      if (typeof schema["$id"] === "string" && !unknownIds.has(schema["$id"])) {
        throw new Error(`console-types: ${at} is ${schema["$id"]}, which this script does not convert`)
      }
      return "unknown"
    default:
      throw new Error(`console-types: ${at} has type ${JSON.stringify(type)}`)
  }
}

const arrayType = (schema: Json, indent: string, at: string) => {
  const items = schema["items"]
  if (items === undefined) return "unknown[]"
  if (!Array.isArray(items)) return arrayOf(typeOf(items, indent, `${at}.items`))
  // A tuple: its elements, then any further ones.
  const rest = schema["additionalItems"]
  const elements = items.map((item, i) => typeOf(item, indent, `${at}.items[${i}]`))
  if (rest !== undefined && rest !== false) elements.push(`...${arrayOf(typeOf(rest, indent, `${at}.additionalItems`))}`)
  return `[${elements.join(", ")}]`
}

const objectType = (schema: Json, indent: string, at: string) => {
  const inner = `${indent}  `
  const required = new Set(Array.isArray(schema["required"]) ? schema["required"] : [])
  const properties = Object.entries(isJson(schema["properties"]) ? schema["properties"] : {})
    .map(([name, property]) => ({ name, optional: !required.has(name), type: typeOf(property, inner, `${at}.${name}`) }))
  // Keys beyond the properties: patternProperties', additionalProperties' (any value when absent
  // from an object without properties: Schema.Object, a record).
  const patterns = Object.entries(isJson(schema["patternProperties"]) ? schema["patternProperties"] : {})
    .map(([pattern, value]) => typeOf(value, inner, `${at}[${pattern}]`))
  const additional = schema["additionalProperties"]
  const others = [
    ...patterns,
    ...additional === undefined
      ? (properties.length === 0 && patterns.length === 0 ? ["unknown"] : [])
      : additional === false ? [] : [typeOf(additional, inner, `${at}[*]`)]
  ]
  const lines = properties.map(({ name, optional, type }) => `${inner}${propertyName(name)}${optional ? "?" : ""}: ${type}`)
  // An index signature's type must cover the named properties' too.
  if (others.length > 0) lines.push(`${inner}[key: string]: ${union([...others, ...properties.map(({ type }) => type)])}`)
  return lines.length === 0 ? "Record<string, never>" : `{\n${lines.join("\n")}\n${indent}}`
}

/** One line of JSDoc, or none. */
const doc = (indent: string, text: string | undefined) =>
  text === undefined || text === "" ? [] : [`${indent}/** ${text.replace(/\*\//g, "*\\/").replace(/\s*\n\s*/g, " ")} */`]

/** The body of `content`: the JSON schema's type, a string for text, nothing (`void`) without one. */
const bodyOf = (content: OpenApi.OpenApiSpecContent | undefined, indent: string, at: string) => {
  const bodies = Object.entries(content ?? {}).map(([mediaType, media]) => {
    const essence = mediaType.split(";")[0]?.trim().toLowerCase() ?? ""
    if (essence === "application/json" || essence.endsWith("+json")) return typeOf(media?.schema, indent, at)
    if (essence.startsWith("text/")) return "string"
    throw new Error(`console-types: ${at} is ${mediaType}, which this script does not convert`)
  })
  return bodies.length === 0 ? "void" : union(bodies)
}

/** The same order on every machine (localeCompare follows the locale). */
const byCodePoint = (a: string, b: string) => a < b ? -1 : a > b ? 1 : 0

const methods: ReadonlyArray<OpenApi.OpenAPISpecMethodName> = ["get", "put", "post", "delete", "options", "head", "patch", "trace"]

/** The text of console/api.d.ts for the API's document as it is now. */
export const consoleTypes = (spec: OpenApi.OpenAPISpec = OpenApi.fromApi(Api)): string => {
  const schemas = Object.entries(spec.components.schemas)
    .sort(([a], [b]) => byCodePoint(a, b))
    // No descriptions: a component's is whichever endpoint described it last (see the responses').
    .map(([name, schema]) => `  ${propertyName(name)}: ${typeOf(schema, "  ", name)}`)
  const operations = Object.entries(spec.paths)
    .flatMap(([route, item]) => methods.flatMap((method) => {
      const operation = item[method]
      return operation === undefined ? [] : [{ route, method, operation }]
    }))
    .sort((a, b) => byCodePoint(a.operation.operationId, b.operation.operationId))
    .flatMap(({ route, method, operation }) => {
      const id = operation.operationId
      const request = operation.requestBody === undefined
        ? []
        : [`    request: ${bodyOf(operation.requestBody.content, "    ", `${id} request`)}`]
      const responses = Object.entries(operation.responses)
        .sort(([a], [b]) => Number(a) - Number(b))
        .flatMap(([status, response]) => [
          ...doc("      ", response.description),
          `      ${status}: ${bodyOf(response.content, "      ", `${id} ${status}`)}`
        ])
      return [
        ...doc("  ", `${method.toUpperCase()} ${route}${operation.summary === undefined ? "" : `: ${operation.summary}`}`),
        `  ${JSON.stringify(id)}: {`,
        ...request,
        "    responses: {",
        ...responses,
        "    }",
        "  }"
      ]
    })
  return [
    "// Generated by `npm run console-types` (scripts/console-types.ts) from the API's OpenAPI document",
    "// (OpenApi.fromApi over src/http/Api.ts, as GET /openapi.json serves it): do not edit. For type",
    "// checking only (console.js imports it in JSDoc); it is not served.",
    "",
    "/** The document's named schemas (components.schemas): the error bodies and what they use. */",
    "export interface Schemas {",
    ...schemas,
    "}",
    "",
    "/** Every operation by its operationId: the JSON body it takes, the body it answers with by status. */",
    "export interface Operations {",
    ...operations,
    "}",
    "",
    "/** The body operation `K` answers with on status `S`. */",
    "export type ResponseBody<K extends keyof Operations, S extends keyof Operations[K][\"responses\"]> = Operations[K][\"responses\"][S]",
    "",
    "/** The body operation `K` takes. */",
    "export type RequestBody<K extends keyof Operations> = Operations[K] extends { request: infer R } ? R : never",
    ""
  ].join("\n")
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  writeFileSync(consoleTypesFile, consoleTypes())
  console.log(`wrote ${path.relative(process.cwd(), consoleTypesFile)}`)
}
