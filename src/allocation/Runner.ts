import { randomUUID } from "node:crypto"
import { hostname } from "node:os"
import { Effect } from "effect"

/**
 * This process's identity, recorded on every allocation it runs, so crash recovery can tell
 * whose pipelines were orphaned.
 */
export class Runner extends Effect.Service<Runner>()("Runner", {
  sync: () => ({ id: `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}` })
}) {}
