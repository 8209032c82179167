import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Integration suites start their own Postgres, nginx and PowerDNS: one file at a time keeps
    // a 2-core machine from timing out and keeps fault injection in one file from touching another.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000
  }
})
