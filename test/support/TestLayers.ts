import { SqlError } from "@effect/sql"
import { Clock, Context, Deferred, Effect, Layer, Option, Ref } from "effect"
import { NoGatewayAvailable } from "../../src/domain/errors.ts"
import { type AllocationId, EdgeId, type GatewayId, type GatewayName, Generation, type OrganizationId, type Upstream } from "../../src/domain/ids.ts"
import { Dns, DnsError } from "../../src/dns/Dns.ts"
import { Handshake, HandshakeError } from "../../src/handshake/Handshake.ts"
import { type AllocationJournalEntry, Journal, type JournalRecord } from "../../src/journal/Journal.ts"
import { type EdgeRoutes, Nginx, NginxError, RouteLost, singleEdge, type TableState, type Withdrawn } from "../../src/nginx/Nginx.ts"
import { EdgeSet } from "../../src/edges/EdgeSet.ts"
import { type Notice, Notifier } from "../../src/telemetry/Notifier.ts"
import { DatabaseError } from "../../src/db/errors.ts"
import { Database } from "../../src/db/Database.ts"
import { AllocationStore } from "../../src/allocation/AllocationStore.ts"
import { type Allocation, type AllocationState, type LiveAllocation, LiveState } from "../../src/domain/allocation.ts"
import { type Gateway, QUARANTINE_CAP_MS } from "../../src/domain/gateway.ts"
import {
  GatewayAllocated,
  GatewayNameTaken,
  GatewayNotFound,
  GatewayStore
} from "../../src/pool/GatewayStore.ts"
import { Runner } from "../../src/pool/Runner.ts"
import { EdgeRegistry } from "../../src/edges/EdgeRegistry.ts"
import { edgeRegistryTest } from "./edgesTest.ts"

/**
 * In-memory stand-ins for the outside systems, for the ordering logic. Every call is recorded
 * by name ("dns.upsert", "nginx.reload", ...) and any call can be made to fail, hang or die, or
 * to wait at a gate the test opens (to interleave two actors at a precise point).
 */
export type Fault = "fail" | "hang" | "die" | Deferred.Deferred<void>

export interface World {
  readonly calls: Ref.Ref<ReadonlyArray<string>>
  readonly faults: Ref.Ref<ReadonlyMap<string, Fault>>
  readonly dnsRecords: Ref.Ref<ReadonlySet<OrganizationId>>
  readonly routeFiles: Ref.Ref<ReadonlyMap<OrganizationId, AllocationId>>
  /** What nginx serves: the route files as of the last successful reload. */
  readonly served: Ref.Ref<ReadonlyMap<OrganizationId, AllocationId>>
  readonly gateways: Ref.Ref<ReadonlyArray<Gateway>>
  readonly allocations: Ref.Ref<ReadonlyMap<AllocationId, Allocation>>
  readonly journal: Ref.Ref<ReadonlyArray<JournalRecord>>
  readonly notices: Ref.Ref<ReadonlyArray<Notice>>
  /** Runners whose advisory lock is gone (crashed processes). */
  readonly deadRunners: Ref.Ref<ReadonlySet<string>>
  /** Whether this process's runner holds its lease (false: it lapsed). */
  readonly leaseHeld: Ref.Ref<boolean>
  /**
   * The next this-many ownership checks find the lease gone in Postgres (a session terminated for
   * a moment), the ones after find it held again: a lapse and its recovery, between two checks.
   */
  readonly leaseLapses: Ref.Ref<number>
  /** lua: the route table's boot id and whether every route was pushed into it since. */
  readonly table: Ref.Ref<TableState>
}

export class TestWorld extends Context.Tag("test/TestWorld")<TestWorld, World>() {}

export const setFault = (operation: string, fault: Fault) =>
  Effect.flatMap(TestWorld, (world) => Ref.update(world.faults, (faults) => new Map(faults).set(operation, fault)))

export const clearFaults = Effect.flatMap(TestWorld, (world) => Ref.set(world.faults, new Map()))

export const calls = Effect.flatMap(TestWorld, (world) => Ref.get(world.calls))

