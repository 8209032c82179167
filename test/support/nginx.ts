// A real nginx of its own (src/dev/NginxProcess.ts) and the service's Nginx layer over it,
// installed: for the tests of nginx alone (test/nginx).
import { NodeContext } from "@effect/platform-node"
import { Context, Effect, Layer } from "effect"
import { Settings } from "../../src/config.ts"
import { type NginxHandle, startNginx } from "../../src/dev/NginxProcess.ts"
import { EdgeLockLocal } from "../../src/nginx/Edge.ts"
import { Nginx } from "../../src/nginx/Nginx.ts"
import { NginxLive } from "../../src/nginx/NginxLive.ts"
import { configFrom, temporaryDirectory } from "./stack.ts"

export class RealNginx extends Context.Tag("test/RealNginx")<RealNginx, NginxHandle>() {}

export const RealNginxLive = (options: { readonly workers?: number; readonly luaModule?: boolean } = {}) =>
  Layer.scoped(
    RealNginx,
    Effect.flatMap(temporaryDirectory("ga-nginx-"), (dir) => startNginx({ dir, ...options }))
  ).pipe(Layer.provide(NodeContext.layer))

/** The service's Nginx layer over the RealNginx, configured by `env` (NGINX_ROUTING and the rest), installed. */
export const InstalledNginx = (env: Readonly<Record<string, string>>) =>
  Layer.unwrapEffect(
    Effect.map(RealNginx, (handle) =>
      Layer.effectDiscard(Effect.flatMap(Nginx, (nginx) => nginx.install)).pipe(
        Layer.provideMerge(NginxLive),
        Layer.provide(Settings.Default),
        // One process drives this nginx: its own serialisation is the whole story.
        Layer.provide(EdgeLockLocal),
        Layer.provide(configFrom({
          NGINX_CONF_DIR: handle.confDir,
          NGINX_MAIN_CONF: handle.mainConf,
          NGINX_LISTEN: `127.0.0.1:${handle.listenPort}`,
          NGINX_ROUTE_API_LISTEN: `127.0.0.1:${handle.routeApiPort}`,
          ...env
        }))
      ))
  )

/** The one edge of the Nginx under test (an nginx by itself is one edge): its routes, listing and table. */
export const localEdge = Effect.flatMap(Nginx, (nginx) =>
  Effect.flatMap(nginx.edges, ([edge]) => (edge === undefined ? Effect.dieMessage("the Nginx under test has no edge") : Effect.succeed(edge))))
