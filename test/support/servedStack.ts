// What the crash suites share: a real stack with the service running on it as a child process
// (./server.ts), the stack's gateways in its pool, and a Postgres pool of the test's own to ask
// what the service wrote; and the invariants asserted once things have settled.
import { expect } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import type { LocalStack } from "../../src/dev/stack.ts"
import { awaitInvariants, type Db, describeReport, type InvariantTarget, openDb } from "./invariants.ts"
import { registerGateways, type ServiceProcess, startServer } from "./server.ts"
import { resetGateways, Stack, StackLive } from "./stack.ts"

export interface Served {
  readonly stack: LocalStack
  readonly server: ServiceProcess
  readonly db: Db
}

export class ServedStack extends Context.Tag("test/ServedStack")<ServedStack, Served>() {}

/** A stack of `gateways` sample gateways (StackLive's default otherwise) and the service named `name` over it, configured by `env`. */
export const ServedStackLive = (options: {
  readonly name: string
  readonly env?: Readonly<Record<string, string>>
  readonly gateways?: number
}) =>
  Layer.scoped(
    ServedStack,
    Effect.gen(function*() {
      const stack = yield* Stack
      const server = yield* startServer(stack, { name: options.name, env: options.env ?? {} })
      yield* registerGateways(server, stack)
      const db = yield* openDb(stack.env["DATABASE_URL"]!)
      return { stack, server, db }
    })
  ).pipe(Layer.provideMerge(StackLive(options.gateways === undefined ? {} : { gateways: options.gateways })))

/** Runs a test body with the served stack, and puts every sample gateway back to normal afterwards. */
export const withServedStack = <A, E, R>(body: (served: Served) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(ServedStack, (served) => body(served).pipe(Effect.ensuring(resetGateways(served.stack))))

/** Waits (at most `timeoutMs`) until every invariant holds, and asserts it (the report says why not); returns the report. */
export const expectInvariants = (target: InvariantTarget, options: { readonly timeoutMs: number }) =>
  Effect.tap(awaitInvariants(target, options), (report) =>
    Effect.sync(() => expect(report.violations, describeReport(report)).toEqual([])))