/** A gate on `operation`: its calls wait until the returned effect opens it (and the fault is gone). */
export const gate = (operation: string) =>
  Effect.gen(function*() {
    const gate = yield* Deferred.make<void>()
    yield* setFault(operation, gate)
    return Effect.flatMap(TestWorld, (world) =>
      Ref.update(world.faults, (faults) => {
        const next = new Map(faults)
        next.delete(operation)
        return next
      })).pipe(Effect.zipRight(Deferred.succeed(gate, undefined)), Effect.asVoid)
  })

/**
 * Records the call, then applies its fault if one is set: on `name`, or on `name@{target}` for
 * a fault that hits one target only (say one gateway's handshake).
 */
const operation = <A, E>(world: World, name: string, error: () => E, effect: Effect.Effect<A, E>, target?: string) =>
  Effect.gen(function*() {
    yield* Ref.update(world.calls, (calls) => [...calls, name])
    const faults = yield* Ref.get(world.faults)
    const fault = faults.get(name) ?? (target === undefined ? undefined : faults.get(`${name}@${target}`))
    if (fault === "fail") return yield* Effect.fail(error())
    if (fault === "hang") return yield* Effect.never
    if (fault === "die") return yield* Effect.die(new Error(`injected defect in ${name}`))
    if (fault !== undefined) yield* Deferred.await(fault)
    return yield* effect
  })

// Postgres's answer to a statement it refused (it has a SQLSTATE): nothing changed.
const sqlError = (name: string) =>
  new DatabaseError({ cause: new SqlError.SqlError({ message: `injected failure in ${name}`, cause: { code: "XX000" } }) })
const live: ReadonlyArray<AllocationState> = LiveState.literals
const isLive = (allocation: Allocation): allocation is LiveAllocation => live.includes(allocation.state)

const makeWorld = Effect.gen(function*() {
  return {
    calls: yield* Ref.make<ReadonlyArray<string>>([]),
    faults: yield* Ref.make<ReadonlyMap<string, Fault>>(new Map()),
    dnsRecords: yield* Ref.make<ReadonlySet<OrganizationId>>(new Set()),
    routeFiles: yield* Ref.make<ReadonlyMap<OrganizationId, AllocationId>>(new Map()),
    served: yield* Ref.make<ReadonlyMap<OrganizationId, AllocationId>>(new Map()),
    gateways: yield* Ref.make<ReadonlyArray<Gateway>>([]),
    allocations: yield* Ref.make<ReadonlyMap<AllocationId, Allocation>>(new Map()),
    journal: yield* Ref.make<ReadonlyArray<JournalRecord>>([]),
    notices: yield* Ref.make<ReadonlyArray<Notice>>([]),
    deadRunners: yield* Ref.make<ReadonlySet<string>>(new Set()),
    leaseHeld: yield* Ref.make(true),
    leaseLapses: yield* Ref.make(0),
    table: yield* Ref.make<TableState>({ bootId: "boot-1", ready: true })
  } satisfies World
})

