// NGINX_FENCE_TABLE_SIZE (lua mode's fence zone) is validated like the route table's size, and the
// file declares the three zones: routes at NGINX_ROUTE_TABLE_SIZE, fences at NGINX_FENCE_TABLE_SIZE,
// locks at a fixed size.
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either } from "effect"
import { NginxConfig } from "../../src/config.ts"
import { renderLuaConfig } from "../../src/nginx/luaConfig.ts"

const nginxFrom = (env: Record<string, string>) =>
  Effect.either(NginxConfig).pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries({ NGINX_CONF_DIR: "/etc/x", ...env })))))

describe("the fence zone's configuration", () => {
  it.effect("NGINX_FENCE_TABLE_SIZE: 4m by default, at least 128k, a size nginx understands", () =>
    Effect.gen(function*() {
      expect(Either.map(yield* nginxFrom({}), (c) => [c.routeTableSize, c.fenceTableSize])).toEqual(Either.right(["64m", "4m"]))
      expect(Either.map(yield* nginxFrom({ NGINX_FENCE_TABLE_SIZE: "512k" }), (c) => c.fenceTableSize)).toEqual(Either.right("512k"))
      for (const size of ["64k", "4 m", "lots", ""]) {
        const refused = yield* nginxFrom({ NGINX_FENCE_TABLE_SIZE: size })
        expect(Either.isLeft(refused) && String(refused.left), size).toMatch(/NGINX_FENCE_TABLE_SIZE must be .* at least 128k/)
      }
    }))

  it("the lua file declares the routes', the fences' and the locks' zones, each its own", () => {
    const { text } = renderLuaConfig({
      domain: "domain.local",
      listen: "80",
      routeApiListen: "127.0.0.1:8089",
      tableSize: "128k",
      fenceTableSize: "512k",
      secret: "0".repeat(48)
    })
    expect(text.match(/^lua_shared_dict .*$/gm)).toEqual([
      "lua_shared_dict gateway_allocator_routes 128k;",
      "lua_shared_dict gateway_allocator_fences 512k;",
      "lua_shared_dict gateway_allocator_locks 1m;"
    ])
  })
})
