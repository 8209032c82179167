import * as NodeContext from "@effect/platform-node/NodeContext"
import { Effect, Layer } from "effect"
import { NginxConfig } from "../config.ts"
import { makeEdgeKit } from "./EdgeKit.ts"
import { makeLuaRouting } from "./LocalLuaEdge.ts"
import { Nginx } from "./Nginx.ts"
import { makeReloadRouting } from "./ReloadRouting.ts"
import { KeptAliveHttpClient } from "../lib/keptAlive.ts"

/** The implementation NGINX_ROUTING picks. */
export const NginxLive = Layer.scoped(
  Nginx,
  Effect.gen(function*() {
    const kit = yield* makeEdgeKit
    return (yield* NginxConfig).routing === "lua" ? yield* makeLuaRouting(kit) : yield* makeReloadRouting(kit)
  })
).pipe(Layer.provide(Layer.merge(NodeContext.layer, KeptAliveHttpClient)))
