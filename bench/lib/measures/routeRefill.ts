// Route table refill (lua): nginx is restarted, so its route table starts empty, with every
// allocation of the run still active; the next server's start-up pushes them all back in one
// request. The figure is that server's spawn to its first `/healthz` 200 (which waits for the
// table), and the table must say it is ready. The server stays up for the measures that follow.
import { Effect } from "effect"
import { type BenchContext, routeTable } from "../context.ts"
import type { RouteRefillFigures } from "../results.ts"
import { routeApi } from "../routeTable.ts"
import { round } from "../stats.ts"

export const measureRouteRefill = async (ctx: BenchContext): Promise<RouteRefillFigures> => {
  await Effect.runPromise(ctx.stack.nginx.stop)
  await Effect.runPromise(ctx.stack.nginx.start)
  const routes = ctx.allocations.size
  const { server } = await ctx.fleet.launch("lua")
  const table = await routeApi(routeTable(ctx), "GET", "/boot")
  if (!/ ready 1 /.test(table.body)) throw new Error(`the route table is not ready after the server's start-up: ${table.body}`)
  ctx.run.log(`  nginx restarted: ${routes} routes pushed back; server up (table ready) in ${Math.round(server.startupMs)} ms`)
  return { routes, startupMs: round(server.startupMs) }
}
