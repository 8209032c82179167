// The edge registry in memory, for the in-memory suites (makeOutsideTest adds it to its world):
// what src/edges/EdgeRegistry.ts does in Postgres, over Refs, with the same rules (taken names and
// addresses, the local edge kept, a catch-up that clears `behind` only from the latest mark, owed
// removals resolved through the world's allocations and dropped with their edge or gateway).
import { SqlError } from "@effect/sql"
import { Clock, Effect, Redacted, Ref } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { DatabaseError } from "../../src/db/errors.ts"
import type { Edge, EdgeName, EdgeState, OwedRemoval } from "../../src/domain/edge.ts"
import type { AllocationId, EdgeId, GatewayId } from "../../src/domain/ids.ts"
import {
  EdgeAddressTaken,
  EdgeIsLocal,
  EdgeNameTaken,
  EdgeNotFound,
  EdgeRegistry,
  LOCAL_EDGE_NAME
} from "../../src/edges/EdgeRegistry.ts"
import type { World } from "./TestLayers.ts"

/** The local edge every in-memory world starts with, registered as the service registers it at start-up. */
export const TEST_LOCAL_EDGE = {
  edgeId: "00000000-0000-4000-8000-000000000ed9" as EdgeId,
  routeApiUrl: "http://127.0.0.1:8089",
  probeUrl: "http://127.0.0.1:80",
  secret: Redacted.make("0123456789abcdef0123456789abcdef")
} as const

/** A row of `edges`: the edge, its secret and its behind mark. */
interface EdgeRow {
  readonly edge: Edge
  readonly secret: Redacted.Redacted<string>
  readonly behindMark: number
}

/** Postgres refusing a statement (it has a SQLSTATE): nothing changed. */
const refused = (code: string, message: string) =>
  new DatabaseError({ cause: new SqlError.SqlError({ message, cause: { code } }) })

const newEdge = (fields: Pick<Edge, "edgeId" | "name" | "routeApiUrl" | "probeUrl" | "local">, now: Date): Edge => ({
  ...fields,
  state: "active",
  behind: true,
  bootId: null,
  ackedGeneration: 0,
  ackedAt: null,
  lastSeen: null,
  lastError: null,
  routeCount: 0,
  createdAt: now
})

/** What the edges table holds of the columns a mark sets: reasons are cut at 500 characters. */
const reasonOf = (reason: string) => reason.slice(0, 500)

