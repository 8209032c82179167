import * as NodeContext from "@effect/platform-node/NodeContext"
import { Context, Effect, Layer, Redacted, Ref } from "effect"
import { NginxConfig, routeApiUrl, Settings } from "../config.ts"
import type { DatabaseError } from "../db/errors.ts"
import type { EdgeId } from "../domain/ids.ts"
import { makeEdgeKit } from "../nginx/EdgeKit.ts"
import { makeLocalLuaEdge } from "../nginx/LocalLuaEdge.ts"
import { makeRouteApiClient } from "../nginx/LuaRouting.ts"
import { type EdgeRoutes, Nginx } from "../nginx/Nginx.ts"
import { makeReloadRouting } from "../nginx/ReloadRouting.ts"
import { type EdgeEndpoint, EdgeRegistry, LOCAL_EDGE_NAME } from "./EdgeRegistry.ts"
import { makeFanOut } from "./fanOut.ts"
import { Notifier } from "../telemetry/Notifier.ts"
import { KeptAliveHttpClient } from "../lib/keptAlive.ts"

/** One edge as this replica works with it: how to reach it, and whether it is up to date. */
export interface EdgeMember {
  readonly edgeId: EdgeId
  readonly name: string
  readonly local: boolean
  readonly draining: boolean
  /** It missed a change (the registry's flag, or this replica's since): caught up before it takes writes again. */
  readonly behind: boolean
  /** The registry's behind mark when last read: a catch-up started from it clears `behind` only if unchanged. */
  readonly behindMark: number
  readonly routes: EdgeRoutes
}

/**
 * The edges every route change goes to (lua routing): this replica's own, and every edge the
 * registry holds, each reached through its route API. Each change goes to each edge, in
 * parallel; how an edge that cannot take one is handled is the rule of several edges:
 * - a write, or its proof, that an edge misses makes that edge `behind` (it is brought up to date
 *   from Postgres by the EdgeWatcher before it takes writes again); it fails only when no edge
 *   took it;
 * - a removal, or its proof, that an edge does not acknowledge is owed by that edge
 *   (EdgeRegistry.owe): the allocation's gateway stays out of every claim until that edge has
 *   acknowledged (its catch-up) or is removed from the registry. It fails only when no edge
 *   acknowledged: then nothing is owed, and the undo fails as with one nginx.
 * In reload mode there is one edge, the local one, and the set is that edge alone.
 */
export class EdgeSet extends Context.Tag("EdgeSet")<EdgeSet, {
  readonly members: Effect.Effect<ReadonlyArray<EdgeMember>>
  /** Registers this replica's own edge (at start-up, once its directory was checked), then reads the registry. */
  readonly registerLocal: Effect.Effect<void, DatabaseError>
  /** Reads the registry again (every second, and after an API change). */
  readonly refresh: Effect.Effect<void, DatabaseError>
  /** This replica found the edge missed a change: behind here at once, and in the registry. */
  readonly markBehind: (edgeId: EdgeId, reason: string) => Effect.Effect<void>
  /** The greatest generation each edge acknowledged since the last call (the watcher records them). */
  readonly takeAcknowledged: Effect.Effect<ReadonlyMap<EdgeId, number>>
}>() {}

