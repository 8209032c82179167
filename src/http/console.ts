import { FileSystem, HttpApiBuilder, HttpServerResponse, Path } from "@effect/platform"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { Effect, Layer } from "effect"
import { packageRoot } from "../lib/packageRoot.ts"

/** The console's files: only these are served, each at its own route (nothing taken from the URL). */
const assets = [
  { route: "/console", file: "index.html", contentType: "text/html; charset=utf-8" },
  { route: "/console/console.js", file: "console.js", contentType: "text/javascript; charset=utf-8" },
  { route: "/console/console.css", file: "console.css", contentType: "text/css; charset=utf-8" }
] as const

/** The page loads its own script and styles and talks to this origin only; data is never markup. */
export const consoleHeaders = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-cache"
} as const

const unavailable = (message: string) =>
  HttpServerResponse.text(`console unavailable: ${message}\n`, { status: 500, headers: consoleHeaders })

/**
 * `GET /console`: the operator console (no auth for the page; it calls the API with the token the
 * operator enters). The files are read from `console/` at the package root on each request.
 */
export const ConsoleLive = HttpApiBuilder.Router.use((router) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    for (const asset of assets) {
      yield* router.get(
        asset.route,
        // A missing or unreadable file must not keep the service down: its route says so.
        fs.readFile(path.join(packageRoot, "console", asset.file)).pipe(
          Effect.map((bytes) => HttpServerResponse.uint8Array(bytes, { contentType: asset.contentType, headers: consoleHeaders })),
          Effect.catchAll((error) =>
            Effect.as(Effect.logError(`console: ${error.message}`), unavailable(`cannot read ${asset.file}`)))
        )
      )
    }
  })
).pipe(Layer.provide(NodeContext.layer))
