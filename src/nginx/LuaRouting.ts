import { HttpClientRequest } from "@effect/platform"
import { Duration, Effect, Option, Ref, Schedule, Schema } from "effect"
import { Settings } from "../config.ts"
import { AllocationId, Generation, OrganizationId } from "../domain/ids.ts"
import { describeTransport, neverDelivered, resetBeforeAnswer } from "../lib/transport.ts"
import { PROBE_SECRET_HEADER } from "./config.ts"
import type { EdgeKit } from "./EdgeKit.ts"
import { MAX_FENCE_MS } from "./luaRouteApi.ts"
import { type EdgeRoutes, NginxError, type Route, type RouteKey, RouteLost, type Withdrawn, type WriteOptions } from "./Nginx.ts"

const gone: Withdrawn = { _tag: "gone" }

/** Where the service reaches one edge's route API and org server block, and that edge's secret. */
export interface RouteApiEndpoint {
  readonly edgeId: string
  readonly name: string
  /** `http://{host}:{port}` of its route API. */
  readonly apiUrl: string
  /** `http://{host}:{port}` of its org server block (the route probes). */
  readonly probeUrl: string
  readonly secret: string
}

/**
 * NGINX_ROUTING=lua, one edge: routes live in the edge's shared memory (see luaConfig.ts), written
 * through the route API it serves. A write is live on every worker when it returns, so one probe
 * proves a change; nginx is reloaded once, at install (the local edge), never for a route.
 *
 * Every write carries its deadline (`until`: now plus one outside call), and every removal the
 * fence it needs (`fence_ms`: STEP_TIMEOUT_MS plus one outside call, the longest a write can land
 * after its owner's fence check), so the table keeps fences seconds, not minutes. Fences live in
 * nginx's shared memory and vanish with a restart: this process remembers the ones it wrote to
 * this edge while they last, and pushes them back as soon as it sees a new boot id (before the
 * routes are pushed back, when this process is the one that pushes them).
 */
