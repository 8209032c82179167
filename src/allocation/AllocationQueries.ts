import { Array as Arr, Effect, Option } from "effect"
import { Settings } from "../config.ts"
import { AllocationNotFound } from "../domain/errors.ts"
import { type AllocationId, type OrganizationId, orgHostname } from "../domain/ids.ts"
import { Journal } from "../journal/Journal.ts"
import { type AllocationFilter, AllocationStore } from "./AllocationStore.ts"

/**
 * The read models of allocations, one home for the API and whoever else reads them: an org's live
 * allocation, one allocation with its step journal, and a listing with each one's journal (two
 * queries, however many allocations). Each carries its hostname.
 */
export class AllocationQueries extends Effect.Service<AllocationQueries>()("AllocationQueries", {
  effect: Effect.gen(function*() {
    const { domain } = yield* Settings
    const allocations = yield* AllocationStore
    const journal = yield* Journal

    /** The org's live allocation (starting, active, stopping, rolling back). */
    const status = Effect.fn("Allocation.status")(function*(organizationId: OrganizationId) {
      const allocation = yield* allocations.findLive(organizationId)
      if (Option.isNone(allocation)) return yield* new AllocationNotFound({ what: `active allocation of ${organizationId}` })
      return { ...allocation.value, hostname: orgHostname(organizationId, domain) }
    })

    /** One allocation, history included, with every step and undo its journal holds. */
    const describe = Effect.fn("Allocation.describe")(function*(allocationId: AllocationId) {
      const allocation = yield* allocations.getAllocation(allocationId)
      if (Option.isNone(allocation)) return yield* new AllocationNotFound({ what: `allocation ${allocationId}` })
      const steps = yield* journal.entries(allocationId)
      return { ...allocation.value, hostname: orgHostname(allocation.value.organizationId, domain), steps }
    })

    /** Allocations, newest first, filtered, each with its journal. */
    const list = Effect.fn("Allocation.list")(function*(filter: AllocationFilter) {
      const found = yield* allocations.listAllocations(filter)
      const entries = yield* journal.entriesFor(found.map((allocation) => allocation.allocationId))
      const byAllocation = Arr.groupBy(entries, (entry) => entry.allocationId)
      return found.map((allocation) => ({
        ...allocation,
        hostname: orgHostname(allocation.organizationId, domain),
        steps: byAllocation[allocation.allocationId] ?? []
      }))
    })

    return { status, describe, list }
  })
}) {}
