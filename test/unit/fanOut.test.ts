// The rules of several edges (src/edges/fanOut.ts) over in-memory edges: which edge gets a change,
// when an edge is marked behind or owes a removal, and when the change fails. The real nginx edges
// are in test/edges.
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Ref, TestClock } from "effect"
import { randomUUID } from "node:crypto"
import { type AllocationId, EdgeId, Generation, type OrganizationId, type Upstream } from "../../src/domain/ids.ts"
import type { EdgeMember } from "../../src/edges/EdgeSet.ts"
import { makeFanOut } from "../../src/edges/fanOut.ts"
import { type EdgeRoutes, NginxError, type Route } from "../../src/nginx/Nginx.ts"

/** How an in-memory edge answers: normally, with an error, or never (a frozen nginx). */
type Answer = "ok" | "fail" | "hang"

/** An edge whose table is a map of org to allocation; every call is noted. */
const makeEdge = (name: string, answer: Ref.Ref<Answer>, calls: Array<string>) =>
  Effect.gen(function*() {
    const table = yield* Ref.make(new Map<OrganizationId, AllocationId>())
    const call = <A>(what: string, effect: Effect.Effect<A>) =>
      Effect.flatMap(Ref.get(answer), (now) => {
        calls.push(`${name} ${what}`)
        return now === "ok"
          ? effect
          : now === "fail"
          ? Effect.fail(new NginxError({ operation: "write", reason: `${name} refused`, noEffect: true }))
          : Effect.never
      })
    const routes: EdgeRoutes = {
      edgeId: name,
      name,
      writeRoute: (route) => call("write", Ref.update(table, (t) => new Map(t).set(route.organizationId, route.allocationId))),
      removeRoute: (route) =>
        call("remove", Ref.modify(table, (t) => {
          if (t.get(route.organizationId) !== route.allocationId) return ["absent" as const, t]
          const next = new Map(t)
          next.delete(route.organizationId)
          return ["removed" as const, next]
        })),
      awaitServed: (route) =>
        call("awaitServed", Effect.flatMap(Ref.get(table), (t) => (t.get(route.organizationId) === route.allocationId ? Effect.void : Effect.never))),
      awaitWithdrawn: (route) =>
        call("awaitWithdrawn", Effect.flatMap(Ref.get(table), (t) => (t.get(route.organizationId) === route.allocationId ? Effect.never : Effect.succeed({ _tag: "gone" } as const)))),
      probeRoute: (org) => call("probe", Effect.map(Ref.get(table), (t) => t.get(org) ?? null)),
      listRoutes: Effect.succeed([]),
      tableState: Effect.succeedNone,
      restoreAll: () => Effect.void,
      heartbeat: () => Effect.void
    }
    return { routes, table }
  })

const makeSet = (edges: ReadonlyArray<{ readonly name: string; readonly behind?: boolean }>) =>
  Effect.gen(function*() {
    const calls: Array<string> = []
    const behindMarks: Array<string> = []
    const owed: Array<string> = []
    const told: Array<string> = []
    const acked = new Map<string, number>()
    const built = yield* Effect.forEach(edges, (edge) =>
      Effect.gen(function*() {
        const answer = yield* Ref.make<Answer>("ok")
        const { routes, table } = yield* makeEdge(edge.name, answer, calls)
        const member: EdgeMember = {
          edgeId: EdgeId.make(randomUUID()),
          name: edge.name,
          local: false,
          draining: false,
          behind: edge.behind ?? false,
          behindMark: 0,
          routes
        }
        return { member, answer, table }
      }))
    const members = yield* Ref.make(built.map((edge) => edge.member))
    const nameOf = (edgeId: EdgeId) => built.find((edge) => edge.member.edgeId === edgeId)?.member.name ?? "?"
    const fanOut = yield* makeFanOut({
      members: Ref.get(members),
      markBehind: (edgeId) =>
        Effect.zipRight(
          Effect.sync(() => behindMarks.push(nameOf(edgeId))),
          Ref.update(members, (all) => all.map((m) => (m.edgeId === edgeId ? { ...m, behind: true } : m)))
        ),
      acknowledge: (edgeId, generation) => Effect.sync(() => acked.set(nameOf(edgeId), generation)),
      // As EdgeSet's: the debt, and the edge behind (one statement in Postgres).
      owe: (edgeId, removal) =>
        Effect.zipRight(
          Effect.sync(() => owed.push(`${nameOf(edgeId)} ${removal.allocationId}`)),
          Ref.update(members, (all) => all.map((m) => (m.edgeId === edgeId ? { ...m, behind: true } : m)))
        ),
      perEdgeBound: Duration.seconds(1),
      beganToOwe: (member, removal) => Effect.sync(() => told.push(`${member.name} ${removal.allocationId}`))
    })
    const edge = (name: string) => {
      const found = built.find((e) => e.member.name === name)
      if (found === undefined) throw new Error(`no edge ${name}`)
      return found
    }
    return { fanOut, calls, behindMarks, owed, told, acked, edge }
  })