const poolOf = (world: World) => {
  let counter = 0
  let claims = 0
  const lastAllocated = new Map<GatewayId, number>()
  // Failed releases in a row, by gateway (Postgres keeps them in gateways.release_failures).
  const releaseFailures = new Map<GatewayId, number>()
  const op = <A, E>(name: string, effect: Effect.Effect<A, E>) =>
    operation<A, E | DatabaseError>(world, name, () => sqlError(name), effect)
  const findLive = (organizationId: OrganizationId) =>
    Effect.map(Ref.get(world.allocations), (all) =>
      Option.fromNullable([...all.values()].filter(isLive).find((a) => a.organizationId === organizationId)))
  const healthy = (gatewayId: GatewayId, served: boolean) =>
    Ref.update(world.gateways, (gs) =>
      gs.map((g) =>
        g.gatewayId === gatewayId
          ? { ...g, health: "healthy" as const, quarantinedUntil: null, consecutiveFailures: served ? 0 : g.consecutiveFailures }
          : g
      ))
  const setState = (allocationId: AllocationId, state: AllocationState) =>
    Ref.update(world.allocations, (all) => {
      const current = all.get(allocationId)
      return current === undefined ? all : new Map(all).set(allocationId, { ...current, state, updatedAt: new Date() })
    })

  // One in-memory Postgres behind the three services that read and write it.
  const store: Omit<GatewayStore, "_tag"> & Omit<AllocationStore, "_tag"> & Omit<Database, "_tag"> = {
    claim: (allocationId, organizationId, runner) =>
      op("pool.claim", Effect.gen(function*() {
        const existing = yield* findLive(organizationId)
        if (Option.isSome(existing)) {
          const a = existing.value
          return { allocationId: a.allocationId, gatewayId: a.gatewayId, upstream: a.upstream, generation: a.generation, state: a.state, reused: true }
        }
        // Available (free, active, out of quarantine), least recently allocated first.
        const nowMs = yield* Clock.currentTimeMillis
        const free = (yield* Ref.get(world.gateways))
          .filter((g) =>
            g.allocationId === null && g.state === "active" && g.unreleasedAllocationId === null &&
            (g.quarantinedUntil?.getTime() ?? 0) <= nowMs
          )
          .sort((a, b) => (lastAllocated.get(a.gatewayId) ?? -1) - (lastAllocated.get(b.gatewayId) ?? -1))[0]
        if (free === undefined) return yield* new NoGatewayAvailable()
        claims += 1
        lastAllocated.set(free.gatewayId, claims)
        const generation = Generation.make(claims)
        yield* Ref.update(world.gateways, (gs) => gs.map((g) => g.gatewayId === free.gatewayId ? { ...g, allocationId } : g))
        const now = new Date()
        yield* Ref.update(world.allocations, (all) =>
          new Map(all).set(allocationId, {
            allocationId, organizationId, gatewayId: free.gatewayId, upstream: free.upstream, generation, state: "starting",
            runner, error: null, traceId: null, createdAt: now, updatedAt: now, finishedAt: null
          }))
        return { allocationId, gatewayId: free.gatewayId, upstream: free.upstream, generation, state: "starting" as const, reused: false }
      })),
    release: (allocationId, finalState, runner, releaseError = Option.none()) =>
      op("pool.release", Effect.gen(function*() {
        const allocation = (yield* Ref.get(world.allocations)).get(allocationId)
        if (allocation === undefined || !isLive(allocation) || allocation.runner !== runner) return false
        yield* setState(allocationId, finalState)
        yield* Ref.update(world.gateways, (gs) =>
          gs.map((g) =>
            g.allocationId !== allocationId ? g : Option.match(releaseError, {
              onNone: () => ({ ...g, allocationId: null }),
              onSome: (reason) => {
                releaseFailures.set(g.gatewayId, 1)
                return { ...g, allocationId: null, unreleasedAllocationId: allocationId, lastFailure: `release: ${reason}` }
              }
            })
          ))
        return true
      })),
    ping: () => op("pool.ping", Effect.void),
    whileUnclaimed: (organizationId, effect) =>
      op("pool.whileUnclaimed", findLive(organizationId)).pipe(
        Effect.flatMap((found) => Option.isSome(found) ? Effect.succeed(Option.none()) : Effect.map(effect, Option.some))
      ),
    pendingReleases: () =>
      Effect.gen(function*() {
        const allocations = yield* Ref.get(world.allocations)
        return (yield* Ref.get(world.gateways)).flatMap((g) => {
          const owed = g.unreleasedAllocationId === null ? undefined : allocations.get(g.unreleasedAllocationId)
          return owed === undefined ? [] : [{
            gatewayId: g.gatewayId,
            name: g.name,
            upstream: g.upstream,
            allocationId: owed.allocationId,
            organizationId: owed.organizationId,
            releaseFailures: releaseFailures.get(g.gatewayId) ?? 0
          }]
        })
      }),
    releaseConfirmed: (gatewayId, allocationId) =>
      op("pool.releaseConfirmed", Ref.modify(world.gateways, (gs) => {
        const owes = gs.some((g) => g.gatewayId === gatewayId && g.unreleasedAllocationId === allocationId)
        return [owes, owes ? gs.map((g) => g.gatewayId === gatewayId ? { ...g, unreleasedAllocationId: null } : g) : gs]
      })),
    releaseRetryFailed: (gatewayId, allocationId) =>
      Effect.map(Ref.get(world.gateways), (gs) => {
        if (!gs.some((g) => g.gatewayId === gatewayId && g.unreleasedAllocationId === allocationId)) return Option.none()
        const failures = (releaseFailures.get(gatewayId) ?? 0) + 1
        releaseFailures.set(gatewayId, failures)
        return Option.some(failures)
      }),
    transition: (allocationId, runner, from, to) =>
      op("pool.transition", Effect.gen(function*() {
        const allocation = (yield* Ref.get(world.allocations)).get(allocationId)
        if (allocation === undefined || !isLive(allocation) || allocation.runner !== runner) return false
        if (!from.includes(allocation.state)) return false
        yield* setState(allocationId, to)
        return true
      })),
    // Journal rows (and here the gateway's health) ride with the statement, as in Postgres:
    // written whatever it finds, lost if it fails.
    activate: (allocationId, runner, gatewayId, journal) =>
      op("pool.activate", Effect.gen(function*() {
        yield* Ref.update(world.journal, (all) => [...all, ...journal])
        yield* healthy(gatewayId, true)
        const allocation = (yield* Ref.get(world.allocations)).get(allocationId)
        if (allocation === undefined || allocation.state !== "starting" || allocation.runner !== runner) return false
        yield* setState(allocationId, "active")
        return true
      })),
    owns: (allocationId, runner, journal = []) =>
      Effect.gen(function*() {
        yield* Ref.update(world.journal, (all) => [...all, ...journal])
        const allocation = (yield* Ref.get(world.allocations)).get(allocationId)
        const lapsing = yield* Ref.modify(world.leaseLapses, (n) => [n > 0, Math.max(0, n - 1)])
        return {
          namesRunner: allocation !== undefined && isLive(allocation) && allocation.runner === runner,
          leaseAlive: !lapsing && !(yield* Ref.get(world.deadRunners)).has(runner)
        }
      }),
    takeForStop: (organizationId, runner) =>
      op("pool.takeForStop", Effect.gen(function*() {
        const live = yield* findLive(organizationId)
        if (Option.isNone(live)) return Option.none()
        const current = live.value
        const dead = yield* Ref.get(world.deadRunners)
        const takeable = current.state === "active" ||
          (current.state === "stopping" && (current.runner === runner || dead.has(current.runner)))
        if (!takeable) return Option.some({ state: current.state, taken: Option.none() })
        const taken: LiveAllocation = { ...current, state: "stopping", runner, updatedAt: new Date() }
        yield* Ref.update(world.allocations, (all) => new Map(all).set(current.allocationId, taken))
        return Option.some({ state: current.state, taken: Option.some(taken) })
      })),
    whileActive: (allocationId, effect) =>
      op("pool.whileActive", Ref.get(world.allocations)).pipe(Effect.flatMap((all) =>
        all.get(allocationId)?.state === "active" ? Effect.map(effect, Option.some) : Effect.succeed(Option.none())
      )),
    withActiveAllocations: (effect) =>
      op("pool.withActiveAllocations", Ref.get(world.allocations)).pipe(Effect.flatMap((all) =>
        effect([...all.values()].filter(isLive).filter((a) => a.state === "active"))
      )),
    findLive: (organizationId) => op("pool.findLive", findLive(organizationId)),
    getAllocation: (allocationId) =>
      Effect.map(Ref.get(world.allocations), (all) => Option.fromNullable(all.get(allocationId))),
    // Insertion order is creation order: newest first is the reverse.
    listAllocations: (filter) =>
      Effect.map(Ref.get(world.allocations), (all) =>
        [...all.values()].reverse().filter((a) =>
          (filter.state === undefined || a.state === filter.state) &&
          (filter.organizationId === undefined || a.organizationId === filter.organizationId)
        ).slice(0, filter.limit)),
    stats: () =>
      op("pool.stats", Effect.zip(Ref.get(world.gateways), Clock.currentTimeMillis)).pipe(Effect.map(([gs, now]) => {
        const inQuarantine = (g: Gateway) => (g.quarantinedUntil?.getTime() ?? 0) > now
        const free = gs.filter((g) => g.allocationId === null)
        return {
          total: gs.length,
          free: free.length,
          allocated: gs.length - free.length,
          available: free.filter((g) => g.state === "active" && g.unreleasedAllocationId === null && !inQuarantine(g)).length,
          quarantined: gs.filter(inQuarantine).length,
          draining: gs.filter((g) => g.state === "draining").length,
          unreleased: gs.filter((g) => g.unreleasedAllocationId !== null).length,
          // The in-memory nginx is one edge, which acknowledges every removal or fails it: nothing is ever owed.
          held: 0
        }
      })),
    quarantine: (gatewayId, reason, baseMs) =>
      op("pool.quarantine", Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const gateway = (yield* Ref.get(world.gateways)).find((g) => g.gatewayId === gatewayId)
        if (gateway === undefined) return Option.none()
        const quarantinedUntil = new Date(now + Math.min(baseMs * 2 ** gateway.consecutiveFailures, QUARANTINE_CAP_MS))
        const consecutiveFailures = gateway.consecutiveFailures + 1
        yield* Ref.update(world.gateways, (gs) =>
          gs.map((g) =>
            g.gatewayId === gatewayId
              ? { ...g, quarantinedUntil, consecutiveFailures, health: "unhealthy" as const, lastFailure: reason }
              : g
          ))
        return Option.some({ consecutiveFailures, quarantinedUntil })
      })),
    markHealthy: (gatewayId, served) => op("pool.markHealthy", healthy(gatewayId, served)),
    setGatewayState: (gatewayId, state) =>
      Effect.gen(function*() {
        const gateway = (yield* Ref.get(world.gateways)).find((g) => g.gatewayId === gatewayId)
        if (gateway === undefined) return yield* new GatewayNotFound({ gatewayId })
        const updated = { ...gateway, state }
        yield* Ref.update(world.gateways, (gs) => gs.map((g) => (g.gatewayId === gatewayId ? updated : g)))
        return updated
      }),
    addGateway: (name: GatewayName, upstream: Upstream) =>
      Effect.gen(function*() {
        const gateways = yield* Ref.get(world.gateways)
        if (gateways.some((g) => g.name === name)) return yield* new GatewayNameTaken({ name })
        counter += 1
        const gateway: Gateway = {
          gatewayId: `00000000-0000-4000-8000-${String(counter).padStart(12, "0")}` as GatewayId,
          name,
          upstream,
          allocationId: null,
          state: "active",
          health: "unknown",
          quarantinedUntil: null,
          consecutiveFailures: 0,
          lastFailure: null,
          unreleasedAllocationId: null
        }
        yield* Ref.set(world.gateways, [...gateways, gateway])
        return gateway
      }),
    removeGateway: (gatewayId) =>
      Effect.gen(function*() {
        const gateway = (yield* Ref.get(world.gateways)).find((g) => g.gatewayId === gatewayId)
        if (gateway === undefined) return yield* new GatewayNotFound({ gatewayId })
        if (gateway.allocationId !== null) return yield* new GatewayAllocated({ gatewayId })
        yield* Ref.update(world.gateways, (gs) => gs.filter((g) => g.gatewayId !== gatewayId))
      }),
    listGateways: () => Effect.map(Ref.get(world.gateways), (gs) => [...gs]),
    healthCandidates: (batch, after) =>
      Effect.gen(function*() {
        const nowMs = yield* Clock.currentTimeMillis
        const free = (yield* Ref.get(world.gateways)).filter((g) => g.allocationId === null)
        const expired = (g: Gateway) => g.quarantinedUntil !== null && g.quarantinedUntil.getTime() <= nowMs
        // The claim's order: available, least recently allocated first.
        const onDeck = free
          .filter((g) => g.state === "active" && g.unreleasedAllocationId === null && (g.quarantinedUntil === null || expired(g)))
          .sort((a, b) => (lastAllocated.get(a.gatewayId) ?? -1) - (lastAllocated.get(b.gatewayId) ?? -1))
          .slice(0, batch)
        const rotation = free
          .filter((g) => Option.match(after, { onNone: () => true, onSome: (id) => g.gatewayId > id }))
          .sort((a, b) => (a.gatewayId < b.gatewayId ? -1 : 1))
          .slice(0, batch)
        const picked = new Set([...onDeck, ...free.filter(expired), ...rotation].map((g) => g.gatewayId))
        return {
          candidates: free.filter((g) => picked.has(g.gatewayId)),
          rotationEnd: rotation.length === batch ? Option.fromNullable(rotation[rotation.length - 1]?.gatewayId) : Option.none()
        }
      }),
    recoverable: (runner) =>
      Effect.gen(function*() {
        const dead = yield* Ref.get(world.deadRunners)
        return [...(yield* Ref.get(world.allocations)).values()].filter(isLive).filter((a) =>
          a.state !== "active" && (a.runner === runner || dead.has(a.runner))
        )
      }),
    adopt: (allocation, runner) =>
      Effect.gen(function*() {
        const current = (yield* Ref.get(world.allocations)).get(allocation.allocationId)
        if (current === undefined || current.runner !== allocation.runner || !isLive(current)) {
          return Option.none()
        }
        const adopted: LiveAllocation = {
          ...current,
          runner,
          state: current.state === "starting" ? "rolling_back" : current.state
        }
        yield* Ref.update(world.allocations, (all) => new Map(all).set(adopted.allocationId, adopted))
        return Option.some(adopted)
      }),
    liveAllocations: () =>
      Effect.map(Ref.get(world.allocations), (all) => [...all.values()].filter(isLive)),
    exclusively: (_job, effect) => Effect.scoped(Effect.map(effect, Option.some))
  }
  return {
    gateways: GatewayStore.make({ stats: store.stats, addGateway: store.addGateway, setGatewayState: store.setGatewayState, removeGateway: store.removeGateway, listGateways: store.listGateways, quarantine: store.quarantine, markHealthy: store.markHealthy, healthCandidates: store.healthCandidates, pendingReleases: store.pendingReleases, releaseConfirmed: store.releaseConfirmed, releaseRetryFailed: store.releaseRetryFailed }),
    allocations: AllocationStore.make({ claim: store.claim, release: store.release, transition: store.transition, activate: store.activate, owns: store.owns, takeForStop: store.takeForStop, whileActive: store.whileActive, withActiveAllocations: store.withActiveAllocations, whileUnclaimed: store.whileUnclaimed, findLive: store.findLive, getAllocation: store.getAllocation, listAllocations: store.listAllocations, liveAllocations: store.liveAllocations, recoverable: store.recoverable, adopt: store.adopt }),
    database: Database.make({ ping: store.ping, exclusively: store.exclusively })
  }
}

