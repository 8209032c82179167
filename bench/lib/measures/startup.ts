// Start-up and shutdown: every server's spawn to its first `/healthz` 200, its RSS right then,
// and SIGTERM to exit, are recorded by the fleet as the run goes; this measure adds `npm start`
// itself, as an operator runs it (the prestart check finds dist/ fresh), with every allocation of
// the run still in Postgres.
import type { BenchContext } from "../context.ts"
import type { StartupFigures } from "../results.ts"

export const measureNpmStart = async (ctx: BenchContext): Promise<StartupFigures | undefined> => {
  await ctx.fleet.launch("lua", "npm start")
  await ctx.fleet.shutdown()
  return ctx.fleet.startups.at(-1)
}
