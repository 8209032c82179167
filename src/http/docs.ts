import { HttpApi, HttpApiBuilder, HttpServerResponse, OpenApi } from "@effect/platform"
import { Effect } from "effect"
import { createRequire } from "node:module"
import path from "node:path"

// Swagger UI is ~1.9 MB of script: it is streamed from the swagger-ui-dist package when a browser
// asks, never held in the heap (the platform's HttpApiSwagger inlines it in a module and a page).
const swaggerUiDir = path.dirname(createRequire(import.meta.url).resolve("swagger-ui-dist/package.json"))

const assets = [
  { route: "/docs/swagger-ui-bundle.js", file: "swagger-ui-bundle.js" },
  { route: "/docs/swagger-ui.css", file: "swagger-ui.css" }
] as const

/** JSON inside a <script> element: `<` escaped so the document cannot close the element. */
const scriptJson = (value: unknown) => JSON.stringify(value).replace(/</g, "\\u003c")

/** The page: the OpenAPI document inline (a few KiB), Swagger UI from the asset routes above. */
const page = (spec: OpenApi.OpenAPISpec) => `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8" />
  <meta name="viewport" content="width=device-width, initial-scale=1" />
  <title>${spec.info.title.replace(/[<>&"]/g, "")} Documentation</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css" />
</head>
<body>
  <div id="swagger-ui"></div>
  <script id="swagger-spec" type="application/json">${scriptJson(spec)}</script>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.onload = () => {
      window.ui = SwaggerUIBundle({
        spec: JSON.parse(document.getElementById("swagger-spec").textContent),
        dom_id: "#swagger-ui"
      })
    }
  </script>
</body>
</html>`

/** `GET /docs` (Swagger UI over the HttpApi's OpenAPI document) and its two assets, files of swagger-ui-dist. No auth. */
export const DocsPageLive = HttpApiBuilder.Router.use((router) =>
  Effect.gen(function*() {
    const { api } = yield* HttpApi.Api
    const html = page(OpenApi.fromApi(api))
    yield* router.get("/docs", Effect.sync(() => HttpServerResponse.html(html)))
    for (const asset of assets) {
      yield* router.get(
        asset.route,
        HttpServerResponse.file(path.join(swaggerUiDir, asset.file), {
          headers: { "cache-control": "public, max-age=86400" }
        }).pipe(Effect.orDie)
      )
    }
  })
)