const entryOf = (e: JournalRecord): AllocationJournalEntry => ({
  allocationId: e.allocationId,
  step: e.step,
  event: e.event,
  actor: e.actor,
  detail: e.detail ?? null,
  durationMs: e.durationMs ?? null,
  at: new Date(0)
})

const journalOf = (world: World) =>
  Journal.make({
    record: (entries) => Ref.update(world.journal, (all) => [...all, ...entries]),
    entries: (allocationId) =>
      Effect.map(Ref.get(world.journal), (all) => all.filter((e) => e.allocationId === allocationId).map(entryOf)),
    entriesFor: (allocationIds) =>
      Effect.map(Ref.get(world.journal), (all) => all.filter((e) => allocationIds.includes(e.allocationId)).map(entryOf))
  })

const dnsOf = (world: World) => {
  const op = <A>(name: "upsert" | "remove", effect: Effect.Effect<A>) =>
    // An injected failure is PowerDNS refusing the change: nothing changed.
    operation(world, `dns.${name}`, () => new DnsError({ operation: name, reason: "injected failure", noEffect: true }), effect)
  return Dns.of({
    provider: "powerdns",
    upsert: (org) => op("upsert", Ref.update(world.dnsRecords, (s) => new Set(s).add(org))),
    remove: (org) =>
      op("remove", Ref.update(world.dnsRecords, (s) => {
        const next = new Set(s)
        next.delete(org)
        return next
      })),
    listOrgRecords: Effect.map(Ref.get(world.dnsRecords), (s) => [...s]),
    check: Effect.void
  })
}