const route = (): Route => ({
  organizationId: randomUUID() as OrganizationId,
  allocationId: randomUUID() as AllocationId,
  generation: Generation.make(7),
  upstream: "127.0.0.1:9001" as Upstream
})

describe("several edges: the rules of a change (test layers)", () => {
  it.effect("a write goes to every edge at once and is proven on each; each edge acknowledges its generation", () =>
    Effect.gen(function*() {
      const set = yield* makeSet([{ name: "a" }, { name: "b" }, { name: "c" }])
      const r = route()
      yield* set.fanOut.writeRoute(r)
      yield* set.fanOut.awaitServed(r)
      for (const name of ["a", "b", "c"]) expect((yield* Ref.get(set.edge(name).table)).get(r.organizationId)).toBe(r.allocationId)
      expect([...set.acked.entries()].sort()).toEqual([["a", 7], ["b", 7], ["c", 7]])
      expect(set.behindMarks).toEqual([])
    }))

  it.effect("an edge that refuses or never answers a write is behind; the write succeeds on the others, and fails only when no edge took it", () =>
    Effect.gen(function*() {
      const set = yield* makeSet([{ name: "a" }, { name: "b" }, { name: "c" }])
      yield* Ref.set(set.edge("b").answer, "fail")
      yield* Ref.set(set.edge("c").answer, "hang")
      const r = route()
      const written = yield* Effect.fork(set.fanOut.writeRoute(r))
      // c is given one outside call (1 s), then counted as missing the write.
      yield* TestClock.adjust(Duration.seconds(1))
      yield* Fiber.join(written)
      expect(set.behindMarks.sort()).toEqual(["b", "c"])
      // The next write still reaches b and c, unawaited, and is awaited on a alone.
      yield* Ref.set(set.edge("b").answer, "ok")
      const next = route()
      yield* set.fanOut.writeRoute(next)
      yield* Effect.yieldNow()
      expect((yield* Ref.get(set.edge("b").table)).get(next.organizationId)).toBe(next.allocationId)

      const alone = yield* makeSet([{ name: "x" }, { name: "y" }])
      yield* Ref.set(alone.edge("x").answer, "fail")
      yield* Ref.set(alone.edge("y").answer, "fail")
      const error = yield* alone.fanOut.writeRoute(route()).pipe(Effect.flip)
      expect(error.reason).toContain("refused")
      expect(alone.behindMarks).toEqual([])
    }))

  it.effect("a removal an edge does not acknowledge is owed by it (its gateway held); one that no edge acknowledged fails and owes nothing", () =>
    Effect.gen(function*() {
      const set = yield* makeSet([{ name: "a" }, { name: "b" }])
      const r = route()
      yield* set.fanOut.writeRoute(r)
      yield* Ref.set(set.edge("b").answer, "fail")
      expect(yield* set.fanOut.removeRoute(r)).toBe("removed")
      expect(set.owed).toEqual([`b ${r.allocationId}`])
      // Its proof asks the edges that acknowledged, not the one that owes it.
      expect(yield* set.fanOut.awaitWithdrawn(r)).toEqual({ _tag: "gone" })
      expect(set.calls.filter((c) => c === "b awaitWithdrawn")).toEqual([])
      // The operator is told when b begins to owe, not for every removal it misses while behind.
      const again = route()
      yield* set.fanOut.writeRoute(again)
      expect(yield* set.fanOut.removeRoute(again)).toBe("removed")
      expect(set.owed).toEqual([`b ${r.allocationId}`, `b ${again.allocationId}`])
      expect(set.told).toEqual([`b ${r.allocationId}`])

      const lone = yield* makeSet([{ name: "only" }])
      const s = route()
      yield* lone.fanOut.writeRoute(s)
      yield* Ref.set(lone.edge("only").answer, "fail")
      expect((yield* lone.fanOut.removeRoute(s).pipe(Effect.flip)).reason).toContain("refused")
      expect(lone.owed).toEqual([])
    }))

  it.effect("an edge already behind is not asked to remove: it owes the removal at once (its catch-up removes the route)", () =>
    Effect.gen(function*() {
      const set = yield* makeSet([{ name: "a" }, { name: "late", behind: true }])
      const r = route()
      yield* set.fanOut.writeRoute(r)
      yield* Effect.yieldNow()
      expect(yield* set.fanOut.removeRoute(r)).toBe("removed")
      expect(set.calls).not.toContain("late remove")
      expect(set.owed).toEqual([`late ${r.allocationId}`])
    }))
})
