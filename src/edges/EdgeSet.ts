import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Clock, Context, Duration, Effect, Either, Layer, Redacted, Ref } from "effect"
import { NginxConfig, routeApiUrl, Settings } from "../config.ts"
import type { DatabaseError } from "../db/errors.ts"
import type { AllocationId, EdgeId, OrganizationId } from "../domain/ids.ts"
import { describeCause } from "../lib/describeCause.ts"
import { type EdgeKit, makeEdgeKit } from "../nginx/EdgeKit.ts"
import { makeLocalLuaEdge, makeRouteApiClient } from "../nginx/LuaRouting.ts"
import {
  type EdgeRoutes,
  Nginx,
  NginxError,
  type Route,
  type RouteKey,
  RouteLost,
  type Withdrawn,
  type WriteOptions
} from "../nginx/Nginx.ts"
import { makeReloadRouting } from "../nginx/ReloadRouting.ts"
import { type EdgeEndpoint, EdgeRegistry, LOCAL_EDGE_NAME } from "./EdgeRegistry.ts"

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

/** An edge's own call bound when others can take the change: one outside call. */
const perEdgeBound = (kit: EdgeKit) => kit.callTimeout

const makeEdgeSet = Effect.gen(function*() {
  const kit = yield* makeEdgeKit
  const config = yield* NginxConfig
  const registry = yield* EdgeRegistry
  const settings = yield* Settings
  const localId = kit.edge.id as EdgeId

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
      registerLocal: registry.registerLocal({
        edgeId: localId,
        routeApiUrl: routeApiUrl(config.routeApiListen),
        probeUrl: kit.edgeUrl,
        secret: Redacted.make(kit.secret)
      }),
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

  const markBehind = (edgeId: EdgeId, reason: string) =>
    Effect.gen(function*() {
      yield* Ref.update(markedHere, (marked) => new Set(marked).add(edgeId))
      yield* Ref.update(members, (all) => all.map((member) => (member.edgeId === edgeId ? { ...member, behind: true } : member)))
      yield* registry.markBehind(edgeId, reason).pipe(
        Effect.catchAll((error) => Effect.logWarning(`could not record in Postgres that edge ${edgeId} is behind`, error))
      )
    })

  const acknowledged = yield* Ref.make(new Map<EdgeId, number>())
  const acknowledge = (edgeId: EdgeId, generation: number) =>
    Ref.update(acknowledged, (acks) => acks.get(edgeId) !== undefined && (acks.get(edgeId) ?? 0) >= generation ? acks : new Map(acks).set(edgeId, generation))

  /** The edges a write goes to: those up to date (draining ones too: they stay current); when none is, every one. */
  const writeTargets = Effect.map(Ref.get(members), (all) => {
    const current = all.filter((member) => !member.behind)
    return current.length > 0 ? current : all
  })

  /** Runs `operation` on each edge at once; each edge's outcome, in order. A lone edge is not bounded here (its caller bounds it). */
  const onEach = <A, E>(targets: ReadonlyArray<EdgeMember>, operation: (member: EdgeMember) => Effect.Effect<A, E>) =>
    Effect.forEach(
      targets,
      (member) =>
        Effect.either(
          targets.length === 1 ? operation(member) : operation(member).pipe(
            Effect.timeoutFail({
              duration: perEdgeBound(kit),
              onTimeout: () => new NginxError({ operation: "probe", reason: `edge ${member.name} did not answer within ${Duration.format(perEdgeBound(kit))}` })
            })
          )
        ).pipe(Effect.map((outcome) => ({ member, outcome }))),
      { concurrency: "unbounded" }
    )

  /** The first failure when no edge succeeded: no edge took the change. */
  const noneTook = <E>(outcomes: ReadonlyArray<{ readonly member: EdgeMember; readonly outcome: Either.Either<unknown, E> }>): E | NginxError => {
    const first = outcomes.find((o) => Either.isLeft(o.outcome))
    return first !== undefined && Either.isLeft(first.outcome)
      ? first.outcome.left
      : new NginxError({ operation: "write", reason: "no edge to write to", noEffect: true })
  }

  const reasonOf = (error: { readonly message: string }) => error.message

  /** Owed removals this replica recorded, by allocation: their proofs skip those edges. */
  const owing = yield* Ref.make(new Map<AllocationId, { readonly edges: ReadonlySet<EdgeId>; readonly atMs: number }>())
  /** What a removal's proof needs to know lasts one undo at most; older entries (no proof followed) go. */
  const OWING_KEPT_MS = 10 * 60_000
  const owe = (member: EdgeMember, route: RouteKey, reason: string) =>
    Effect.gen(function*() {
      yield* registry.owe(member.edgeId, route, `edge ${member.name}: ${reason}`)
      const now = yield* Clock.currentTimeMillis
      yield* Ref.update(owing, (all) => {
        const next = new Map([...all].filter(([, entry]) => now - entry.atMs < OWING_KEPT_MS))
        return next.set(route.allocationId, { edges: new Set([...(all.get(route.allocationId)?.edges ?? []), member.edgeId]), atMs: now })
      })
      yield* markBehind(member.edgeId, `it did not acknowledge the removal of allocation ${route.allocationId}: ${reason}`)
      yield* Effect.logWarning(
        `edge ${member.name} owes the removal of allocation ${route.allocationId} (org ${route.organizationId}): its gateway is held until the edge acknowledges`
      )
    }).pipe(
      Effect.mapError((error) =>
        new NginxError({ operation: "remove", reason: `edge ${member.name} did not acknowledge the removal, and the debt could not be recorded: ${error.message}` })
      )
    )

  const writeRoute = Effect.fn("Nginx.writeRoute")(function*(route: Route, options?: WriteOptions) {
    const targets = yield* writeTargets
    // An edge behind gets the write too, unawaited (one that is down would hold up every start):
    // a catch-up under way pushes what it read from Postgres, and a write made meanwhile would
    // otherwise be missing once it is done. Fenced like any write; a removal it outlives is owed,
    // so the gateway is held until that edge is caught up.
    for (const member of (yield* Ref.get(members)).filter((m) => !targets.includes(m))) {
      yield* Effect.forkDaemon(Effect.ignore(member.routes.writeRoute(route, options)))
    }
    const outcomes = yield* onEach(targets, (member) => member.routes.writeRoute(route, options))
    if (!outcomes.some((o) => Either.isRight(o.outcome))) {
      const error = noneTook(outcomes)
      return yield* (error instanceof NginxError ? error : new NginxError({ operation: "write", reason: describeCause(error) }))
    }
    yield* Effect.forEach(outcomes, ({ member, outcome }) =>
      Either.isLeft(outcome)
        ? markBehind(member.edgeId, `it missed the route of allocation ${route.allocationId}: ${reasonOf(outcome.left)}`)
        : acknowledge(member.edgeId, route.generation), { discard: true })
  })

  const awaitServed = Effect.fn("Nginx.awaitServed")(function*(route: RouteKey) {
    const targets = yield* writeTargets
    const outcomes = yield* onEach(targets, (member) => member.routes.awaitServed(route))
    if (!outcomes.some((o) => Either.isRight(o.outcome))) {
      const errors = outcomes.flatMap((o) => (Either.isLeft(o.outcome) ? [o.outcome.left] : []))
      const lost = errors.find((error): error is RouteLost => error._tag === "RouteLost")
      if (lost !== undefined && errors.every((error) => error._tag === "RouteLost")) return yield* lost
      return yield* (errors.find((error): error is NginxError => error._tag === "NginxError") ??
        new NginxError({ operation: "probe", reason: "no edge serves the route" }))
    }
    yield* Effect.forEach(outcomes, ({ member, outcome }) =>
      Either.isLeft(outcome)
        ? markBehind(member.edgeId, `it does not serve allocation ${route.allocationId}: ${reasonOf(outcome.left)}`)
        : Effect.void, { discard: true })
  })

  const removeRoute = Effect.fn("Nginx.removeRoute")(function*(route: RouteKey) {
    const all = yield* Ref.get(members)
    // An edge already behind is not asked (its catch-up removes what no live allocation owns):
    // it owes the removal at once, unless no edge is up to date (then each is asked).
    const current = all.filter((member) => !member.behind)
    const asked = current.length > 0 ? current : all
    const outcomes = yield* onEach(asked, (member) => member.routes.removeRoute(route))
    const found = outcomes.flatMap((o) => (Either.isRight(o.outcome) ? [o.outcome.right] : []))
    if (found.length === 0) {
      const error = noneTook(outcomes)
      return yield* (error instanceof NginxError ? error : new NginxError({ operation: "remove", reason: describeCause(error) }))
    }
    for (const { member, outcome } of outcomes) {
      if (Either.isLeft(outcome)) yield* owe(member, route, reasonOf(outcome.left))
      else yield* acknowledge(member.edgeId, route.generation)
    }
    for (const member of all.filter((m) => !asked.includes(m))) yield* owe(member, route, "it was behind")
    return found.includes("removed") ? "removed" as const : found.includes("other") ? "other" as const : "absent" as const
  })

  const awaitWithdrawn = Effect.fn("Nginx.awaitWithdrawn")(function*(route: RouteKey) {
    const all = yield* Ref.get(members)
    const owed = (yield* Ref.get(owing)).get(route.allocationId)?.edges ?? new Set<EdgeId>()
    const proving = all.filter((member) => !owed.has(member.edgeId) && !member.behind)
    const targets = proving.length > 0 ? proving : all.filter((member) => !owed.has(member.edgeId))
    if (targets.length === 0) return { _tag: "gone" } as Withdrawn
    const outcomes = yield* onEach(targets, (member) => member.routes.awaitWithdrawn(route))
    const proven = outcomes.flatMap((o) => (Either.isRight(o.outcome) ? [o.outcome.right] : []))
    if (proven.length === 0) {
      const error = noneTook(outcomes)
      return yield* (error instanceof NginxError ? error : new NginxError({ operation: "probe", reason: describeCause(error) }))
    }
    for (const { member, outcome } of outcomes) {
      if (Either.isLeft(outcome)) yield* owe(member, route, reasonOf(outcome.left))
    }
    yield* Ref.update(owing, (map) => {
      const next = new Map(map)
      next.delete(route.allocationId)
      return next
    })
    return proven.find((withdrawn) => withdrawn._tag === "notApplied") ?? proven[0] ?? { _tag: "gone" }
  })

  /** What the up-to-date edges serve for the org: the local edge's answer when it is one of them. */
  const probeRoute = (organizationId: OrganizationId) =>
    Effect.gen(function*() {
      const outcomes = yield* onEach(yield* writeTargets, (member) => member.routes.probeRoute(organizationId))
      const answered = outcomes.filter((o) => Either.isRight(o.outcome))
      const chosen = answered.find((o) => o.member.local) ?? answered[0]
      if (chosen === undefined || Either.isLeft(chosen.outcome)) {
        const error = noneTook(outcomes)
        return yield* (error instanceof NginxError ? error : new NginxError({ operation: "probe", reason: describeCause(error) }))
      }
      return chosen.outcome.right
    })

  const set = EdgeSet.of({
    members: Ref.get(members),
    registerLocal: Effect.zipRight(
      registry.registerLocal({
        edgeId: localId,
        routeApiUrl: routeApiUrl(config.routeApiListen),
        probeUrl: kit.edgeUrl,
        secret: Redacted.make(kit.secret)
      }),
      refresh
    ),
    refresh,
    markBehind,
    takeAcknowledged: Ref.getAndSet(acknowledged, new Map())
  })
  const nginx = Nginx.of({
    edge: kit.edge,
    install: local.install,
    writeRoute,
    removeRoute,
    awaitServed,
    awaitWithdrawn,
    probeRoute,
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
).pipe(Layer.provide(Layer.merge(NodeContext.layer, NodeHttpClient.layer)))