/**
 * nginx in memory, in either routing mode's shape:
 * - reload: a written route is served once a reload runs (`awaitServed` reloads, then waits for
 *   it; `awaitWithdrawn` likewise; a refused reload leaves what was served);
 * - lua: the table is what is served, a write or a removal is live when it returns, and nginx can
 *   restart (`restartNginx`): its table comes back empty, not ready, under a new boot id, and a
 *   route missing since its write is RouteLost.
 */
const nginxOf = (world: World, routing: "reload" | "lua") => {
  const op = <A, E = NginxError>(name: string, nginxOperation: NginxError["operation"], effect: Effect.Effect<A, E>) =>
    // A write that never landed and a configuration nginx refused changed nothing; a failed probe
    // comes after the reload was signalled, so nginx may still load the route.
    operation<A, E | NginxError>(
      world,
      `nginx.${name}`,
      () =>
        new NginxError({
          operation: nginxOperation,
          reason: "injected failure",
          noEffect: nginxOperation === "write" || nginxOperation === "reload"
        }),
      effect
    )
  const lua = routing === "lua"
  // lua: what is written is what is served.
  const written = (update: (m: ReadonlyMap<OrganizationId, AllocationId>) => ReadonlyMap<OrganizationId, AllocationId>) =>
    Effect.zipRight(Ref.update(world.routeFiles, update), lua ? Ref.update(world.served, update) : Effect.void)
  const reload = lua ? Effect.void : op("reload", "reload", Effect.flatMap(Ref.get(world.routeFiles), (files) => Ref.set(world.served, files)))
  const served = (org: OrganizationId) => Effect.map(Ref.get(world.served), (all) => all.get(org))
  const routes: EdgeRoutes = {
    edgeId: TEST_EDGE_ID,
    name: "local",
    writeRoute: (route) => op("writeRoute", "write", written((m) => new Map(m).set(route.organizationId, route.allocationId))),
    removeRoute: ({ allocationId, organizationId: org }) =>
      op("removeRoute", "remove", Effect.flatMap(Ref.get(world.routeFiles), (m) => {
        const named = m.get(org)
        if (named === undefined) return Effect.succeed("absent" as const)
        if (named !== allocationId) return Effect.succeed("other" as const)
        return Effect.as(written((all) => {
          const next = new Map(all)
          next.delete(org)
          return next
        }), "removed" as const)
      })),
    awaitServed: ({ allocationId, organizationId: org }) =>
      Effect.zipRight(
        reload,
        op("awaitServed", "probe", Effect.flatMap(served(org), (now): Effect.Effect<void, RouteLost> =>
          now === allocationId
            ? Effect.void
            : lua && now === undefined
            ? Effect.fail(new RouteLost({ organizationId: org, allocationId }))
            : Effect.never))
      ),
    awaitWithdrawn: ({ allocationId, organizationId: org }) =>
      Effect.either(reload).pipe(Effect.flatMap((reloaded) =>
        op("awaitWithdrawn", "probe", Effect.flatMap(served(org), (now): Effect.Effect<Withdrawn, NginxError> =>
          now !== allocationId
            ? Effect.succeed(reloaded._tag === "Right" ? { _tag: "gone" } : { _tag: "notApplied", reason: reloaded.left.reason })
            : reloaded._tag === "Left"
            ? Effect.fail(reloaded.left)
            : Effect.never))
      )),
    probeRoute: (org) => op("probeRoute", "probe", Effect.map(served(org), (now) => now ?? null)),
    listRoutes: Effect.gen(function*() {
      const allocations = yield* Ref.get(world.allocations)
      return [...(yield* Ref.get(world.routeFiles)).entries()].map(([organizationId, allocationId]) => ({
        organizationId,
        upstream: allocations.get(allocationId)?.upstream ?? "",
        allocationId,
        generation: allocations.get(allocationId)?.generation ?? Generation.make(0)
      }))
    }),
    tableState: lua
      ? Effect.map(Ref.get(world.table), (table) => Option.some(table))
      : Effect.succeedNone,
    restoreAll: (bootId, routes) =>
      op("restoreAll", "table", Effect.flatMap(Ref.get(world.table), (table) =>
        table.bootId !== bootId
          ? Effect.fail(new NginxError({ operation: "table", reason: `the table's boot id is ${table.bootId}` }))
          : written((m) => new Map([...m, ...routes.map((route) => [route.organizationId, route.allocationId] as const)])).pipe(
            Effect.zipRight(Ref.set(world.table, { bootId, ready: true }))
          ))),
    heartbeat: () => Effect.void
  }
  return routes
}

