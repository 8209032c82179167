import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { ensureDebianPackages, missingDebianPackages } from "../../src/dev/packages.ts"

describe("packages", () => {
  // .ci/run installs them before the tests; a developer's machine gets them from ensureDebianPackages.
  it.live("nginx, pdns_server with the gsqlite3 backend, sqlite3 and openssl are present (installed if needed)", () =>
    Effect.gen(function*() {
      yield* ensureDebianPackages
      expect(yield* missingDebianPackages).toEqual([])
    }), 300_000)
})
