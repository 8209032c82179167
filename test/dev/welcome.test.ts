// The welcome of `npm run dev`: its dead-gateway demo must break the gateway the second org's
// claim takes (else that start succeeds elsewhere and shows no quarantine), and every tool it
// names must be one the dev stack has.
import { describe, expect, it } from "@effect/vitest"
import { Option } from "effect"
import { type ClaimOutlook, DEMO_ORG, deadGatewayPlan, welcome, type WelcomeStack } from "../../src/dev/welcome.ts"

const stack: WelcomeStack = {
  apiToken: "token-token-token-token",
  env: { DOMAIN: "domain.local", NGINX_ROUTING: "lua" },
  nginx: { listenPort: 8081, routeApiPort: 8089, tlsPort: 8443, confDir: "/data/nginx/conf.d" },
  certificate: { caPath: "/data/tls/ca.pem" },
  powerDns: { apiUrl: "http://127.0.0.1:8082", dnsPort: 8053, zone: "domain.local." },
  gateways: [1, 2, 3].map((i) => ({ name: `gateway-${i}`, upstream: `127.0.0.1:900${i}` }))
}
const SECOND_ORG = "11111111-2222-4333-8444-555555555555"
const fresh: ClaimOutlook = { orgHolds: null, claimOrder: ["gateway-1", "gateway-2", "gateway-3"] }

const lines = (outlook: ClaimOutlook) => welcome(stack, 8080, outlook, SECOND_ORG).split("\n")
/** The `__control` lines between the dead-gateway demo and the forced failure. */
const breaks = (text: ReadonlyArray<string>) =>
  text.slice(0, text.findIndex((line) => line.startsWith("Force a failure"))).filter((line) => line.includes("/__control"))

describe("welcome", () => {
  it("breaks the second gateway in claim order: the first org's start takes the first", () => {
    expect(deadGatewayPlan(fresh, stack.gateways)).toEqual(
      Option.some({ dead: { name: "gateway-2", upstream: "127.0.0.1:9002" }, fallback: "gateway-3" })
    )
    const text = lines(fresh)
    expect(breaks(text)).toEqual([`  curl -s -d '{"handshake":"fail"}' http://127.0.0.1:9002/__control`])
    const demo = text.findIndex((line) => line.includes("/__control"))
    // The second org starts after the break, while the first still holds its gateway (stopped after).
    expect(text[demo + 1]).toContain(`{"organization_id":"${SECOND_ORG}"}' http://127.0.0.1:8080/gateway/start`)
    expect(text.findIndex((line) => line.includes(`"${DEMO_ORG}"}' http://127.0.0.1:8080/gateway/stop`))).toBeGreaterThan(demo)
    expect(text.join("\n")).toContain("it gets gateway-1")
    expect(text.join("\n")).toContain("succeeds on gateway-3")
  })

  it("follows the claim order read from the pool, not the gateways' names", () => {
    const plan = deadGatewayPlan({ orgHolds: null, claimOrder: ["gateway-3", "gateway-1", "gateway-2"] }, stack.gateways)
    expect(Option.map(plan, ({ dead, fallback }) => [dead.name, fallback])).toEqual(Option.some(["gateway-1", "gateway-2"]))
  })

  it("breaks the first free gateway when the first org kept one from an earlier run", () => {
    const kept: ClaimOutlook = { orgHolds: "gateway-1", claimOrder: ["gateway-3", "gateway-2"] }
    expect(Option.map(deadGatewayPlan(kept, stack.gateways), ({ dead, fallback }) => [dead.name, fallback])).toEqual(
      Option.some(["gateway-3", "gateway-2"])
    )
    expect(breaks(lines(kept))).toEqual([`  curl -s -d '{"handshake":"fail"}' http://127.0.0.1:9003/__control`])
    expect(lines(kept).join("\n")).toContain(`"reused": true`)
  })

  it("leaves the demo out when the pool has too few free gateways, or the one to break is not a sample gateway", () => {
    const few: ClaimOutlook = { orgHolds: null, claimOrder: ["gateway-1", "gateway-2"] }
    expect(deadGatewayPlan(few, stack.gateways)).toEqual(Option.none())
    expect(breaks(lines(few))).toEqual([])
    expect(lines(few).join("\n")).toContain("needs 3 free sample gateways; the pool has 2 now")
    expect(deadGatewayPlan({ orgHolds: null, claimOrder: ["gateway-1", "elsewhere", "gateway-3"] }, stack.gateways))
      .toEqual(Option.none())
  })

  it("resolves with node (always there) at PowerDNS's port, not with dig", () => {
    const text = lines(fresh)
    expect(text.some((line) => /\bdig\b/.test(line))).toBe(false)
    expect(text).toContain(
      `  node -e "const r = new (require('node:dns/promises').Resolver)(); r.setServers(['127.0.0.1:8053']); ` +
        `r.resolve4('org-${DEMO_ORG}.domain.local').then(console.log)"`
    )
  })

  it("reaches the first org over HTTPS (curl trusting the dev CA, the name resolved to nginx) and WSS (node's tls), after it starts", () => {
    const text = lines(fresh)
    const started = text.findIndex((line) => line.includes(`"${DEMO_ORG}"}' http://127.0.0.1:8080/gateway/start`))
    const https = text.findIndex((line) => line.startsWith("  curl -s --cacert"))
    expect(https).toBeGreaterThan(started)
    const host = `org-${DEMO_ORG}.domain.local`
    expect(text[https]).toBe(`  curl -s --cacert /data/tls/ca.pem --resolve ${host}:8443:127.0.0.1 https://${host}:8443/hello`)
    expect(text[https + 1]).toContain(`servername: '${host}', ca: require('fs').readFileSync('/data/tls/ca.pem')`)
    expect(text[https + 1]).toContain("Upgrade: websocket")
    // Without TLS, no HTTPS line.
    const { certificate: _, ...plain } = stack
    expect(welcome(plain, 8080, fresh, SECOND_ORG)).not.toContain("https://")
  })
})