export const edgeRegistryTest = (world: World) => {
  // Map order is insertion order: the tie-break of edges created in the same millisecond.
  const rows = Ref.unsafeMake<ReadonlyMap<EdgeId, EdgeRow>>(
    new Map([[TEST_LOCAL_EDGE.edgeId, {
      edge: newEdge({ ...TEST_LOCAL_EDGE, name: LOCAL_EDGE_NAME as EdgeName, local: true }, new Date(0)),
      secret: TEST_LOCAL_EDGE.secret,
      behindMark: 0
    }]])
  )
  const owed = Ref.unsafeMake<ReadonlyArray<OwedRemoval>>([])
  const now = Effect.map(Clock.currentTimeMillis, (ms) => new Date(ms))

  const sorted = (all: ReadonlyMap<EdgeId, EdgeRow>) =>
    [...all.values()].sort((a, b) => Number(b.edge.local) - Number(a.edge.local) || a.edge.createdAt.getTime() - b.edge.createdAt.getTime())

  /** Updates the edge's row when it exists (an update of no row is no error, as in SQL); the row after, if any. */
  const update = (edgeId: EdgeId, change: (row: EdgeRow, at: Date) => EdgeRow) =>
    Effect.flatMap(now, (at) =>
      Ref.modify(rows, (all): [EdgeRow | undefined, ReadonlyMap<EdgeId, EdgeRow>] => {
        const row = all.get(edgeId)
        if (row === undefined) return [undefined, all]
        const changed = change(row, at)
        return [changed, new Map(all).set(edgeId, changed)]
      }))

  const get = (edgeId: EdgeId) =>
    Effect.flatMap(Ref.get(rows), (all) => {
      const row = all.get(edgeId)
      return row === undefined ? Effect.fail(new EdgeNotFound({ edgeId })) : Effect.succeed(row.edge)
    })

  return EdgeRegistry.make({
    list: () => Effect.map(Ref.get(rows), (all) => sorted(all).map((row) => row.edge)),
    get,
    endpoints: () =>
      Effect.map(Ref.get(rows), (all) =>
        sorted(all).map(({ edge, secret, behindMark }) => ({
          edgeId: edge.edgeId,
          name: edge.name,
          routeApiUrl: edge.routeApiUrl,
          probeUrl: edge.probeUrl,
          secret,
          local: edge.local,
          state: edge.state,
          behind: edge.behind,
          behindMark
        }))),
    add: (fields) =>
      Effect.flatMap(now, (at) =>
        Effect.flatten(Ref.modify(rows, (all): [Effect.Effect<Edge, EdgeNameTaken | EdgeAddressTaken>, ReadonlyMap<EdgeId, EdgeRow>] => {
          const taken = [...all.values()].map((row) => row.edge)
          if (taken.some((edge) => edge.name === fields.name)) return [Effect.fail(new EdgeNameTaken({ name: fields.name })), all]
          if (taken.some((edge) => edge.routeApiUrl === fields.routeApiUrl)) {
            return [Effect.fail(new EdgeAddressTaken({ routeApiUrl: fields.routeApiUrl })), all]
          }
          const edge = newEdge({ ...fields, edgeId: randomUUID() as EdgeId, local: false }, at)
          return [
            Effect.succeed(edge),
            new Map(all).set(edge.edgeId, { edge, secret: Redacted.make(randomBytes(24).toString("hex")), behindMark: 0 })
          ]
        }))),
    registerLocal: (local) =>
      Effect.flatMap(now, (at) =>
        Effect.flatten(Ref.modify(rows, (all): [Effect.Effect<void, DatabaseError>, ReadonlyMap<EdgeId, EdgeRow>] => {
          const known = all.get(local.edgeId)
          if (known !== undefined) {
            const edge = { ...known.edge, routeApiUrl: local.routeApiUrl, probeUrl: local.probeUrl }
            return [Effect.void, new Map(all).set(local.edgeId, { ...known, edge, secret: local.secret })]
          }
          // Another local edge (edges_one_local), or the name taken.
          if ([...all.values()].some((row) => row.edge.local || row.edge.name === LOCAL_EDGE_NAME)) {
            return [Effect.fail(refused("23505", "duplicate key value violates unique constraint")), all]
          }
          const edge = newEdge({ ...local, name: LOCAL_EDGE_NAME as EdgeName, local: true }, at)
          return [Effect.void, new Map(all).set(local.edgeId, { edge, secret: local.secret, behindMark: 0 })]
        }))),
    setState: (edgeId, state: EdgeState) =>
      Effect.flatMap(update(edgeId, (row) => ({ ...row, edge: { ...row.edge, state } })), (row) =>
        row === undefined ? Effect.fail(new EdgeNotFound({ edgeId })) : Effect.succeed(row.edge)),
    remove: (edgeId) =>
      Effect.gen(function*() {
        const edge = yield* get(edgeId)
        if (edge.local) return yield* new EdgeIsLocal({ edgeId })
        yield* Ref.update(rows, (all) => {
          const next = new Map(all)
          next.delete(edgeId)
          return next
        })
        // Its owed removals go with it (on delete cascade): the gateways they held are free.
        return yield* Ref.modify(owed, (all) => {
          const dropped = all.filter((removal) => removal.edgeId === edgeId)
          return [dropped.length, all.filter((removal) => removal.edgeId !== edgeId)]
        })
      }),
    markBehind: (edgeId, reason) =>
      Effect.asVoid(update(edgeId, (row) => ({
        edge: { ...row.edge, behind: true, lastError: reasonOf(reason) },
        secret: row.secret,
        behindMark: row.behindMark + 1
      }))),
    markSeen: (edgeId, seen) =>
      Effect.asVoid(update(edgeId, (row, at) => ({
        ...row,
        edge: { ...row.edge, lastSeen: at, bootId: seen.bootId, routeCount: seen.routeCount ?? row.edge.routeCount }
      }))),
    markFailing: (edgeId, reason) => Effect.asVoid(update(edgeId, (row) => ({ ...row, edge: { ...row.edge, lastError: reasonOf(reason) } }))),
    markCaughtUp: (edgeId, caughtUp) =>
      Effect.flatMap(now, (at) =>
        Ref.modify(rows, (all): [boolean, ReadonlyMap<EdgeId, EdgeRow>] => {
          const row = all.get(edgeId)
          // A mark that came while the catch-up ran: still behind.
          if (row === undefined || row.behindMark !== caughtUp.fromMark) return [false, all]
          const edge = { ...row.edge, behind: false, lastSeen: at, bootId: caughtUp.bootId, routeCount: caughtUp.routeCount, lastError: null }
          return [true, new Map(all).set(edgeId, { ...row, edge })]
        })),
    acknowledge: (edgeId, generation) =>
      Effect.asVoid(update(edgeId, (row, at) =>
        row.edge.ackedGeneration < generation ? { ...row, edge: { ...row.edge, ackedGeneration: generation, ackedAt: at } } : row)),
    owe: (edgeId, removal, reason) =>
      Effect.gen(function*() {
        const at = yield* now
        // A deleted edge owes nothing (the insert joins edges).
        if (!(yield* Ref.get(rows)).has(edgeId)) return
        const allocation = (yield* Ref.get(world.allocations)).get(removal.allocationId)
        // The insert selects the allocation: none, no row.
        if (allocation === undefined) return
        const gatewayId = allocation.gatewayId
        // An allocation whose gateway left the pool holds no gateway: no row (the insert's `where`).
        if (gatewayId !== null) yield* Ref.update(owed, (all) =>
          all.some((known) => known.edgeId === edgeId && known.allocationId === removal.allocationId) ? all : [...all, {
            edgeId,
            allocationId: allocation.allocationId,
            organizationId: allocation.organizationId,
            generation: removal.generation,
            gatewayId,
            reason: reasonOf(reason),
            since: at
          }])
        // The same statement marks the edge behind.
        yield* update(edgeId, (row) => ({ ...row, behindMark: row.behindMark + 1, edge: { ...row.edge, behind: true, lastError: reasonOf(reason) } }))
      }),
    owedBy: (edgeId) =>
      Effect.map(Ref.get(owed), (all) =>
        all.filter((removal) => removal.edgeId === edgeId).sort((a, b) => a.since.getTime() - b.since.getTime())),
    owedFinished: (edgeId) =>
      Effect.gen(function*() {
        const allocations = yield* Ref.get(world.allocations)
        const over = (allocationId: AllocationId) => {
          const state = allocations.get(allocationId)?.state
          return state === "released" || state === "rolled_back"
        }
        return (yield* Ref.get(owed)).filter((removal) => removal.edgeId === edgeId && over(removal.allocationId))
          .sort((a, b) => a.since.getTime() - b.since.getTime())
      }),
    settle: (edgeId, allocationIds) =>
      Ref.update(owed, (all) => all.filter((removal) => removal.edgeId !== edgeId || !allocationIds.includes(removal.allocationId))),
    holds: () =>
      Effect.gen(function*() {
        const edges = yield* Ref.get(rows)
        // A gateway removed from the pool takes its owed removals with it (on delete cascade).
        const gateways = new Set((yield* Ref.get(world.gateways)).map((gateway) => gateway.gatewayId))
        const held = new Map<GatewayId, Array<string>>()
        for (const removal of yield* Ref.get(owed)) {
          const name = edges.get(removal.edgeId)?.edge.name
          if (name === undefined || !gateways.has(removal.gatewayId)) continue
          held.set(removal.gatewayId, [...held.get(removal.gatewayId) ?? [], name])
        }
        // Each edge once per gateway, by name (array_agg(distinct e.name order by e.name)).
        return new Map([...held].map(([gatewayId, names]): [GatewayId, ReadonlyArray<string>] => [gatewayId, [...new Set(names)].sort()]))
      })
  })
}