export const makeRouteApiClient = (kit: EdgeKit, endpoint: RouteApiEndpoint) =>
  Effect.gen(function*() {
    const { fail, http, callTimeout } = kit
    const { stepTimeoutMs } = yield* Settings
    const { apiUrl: api, secret } = endpoint
    const probes = kit.probesAt(endpoint.probeUrl, secret, "kept")
    /** How long a removal fences late writes: the step that sends a write, then the write's own deadline. */
    const fenceMs = stepTimeoutMs + Duration.toMillis(callTimeout)
    if (fenceMs > MAX_FENCE_MS) {
      return yield* new NginxError({
        operation: "install",
        reason: `STEP_TIMEOUT_MS plus one outside call (${fenceMs} ms) is longer than the route table keeps a fence (${MAX_FENCE_MS} ms): ` +
          "a removal could not fence every late write; lower STEP_TIMEOUT_MS"
      })
    }
    /**
     * The wall clock, which nginx reads too: the local edge is on this host; a remote edge's clock
     * is kept in step by NTP (a skew eats into a write's deadline), so deadlines and fence times
     * mean the same on both sides. Never a test's clock.
     */
    const wallClock = Effect.sync(() => Date.now())
    /** A write's deadline: nginx refuses it after this (epoch ms). */
    const deadline = Effect.map(wallClock, (now) => String(now + Duration.toMillis(callTimeout)))

    /**
     * The fences this process wrote, while they last: pushed back after an nginx restart emptied
     * the table (see `refence`). One per org (the latest), kept in the order written, which is
     * the order they expire in (each lasts `fenceMs`): a removal prunes from the oldest and stops
     * at the first one still due, so it costs the same with 10 fences as with 100,000.
     */
    const written = new Map<OrganizationId, { readonly key: RouteKey; readonly untilMs: number }>()
    const remember = (key: RouteKey) =>
      Effect.map(wallClock, (now) => {
        written.delete(key.organizationId)
        written.set(key.organizationId, { key, untilMs: now + fenceMs })
        for (const [organizationId, fence] of written) {
          if (fence.untilMs > now) break
          written.delete(organizationId)
        }
      })
    /** `fence {org} {allocation} {generation} {ms}` lines for the fences still due. */
    const fenceLines = Effect.gen(function*() {
      const now = yield* wallClock
      const due = [...written.values()].filter((fence) => fence.untilMs > now)
      return due.map(({ key, untilMs }) => `fence ${key.organizationId} ${key.allocationId} ${key.generation} ${Math.ceil(untilMs - now)}\n`)
        .join("")
    })
    /** The boot id this process last saw. */
    const seenBoot = yield* Ref.make(Option.none<string>())

    /** One route API request: its status and body, bounded like every outside call. */
    const call = (operation: NginxError["operation"], request: HttpClientRequest.HttpClientRequest) =>
      http.execute(HttpClientRequest.setHeader(request, PROBE_SECRET_HEADER, secret)).pipe(
        Effect.flatMap((response) => Effect.map(response.text, (body) => ({ status: response.status, body: body.trim() }))),
        // A kept-alive connection nginx closed as the request went out (a reload, say) is asked
        // again, once, on a new one: every call may be repeated (a write names its allocation and
        // generation, a removal is a compare-and-delete, the rest only read).
        Effect.retry({ while: (cause) => resetBeforeAnswer(cause), times: 1 }),
        // A connection refused (nginx down) carried nothing: whatever it asked, nothing changed.
        Effect.mapError((cause) => new NginxError({ operation, reason: `route API: ${describeTransport(cause)}`, cause, noEffect: neverDelivered(cause) })),
        Effect.timeoutFail({
          duration: callTimeout,
          onTimeout: () => new NginxError({ operation, reason: `the route API did not answer within ${Duration.format(callTimeout)}` })
        })
      )

    /** An answer the route API gives for a refusal: nothing changed. */
    const refused = (operation: NginxError["operation"], answer: { readonly status: number; readonly body: string }) =>
      new NginxError({
        operation,
        reason: answer.status === 409
          ? answer.body.startsWith("expired")
            ? `refused, the write reached nginx after its deadline (${answer.body}): nginx was busy or the call stalled`
            : `refused, the table holds a newer entry: ${answer.body}`
          : answer.status === 507
          ? zoneFull(answer.body)
          : answer.status === 401
          ? "the route API refused the edge secret: is another nginx listening on NGINX_ROUTE_API_LISTEN?"
          : `route API answered HTTP ${answer.status}: ${answer.body.slice(0, 200)}`,
        noEffect: answer.status === 409 || answer.status === 507 || answer.status === 401 || answer.status === 400
      })

    const routeUrl = (organizationId: OrganizationId) => `${api}/routes/${organizationId}`

    const bootRequest = HttpClientRequest.get(`${api}/boot`)

    /** The route API's `GET /boot` answer, parsed; none when it is not in the route API's format. */
    const parseBoot = (answer: { readonly status: number; readonly body: string }) => {
      const match = /^boot (\S+) ready ([01]) version (\S+)$/.exec(answer.body)
      return answer.status === 200 && match !== null
        ? Option.some({ bootId: match[1] ?? "", ready: match[2] === "1", version: match[3] ?? "" })
        : Option.none()
    }

    /** Pushes back the fences this process wrote that still matter: after a restart emptied them. */
    const refence = (bootId: string) =>
      Effect.gen(function*() {
        const body = yield* fenceLines
        if (body === "") return
        const answer = yield* call(
          "table",
          HttpClientRequest.post(`${api}/fences`).pipe(
            HttpClientRequest.setUrlParams({ boot: bootId }),
            HttpClientRequest.bodyText(body, "text/plain")
          )
        )
        if (answer.status !== 200) return yield* refused("table", answer)
      })

    const tableState = call("table", bootRequest).pipe(
      Effect.flatMap((answer) =>
        Option.match(parseBoot(answer), { onNone: () => Effect.fail(refused("table", answer)), onSome: Effect.succeed })
      ),
      // A new boot id: nginx restarted and its fences are gone. Ours go back before anything else
      // (the routes are pushed back after this look). One that fails is logged and tried again on
      // the next look: the id is recorded only once they passed.
      Effect.tap(({ bootId }) =>
        Effect.flatMap(Ref.get(seenBoot), (seen) =>
          Option.contains(seen, bootId) ? Effect.void : refence(bootId).pipe(
            Effect.zipRight(Ref.set(seenBoot, Option.some(bootId))),
            Effect.catchAll((error) => Effect.logWarning("could not push this process's fences back into nginx's new table", error))
          ))
      )
    )

    // nginx answers a probe in microseconds; a route written is served at once: poll fast.
    const probeSchedule = Schedule.spaced(Duration.millis(2))


    const RouteLine = Schema.Struct({ organizationId: OrganizationId, upstream: Schema.String, allocationId: AllocationId, generation: Generation })
    const decodeLines = Schema.decodeUnknown(Schema.Array(RouteLine))

    const routes: EdgeRoutes = {
      edgeId: endpoint.edgeId,
      name: endpoint.name,
      writeRoute: Effect.fn("Nginx.writeRoute")(function*(route: Route, options?: WriteOptions) {
        const answer = yield* call(
          "write",
          HttpClientRequest.put(routeUrl(route.organizationId)).pipe(
            HttpClientRequest.setUrlParams({
              upstream: route.upstream,
              allocation: route.allocationId,
              generation: String(route.generation),
              until: yield* deadline,
              ...(options?.restore === true ? { restore: "1" } : {})
            })
          )
        )
        if (answer.status !== 200) return yield* refused("write", answer)
      }),
      removeRoute: Effect.fn("Nginx.removeRoute")(function*(route: RouteKey) {
        const answer = yield* call(
          "remove",
          HttpClientRequest.del(routeUrl(route.organizationId)).pipe(
            HttpClientRequest.setUrlParams({
              allocation: route.allocationId,
              generation: String(route.generation),
              fence_ms: String(fenceMs)
            })
          )
        )
        const outcome = answer.body.split(" ")[0]
        if (answer.status === 200 && (outcome === "removed" || outcome === "absent" || outcome === "other")) {
          yield* remember(route)
          return outcome
        }
        return yield* refused("remove", answer)
      }),
      awaitServed: Effect.fn("Nginx.awaitServed")(function*({ allocationId, organizationId }: RouteKey) {
        yield* probes.probe(organizationId).pipe(
          Effect.filterOrFail(
            (answer) => answer.allocation === allocationId,
            (answer): NginxError | RouteLost =>
              answer.allocation === ""
                ? new RouteLost({ organizationId, allocationId })
                : new NginxError({ operation: "probe", reason: `nginx serves allocation ${answer.allocation}` })
          ),
          // A probe nginx did not answer (restarting, say) is asked again; an empty table is not.
          Effect.retry({ schedule: probeSchedule, while: (error) => error._tag !== "RouteLost" })
        )
      }),
      // A removal is live when it returns: nothing to load, one probe proves it.
      awaitWithdrawn: Effect.fn("Nginx.awaitWithdrawn")(function*({ allocationId, organizationId }: RouteKey) {
        yield* probes.probeUntil(organizationId, (served) => served !== allocationId).pipe(Effect.retry(probeSchedule))
        return gone
      }),
      probeRoute: probes.probeRoute,
      listRoutes: Effect.gen(function*() {
        const answer = yield* call("list", HttpClientRequest.get(`${api}/routes`))
        if (answer.status !== 200) return yield* refused("list", answer)
        const lines = answer.body.split("\n").slice(1).filter((line) => line !== "").map((line) => {
          const [organizationId, upstream, allocationId, generation] = line.split(" ")
          return { organizationId, upstream, allocationId, generation }
        })
        return yield* decodeLines(lines).pipe(Effect.mapError(fail("list")))
      }).pipe(Effect.withSpan("Nginx.listRoutes")),
      tableState: Effect.map(tableState, ({ bootId, ready }) => Option.some({ bootId, ready })),
      restoreAll: Effect.fn("Nginx.restoreAll")(function*(bootId: string, routes: ReadonlyArray<Route>) {
        yield* Effect.annotateCurrentSpan({ "nginx.routes": routes.length })
        // In parts, each with its own deadline (100,000 routes take ~1.5 s in one request: more
        // than a short outside call's bound); the last part marks the table ready.
        const parts = Math.max(1, Math.ceil(routes.length / RESTORE_PART))
        for (let part = 0; part < parts; part++) {
          const body = routes.slice(part * RESTORE_PART, (part + 1) * RESTORE_PART)
            .map((r) => `${r.organizationId} ${r.upstream} ${r.allocationId} ${r.generation}\n`).join("")
          const answer = yield* call(
            "table",
            HttpClientRequest.post(`${api}/routes`).pipe(
              HttpClientRequest.setUrlParams({ boot: bootId, until: yield* deadline, ready: part === parts - 1 ? "1" : "0" }),
              HttpClientRequest.bodyText(body, "text/plain")
            )
          )
          if (answer.status !== 200) return yield* refused("table", answer)
        }
      }),
      heartbeat: Effect.fn("Nginx.heartbeat")(function*(bootId: string, ttlMs: number, serving: boolean) {
        const answer = yield* call(
          "table",
          HttpClientRequest.post(`${api}/heartbeat`).pipe(
            HttpClientRequest.setUrlParams({ boot: bootId, ttl_ms: String(ttlMs), ...(serving ? {} : { serving: "0" }) })
          )
        )
        if (answer.status !== 200) return yield* refused("table", answer)
      })
    }
    /** The route API's first answer, as the install reads it (an occupant of its address, or the version it runs). */
    const firstBoot = Effect.either(call("install", bootRequest))
    return { routes, firstBoot, parseBoot, tableState }
  })

export type RouteApiClient = Effect.Effect.Success<ReturnType<typeof makeRouteApiClient>>

/** Routes per request of a restore: ~30 ms of nginx's time each. */
const RESTORE_PART = 2_000

/** What a 507 says: which zone had no room, and what that means for the request. */
const zoneFull = (body: string) =>
  body.includes("fences:")
    ? `no room for the removal's fence (${body}): nothing was removed; raise NGINX_FENCE_TABLE_SIZE (fences expire within seconds, so a retry may pass)`
    : body.includes("locks:")
    ? `no room for the org's lock (${body})`
    : `the route table is full (${body}): raise NGINX_ROUTE_TABLE_SIZE; no route is ever evicted to make room`
