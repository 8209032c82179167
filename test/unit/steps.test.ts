// The step order and the undo order, pinned to their literal values: the tests build their journal
// and rollback expectations from them (test/support/journal.ts), so a change of either order must
// show here first.
import { describe, expect, it } from "@effect/vitest"
import { undoOrder } from "../../src/domain/steps.ts"
import { expected, stepOrder, stepsBefore, undoOrderOf } from "../support/journal.ts"

describe("step and undo orders", () => {
  it("a start runs allocate, dns, nginx-config, nginx-reload, handshake", () => {
    expect(stepOrder).toEqual(["allocate", "dns", "nginx-config", "nginx-reload", "handshake"])
  })

  it("undos run routing first, then the release, DNS, and the gateway's row last", () => {
    expect(undoOrder).toEqual(["nginx-reload", "nginx-config", "handshake", "dns", "allocate"])
  })

  it("the expectations built from them", () => {
    expect(undoOrderOf(stepsBefore("handshake"))).toEqual(["nginx-reload", "nginx-config", "dns", "allocate"])
    expect(expected.endedAt("handshake", "timed_out")).toEqual([
      "allocate:completed",
      "dns:started",
      "dns:completed",
      "nginx-config:started",
      "nginx-config:completed",
      "nginx-reload:started",
      "nginx-reload:completed",
      "handshake:started",
      "handshake:timed_out"
    ])
    expect(expected.undone(["handshake", "dns"], { dns: "failed" })).toEqual([
      "handshake:undo_started",
      "handshake:undone",
      "dns:undo_started",
      "dns:undo_failed"
    ])
    expect(expected.rollback(undoOrder, { handshake: "skipped" })).toEqual([
      "nginx-reload:done",
      "nginx-config:done",
      "handshake:skipped",
      "dns:done",
      "allocate:done"
    ])
  })
})
