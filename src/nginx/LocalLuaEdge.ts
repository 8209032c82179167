import { Duration, Effect, Either, Option, Schedule } from "effect"
import { routeApiUrl } from "../config.ts"
import { transportCode } from "../lib/transport.ts"
import type { EdgeKit } from "./EdgeKit.ts"
import { renderLuaConfig } from "./luaConfig.ts"
import { makeRouteApiClient } from "./LuaRouting.ts"
import { SECRET_REFUSED } from "./luaRouteApi.ts"
import { NginxError, singleEdge } from "./Nginx.ts"

/**
 * NGINX_ROUTING=lua, this replica's own edge (NGINX_CONF_DIR): its file written and loaded at
 * install, then its routes through its route API. The Nginx of this edge alone (`singleEdge`)
 * is what a test of nginx by itself drives; the service routes through every registered edge
 * (src/edges/EdgeSet.ts), this one among them.
 */
export const makeLocalLuaEdge = (kit: EdgeKit) =>
  Effect.gen(function*() {
    const { config, confDir, domain, path, fail, secret, callTimeout } = kit
    const client = yield* makeRouteApiClient(kit, {
      edgeId: kit.edge.id,
      name: "local",
      apiUrl: routeApiUrl(config.routeApiListen),
      probeUrl: kit.edgeUrl,
      secret
    })
    const { firstBoot, parseBoot, tableState } = client

    /**
     * What holds the route API's address, from the install's first `GET /boot`, when it is not
     * this nginx's route API: an answer in another format, or a connection accepted and then
     * broken. Refused (nothing listens yet) or no answer in time (a frozen nginx, say) say nothing
     * about an occupant.
     */
    const occupantOf = (first: Either.Either<{ readonly status: number; readonly body: string }, NginxError>) =>
      Either.match(first, {
        onRight: (answer) =>
          (answer.status === 200 && answer.body.startsWith("boot ")) ||
            // This service's route API with another secret: the edge file was recreated since
            // nginx last loaded it; the reload below gives it this one.
            (answer.status === 401 && answer.body.startsWith(SECRET_REFUSED))
            ? Option.none<string>()
            : Option.some(`it answered HTTP ${answer.status}: ${answer.body.slice(0, 100)}`),
        onLeft: (error) => {
          const code = transportCode(error.cause)
          return code === undefined || code === "ECONNREFUSED" ? Option.none<string>() : Option.some(`the connection failed with ${code}`)
        }
      })

    /**
     * Writes the file and reloads nginx once; done when the route API answers with this file's
     * version. An nginx without the Lua module refuses the file: that stops the start-up with
     * what to install, or NGINX_ROUTING=reload. Run again when the TLS certificate changed: the
     * file carries its digest, so nginx is reloaded when, and only when, the file changed.
     */
    const install = Effect.gen(function*() {
      const file = renderLuaConfig({
        domain,
        listen: kit.listen,
        routeApiListen: config.routeApiListen,
        tableSize: config.routeTableSize,
        fenceTableSize: config.fenceTableSize,
        secret,
        ...(yield* kit.currentTls)
      })
      yield* kit.writeAtomically(path.join(confDir, "gateway-allocator.conf"), file.text).pipe(Effect.mapError(fail("install")))
      // nginx already runs this very file (a restart of the service, another replica): a reload
      // would only drop every client's kept-alive connections.
      const first = yield* firstBoot
      const running = Either.isRight(first) ? parseBoot(first.right) : Option.none()
      if (Option.exists(running, (state) => state.version === file.version)) return
      if (Option.isNone(running)) {
        const occupant = occupantOf(first)
        if (Option.isSome(occupant)) {
          return yield* new NginxError({
            operation: "install",
            reason: `NGINX_ROUTE_API_LISTEN (${config.routeApiListen}) is held by another process (${occupant.value}), so ` +
              "nginx could not listen there: choose a free loopback address"
          })
        }
      }
      yield* kit.signalReload.pipe(
        kit.underEdgeLock,
        Effect.mapError((error) =>
          /unknown directive "(lua_shared_dict|\w+_by_lua_block)"/.test(error.reason)
            ? new NginxError({
              operation: "install",
              reason: `NGINX_ROUTING=lua needs nginx's Lua module, and this nginx has none (${error.reason}). ` +
                "Install it (Debian: apt-get install libnginx-mod-http-lua; its main config loads it through " +
                "modules-enabled, or add load_module lines for ndk_http_module.so and ngx_http_lua_module.so), " +
                "or set NGINX_ROUTING=reload"
            })
            : error
        )
      )
      yield* tableState.pipe(
        Effect.filterOrFail(
          (state) => state.version === file.version,
          () => new NginxError({ operation: "install", reason: "nginx still runs an older gateway-allocator.conf" })
        ),
        Effect.retry(Schedule.spaced(Duration.millis(20))),
        Effect.timeoutFail({
          duration: callTimeout,
          onTimeout: () =>
            new NginxError({
              operation: "reload",
              reason: `the route API on ${config.routeApiListen} does not answer with the new configuration (see nginx's error log)`
            })
        })
      )
    }).pipe(Effect.withSpan("Nginx.install", { attributes: { "nginx.routing": "lua" } }))

    return { install, routes: client.routes }
  })

/** The Nginx of the local edge alone. */
export const makeLuaRouting = (kit: EdgeKit) =>
  Effect.map(makeLocalLuaEdge(kit), ({ install, routes }) => singleEdge(kit.edge, install, routes))