/** The in-memory nginx's one edge. */
const TEST_EDGE_ID = EdgeId.make("00000000-0000-4000-8000-000000000ed9")

/** lua: nginx restarts; its route table comes back empty, not ready, under a new boot id. */
export const restartNginx = Effect.flatMap(TestWorld, (world) =>
  Effect.all([
    Ref.set(world.served, new Map()),
    Ref.set(world.routeFiles, new Map()),
    Ref.update(world.table, (table) => ({ bootId: `${table.bootId}+`, ready: false }))
  ], { discard: true }))

const handshakeOf = (world: World) =>
  Handshake.of({
    awaitHealthy: () =>
      operation(world, "handshake.awaitHealthy", () => new HandshakeError({ operation: "health", reason: "injected" }), Effect.void),
    checkHealth: (upstream) =>
      operation(world, "handshake.checkHealth", () => new HandshakeError({ operation: "health", reason: "injected" }), Effect.void, upstream),
    handshake: (upstream) =>
      operation(
        world,
        "handshake.handshake",
        () => new HandshakeError({ operation: "handshake", reason: "HTTP 500", noEffect: true }),
        Effect.void,
        upstream
      ),
    release: (upstream) =>
      operation(
        world,
        "handshake.release",
        () => new HandshakeError({ operation: "release", reason: "HTTP 500" }),
        Effect.succeed("released" as const),
        upstream
      )
  })