const makeEdgeSet = Effect.gen(function*() {
  const kit = yield* makeEdgeKit
  const config = yield* NginxConfig
  const registry = yield* EdgeRegistry
  const notifier = yield* Notifier
  const settings = yield* Settings
  const localId = kit.edge.id as EdgeId
  /** This replica's own edge in the registry: its edge file's id and secret, its configured addresses. */
  const registerLocal = registry.registerLocal({
    edgeId: localId,
    routeApiUrl: routeApiUrl(config.routeApiListen),
    probeUrl: kit.edgeUrl,
    secret: Redacted.make(kit.secret)
  })

  if (config.routing === "reload") {
    const nginx = yield* makeReloadRouting(kit)
    const [routes] = yield* nginx.edges
    const member: EdgeMember = {
      edgeId: localId,
      name: LOCAL_EDGE_NAME,
      local: true,
      draining: false,
      behind: false,
      behindMark: 0,
      routes: routes ?? (yield* Effect.dieMessage("reload routing has no edge"))
    }
    const remote = (yield* registry.list()).filter((edge) => !edge.local)
    if (remote.length > 0) {
      yield* Effect.logWarning(
        `NGINX_ROUTING=reload keeps its one local edge: the ${remote.length} registered edge(s) (${remote.map((e) => e.name).join(", ")}) ` +
          "get no routes; use NGINX_ROUTING=lua for several edges"
      )
    }
    const set = EdgeSet.of({
      members: Effect.succeed([member]),
      registerLocal,
      refresh: Effect.void,
      markBehind: () => Effect.void,
      takeAcknowledged: Effect.succeed(new Map())
    })
    return { set, nginx }
  }

  const local = yield* makeLocalLuaEdge(kit)
  const localMember = (endpoint: EdgeEndpoint | undefined): EdgeMember => ({
    edgeId: localId,
    name: LOCAL_EDGE_NAME,
    local: true,
    draining: endpoint?.state === "draining",
    // Before its registration the local edge is the only one: it takes every change.
    behind: endpoint?.behind ?? false,
    behindMark: endpoint?.behindMark ?? 0,
    routes: local.routes
  })

  /** Route API clients of the remote edges, made once per address and secret. */
  const clients = new Map<EdgeId, { readonly key: string; readonly routes: EdgeRoutes }>()
  const clientOf = (endpoint: EdgeEndpoint) =>
    Effect.gen(function*() {
      const key = `${endpoint.routeApiUrl} ${endpoint.probeUrl} ${Redacted.value(endpoint.secret)}`
      const known = clients.get(endpoint.edgeId)
      if (known !== undefined && known.key === key) return known.routes
      const client = yield* makeRouteApiClient(kit, {
        edgeId: endpoint.edgeId,
        name: endpoint.name,
        apiUrl: endpoint.routeApiUrl,
        probeUrl: endpoint.probeUrl,
        secret: Redacted.value(endpoint.secret)
      }).pipe(Effect.provideService(Settings, settings))
      clients.set(endpoint.edgeId, { key, routes: client.routes })
      return client.routes
    })

  const members = yield* Ref.make<ReadonlyArray<EdgeMember>>([localMember(undefined)])
  /** Edges this replica marked behind since the registry was last read (the read may predate the mark). */
  const markedHere = yield* Ref.make(new Set<EdgeId>())

  const refresh = Effect.gen(function*() {
    const endpoints = yield* registry.endpoints()
    const marked = yield* Ref.getAndSet(markedHere, new Set())
    const next: Array<EdgeMember> = []
    for (const endpoint of endpoints) {
      if (endpoint.local && endpoint.edgeId !== localId) continue
      const member = endpoint.local ? localMember(endpoint) : {
        edgeId: endpoint.edgeId,
        name: endpoint.name,
        local: false,
        draining: endpoint.state === "draining",
        behind: endpoint.behind,
        behindMark: endpoint.behindMark,
        routes: yield* Effect.orDie(clientOf(endpoint))
      }
      next.push(marked.has(member.edgeId) ? { ...member, behind: true } : member)
    }
    if (!next.some((member) => member.local)) next.unshift(localMember(undefined))
    for (const id of [...clients.keys()]) if (!next.some((member) => member.edgeId === id)) clients.delete(id)
    yield* Ref.set(members, next)
  }).pipe(Effect.withSpan("EdgeSet.refresh"))

  /** Behind in this replica's view at once, whatever a registry read in flight says. */
  const behindHere = (edgeId: EdgeId) =>
    Effect.zipRight(
      Ref.update(markedHere, (marked) => new Set(marked).add(edgeId)),
      Ref.update(members, (all) => all.map((member) => (member.edgeId === edgeId ? { ...member, behind: true } : member)))
    )

  const markBehind = (edgeId: EdgeId, reason: string) =>
    Effect.zipRight(
      behindHere(edgeId),
      registry.markBehind(edgeId, reason).pipe(
        Effect.catchAll((error) => Effect.logWarning(`could not record in Postgres that edge ${edgeId} is behind`, error))
      )
    )

  const acknowledged = yield* Ref.make(new Map<EdgeId, number>())
  const acknowledge = (edgeId: EdgeId, generation: number) =>
    Ref.update(acknowledged, (acks) => acks.get(edgeId) !== undefined && (acks.get(edgeId) ?? 0) >= generation ? acks : new Map(acks).set(edgeId, generation))

  const fanOut = yield* makeFanOut({
    members: Ref.get(members),
    markBehind,
    acknowledge,
    owe: (edgeId, removal, reason) => Effect.zipRight(registry.owe(edgeId, removal, reason), behindHere(edgeId)),
    perEdgeBound: kit.callTimeout,
    beganToOwe: (member, removal, reason) =>
      notifier.notify({
        kind: "edge_holds_gateways",
        organization_id: removal.organizationId,
        allocation_id: removal.allocationId,
        gateway_id: null,
        message: `nginx edge ${member.name} did not acknowledge a removal (${reason}): it holds that allocation's gateway, and ` +
          "every one whose removal it misses, until it is caught up or deleted from the registry (GET /edges)",
        undos: []
      })
  })

  const set = EdgeSet.of({
    members: Ref.get(members),
    registerLocal: Effect.zipRight(registerLocal, refresh),
    refresh,
    markBehind,
    takeAcknowledged: Ref.getAndSet(acknowledged, new Map())
  })
  const nginx = Nginx.of({
    edge: kit.edge,
    install: local.install,
    ...fanOut,
    edges: Effect.map(Ref.get(members), (all) => all.map((member) => member.routes))
  })
  return { set, nginx }
})

/**
 * Nginx as the service routes through it: every edge (lua), or the one local edge (reload); and
 * the EdgeSet the watcher and the API work with. The registry is read once here (after the
 * local edge registered itself: see EdgeWatcher) and then every second by the watcher.
 */
export const EdgesLive = Layer.scopedContext(
  Effect.map(makeEdgeSet, ({ nginx, set }) => Context.make(Nginx, nginx).pipe(Context.add(EdgeSet, set)))
).pipe(Layer.provide(Layer.merge(NodeContext.layer, KeptAliveHttpClient)))
