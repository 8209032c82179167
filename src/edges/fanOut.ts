import { Clock, Duration, Effect, Either, Ref } from "effect"
import type { DatabaseError } from "../db/errors.ts"
import type { AllocationId, EdgeId, OrganizationId } from "../domain/ids.ts"
import { type Nginx, NginxError, type Route, type RouteKey, RouteLost, type Withdrawn, type WriteOptions } from "../nginx/Nginx.ts"
import type { EdgeMember } from "./EdgeSet.ts"

/** What the rules of several edges work with: the edges now, and how an edge's miss is recorded. */
export interface FanOutOptions {
  readonly members: Effect.Effect<ReadonlyArray<EdgeMember>>
  /** The edge missed a change: it is caught up before it takes (awaited) writes again. */
  readonly markBehind: (edgeId: EdgeId, reason: string) => Effect.Effect<void>
  /** The edge acknowledged a change of this generation. */
  readonly acknowledge: (edgeId: EdgeId, generation: number) => Effect.Effect<void>
  /**
   * The edge owes this removal: its gateway is held until it acknowledged (EdgeRegistry.owe),
   * and the edge is behind (the debt and the mark are one statement; this replica's view too).
   */
  readonly owe: (edgeId: EdgeId, removal: RouteKey, reason: string) => Effect.Effect<void, DatabaseError>
  /** One edge's bound when others can take the change: one outside call. */
  readonly perEdgeBound: Duration.Duration
  /** An edge that was up to date began to owe removals (told once, until it is caught up again). */
  readonly beganToOwe: (member: EdgeMember, removal: RouteKey, reason: string) => Effect.Effect<void>
}

/**
 * How each change goes to every edge (the rules of EdgeSet): in parallel; a write or its proof
 * that an edge misses makes it behind, a removal or its proof that an edge does not acknowledge
 * is owed by it; either fails only when no edge took it.
 */
export const makeFanOut = (rules: FanOutOptions) =>
  Effect.gen(function*() {
    const members = rules.members
    /** The edges a write goes to: those up to date (draining ones too: they stay current); when none is, every one. */
    const writeTargets = Effect.map(members, (all) => {
      const current = all.filter((member) => !member.behind)
      return current.length > 0 ? current : all
    })

    /** Runs `operation` on each edge at once, each bounded by one outside call; each edge's outcome, in order. A lone edge is not bounded here (its caller bounds it). */
    const onEach = <A, E>(targets: ReadonlyArray<EdgeMember>, operation: (member: EdgeMember) => Effect.Effect<A, E>) => {
      // One edge (the common case): no fiber forked per change, no bound added.
      const [only] = targets
      if (targets.length === 1 && only !== undefined) {
        return Effect.map(Effect.either(operation(only)), (outcome) => [{ member: only, outcome }])
      }
      return Effect.forEach(
        targets,
        (member) =>
          Effect.either(
            operation(member).pipe(
              Effect.timeoutFail({
                duration: rules.perEdgeBound,
                onTimeout: () => new NginxError({ operation: "probe", reason: `edge ${member.name} did not answer within ${Duration.format(rules.perEdgeBound)}` })
              })
            )
          ).pipe(Effect.map((outcome) => ({ member, outcome }))),
        { concurrency: "unbounded" }
      )
    }

    /** The first failure when no edge succeeded: no edge took the change. */
    const noneTook = (outcomes: ReadonlyArray<{ readonly member: EdgeMember; readonly outcome: Either.Either<unknown, NginxError> }>): NginxError => {
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
        yield* rules.owe(member.edgeId, route, `edge ${member.name}: ${reason}`)
        if (!member.behind) yield* rules.beganToOwe(member, route, reason)
        const now = yield* Clock.currentTimeMillis
        yield* Ref.update(owing, (all) => {
          const next = new Map([...all].filter(([, entry]) => now - entry.atMs < OWING_KEPT_MS))
          return next.set(route.allocationId, { edges: new Set([...(all.get(route.allocationId)?.edges ?? []), member.edgeId]), atMs: now })
        })
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
      for (const member of (yield* members).filter((m) => !targets.includes(m))) {
        yield* Effect.forkDaemon(Effect.ignore(member.routes.writeRoute(route, options)))
      }
      const outcomes = yield* onEach(targets, (member) => member.routes.writeRoute(route, options))
      if (!outcomes.some((o) => Either.isRight(o.outcome))) {
        return yield* noneTook(outcomes)
      }
      yield* Effect.forEach(outcomes, ({ member, outcome }) =>
        Either.isLeft(outcome)
          ? rules.markBehind(member.edgeId, `it missed the route of allocation ${route.allocationId}: ${reasonOf(outcome.left)}`)
          : rules.acknowledge(member.edgeId, route.generation), { discard: true })
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
          ? rules.markBehind(member.edgeId, `it does not serve allocation ${route.allocationId}: ${reasonOf(outcome.left)}`)
          : Effect.void, { discard: true })
    })

    const removeRoute = Effect.fn("Nginx.removeRoute")(function*(route: RouteKey) {
      const all = yield* members
      // An edge already behind is not asked (its catch-up removes what no live allocation owns):
      // it owes the removal at once, unless no edge is up to date (then each is asked).
      const current = all.filter((member) => !member.behind)
      const asked = current.length > 0 ? current : all
      const outcomes = yield* onEach(asked, (member) => member.routes.removeRoute(route))
      const found = outcomes.flatMap((o) => (Either.isRight(o.outcome) ? [o.outcome.right] : []))
      if (found.length === 0) {
        return yield* noneTook(outcomes)
      }
      for (const { member, outcome } of outcomes) {
        if (Either.isLeft(outcome)) yield* owe(member, route, reasonOf(outcome.left))
        else yield* rules.acknowledge(member.edgeId, route.generation)
      }
      for (const member of all.filter((m) => !asked.includes(m))) yield* owe(member, route, "it was behind")
      return found.includes("removed") ? "removed" as const : found.includes("other") ? "other" as const : "absent" as const
    })

    const awaitWithdrawn = Effect.fn("Nginx.awaitWithdrawn")(function*(route: RouteKey) {
      const all = yield* members
      const owed = (yield* Ref.get(owing)).get(route.allocationId)?.edges ?? new Set<EdgeId>()
      const proving = all.filter((member) => !owed.has(member.edgeId) && !member.behind)
      const targets = proving.length > 0 ? proving : all.filter((member) => !owed.has(member.edgeId))
      if (targets.length === 0) return { _tag: "gone" } as Withdrawn
      const outcomes = yield* onEach(targets, (member) => member.routes.awaitWithdrawn(route))
      const proven = outcomes.flatMap((o) => (Either.isRight(o.outcome) ? [o.outcome.right] : []))
      if (proven.length === 0) {
        return yield* noneTook(outcomes)
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
          return yield* noneTook(outcomes)
        }
        return chosen.outcome.right
      })

    return { writeRoute, awaitServed, removeRoute, awaitWithdrawn, probeRoute } satisfies Pick<
      Nginx["Type"],
      "writeRoute" | "awaitServed" | "removeRoute" | "awaitWithdrawn" | "probeRoute"
    >
  })