/** All outside systems in memory, sharing one TestWorld. */
/** All outside systems in memory, sharing one TestWorld; nginx in the routing mode's shape. */
export const makeOutsideTest = (routing: "reload" | "lua") => Layer.effectContext(
  Effect.map(makeWorld, (world) => {
    const stores = poolOf(world)
    const routes = nginxOf(world, routing)
    return Context.empty().pipe(
      Context.add(TestWorld, world),
      Context.add(Runner, Runner.make({ id: "test-runner", leaseHeld: Ref.get(world.leaseHeld) })),
      Context.add(GatewayStore, stores.gateways),
      Context.add(AllocationStore, stores.allocations),
      Context.add(Database, stores.database),
      Context.add(Journal, journalOf(world)),
      Context.add(Dns, dnsOf(world)),
      Context.add(Nginx, singleEdge({ id: TEST_EDGE_ID, confDir: "/nonexistent/test-edge" }, Effect.void, routes)),
      Context.add(EdgeSet, EdgeSet.of({
        members: Effect.succeed([{ edgeId: TEST_EDGE_ID, name: "local", local: true, draining: false, behind: false, behindMark: 0, routes }]),
        registerLocal: Effect.void,
        refresh: Effect.void,
        markBehind: () => Effect.void,
        takeAcknowledged: Effect.succeed(new Map())
      })),
      Context.add(Handshake, handshakeOf(world)),
      Context.add(EdgeRegistry, edgeRegistryTest(world)),
      Context.add(Notifier, Notifier.of({ notify: (notice) => Ref.update(world.notices, (all) => [...all, notice]) }))
    )
  })
)

/** All outside systems in memory, nginx in reload mode's shape (a route is served once reloaded). */
export const OutsideTest = makeOutsideTest("reload")
