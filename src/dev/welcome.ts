// What `npm run dev` prints once the stack is up: where everything listens, and commands to try,
// in an order whose outcomes it states (which gateway each start takes is read from the pool).
import { Option } from "effect"

/** The org of the first demo: fixed, so its lines stay the same across runs. */
export const DEMO_ORG = "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"

/** What the welcome shows of the stack (a LocalStack is one). */
export interface WelcomeStack {
  readonly apiToken: string
  readonly env: Readonly<Record<string, string>>
  readonly nginx: { readonly listenPort: number; readonly routeApiPort: number; readonly tlsPort: number; readonly confDir: string }
  /** HTTPS: the dev CA that signed nginx's wildcard certificate (absent: plain HTTP only). */
  readonly certificate?: { readonly caPath: string }
  readonly powerDns: { readonly apiUrl: string; readonly dnsPort: number; readonly zone: string }
  readonly gateways: ReadonlyArray<{ readonly name: string; readonly upstream: string }>
}

/** The pool as the welcome is printed, for the demos' predictions. */
export interface ClaimOutlook {
  /** The gateway DEMO_ORG holds already (an earlier run started it and never stopped it), or null. */
  readonly orgHolds: string | null
  /** Names of the first free gateways in the order claims take them (the view gateways_claim_order). */
  readonly claimOrder: ReadonlyArray<string>
}

export interface DeadGatewayPlan {
  /** The gateway the second org's start claims first: the one to break. */
  readonly dead: { readonly name: string; readonly upstream: string }
  /** Where that start succeeds once it has set `dead` aside. */
  readonly fallback: string
}

/**
 * The dead-gateway demo runs while DEMO_ORG holds its gateway, so the second org's claim takes
 * the next free gateway in claim order: the first one when DEMO_ORG kept its gateway from an
 * earlier run, else the second (DEMO_ORG's start takes the first). None when the pool has too
 * few free gateways, or the one to break is not a sample gateway (only those can be told to fail).
 */
export const deadGatewayPlan = (
  outlook: ClaimOutlook,
  gateways: WelcomeStack["gateways"]
): Option.Option<DeadGatewayPlan> => {
  const skip = outlook.orgHolds === null ? 1 : 0
  const deadName = outlook.claimOrder[skip]
  const fallback = outlook.claimOrder[skip + 1]
  const dead = gateways.find((gateway) => gateway.name === deadName)
  return dead === undefined || fallback === undefined ? Option.none() : Option.some({ dead, fallback })
}

export const welcome = (
  stack: WelcomeStack,
  port: number,
  outlook: ClaimOutlook,
  secondOrg: string,
  edges: ReadonlyArray<{ readonly name: string; readonly listenPort: number; readonly routeApiPort: number }> = []
): string => {
  const api = `http://127.0.0.1:${port}`
  const domain = stack.env.DOMAIN ?? "domain.local"
  const auth = `-H 'authorization: Bearer ${stack.apiToken}'`
  const get = (path: string) => `  curl -s ${auth} ${api}${path}`
  const post = (path: string, org: string) =>
    `  curl -s ${auth} -H 'content-type: application/json' -d '{"organization_id":"${org}"}' ${api}${path}`
  const throughNginx = (org: string) =>
    `  curl -s -H 'host: org-${org}.${domain}' http://127.0.0.1:${stack.nginx.listenPort}/hello`
  // dig may be missing; node is not, and its Resolver asks PowerDNS on its own port.
  const resolve = (org: string) =>
    `  node -e "const r = new (require('node:dns/promises').Resolver)(); ` +
    `r.setServers(['127.0.0.1:${stack.powerDns.dnsPort}']); r.resolve4('org-${org}.${domain}').then(console.log)"`
  const hostname = (org: string) => `org-${org}.${domain}`
  // curl's --resolve stands in for the DNS record (PowerDNS answers on its own port, not :53).
  const overHttps = (org: string, caPath: string) =>
    `  curl -s --cacert ${caPath} --resolve ${hostname(org)}:${stack.nginx.tlsPort}:127.0.0.1 ` +
    `https://${hostname(org)}:${stack.nginx.tlsPort}/hello`
  // Node 20 has no WebSocket client: the upgrade by hand over TLS, printing the 101 and the gateway's greeting.
  const overWss = (org: string, caPath: string) =>
    `  node -e "const s = require('tls').connect({ host: '127.0.0.1', port: ${stack.nginx.tlsPort}, ` +
    `servername: '${hostname(org)}', ca: require('fs').readFileSync('${caPath}'), ALPNProtocols: ['http/1.1'] }, ` +
    `() => s.write('GET /ws HTTP/1.1\\r\\nHost: ${hostname(org)}\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n` +
    `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n')); ` +
    `s.on('data', (d) => { const t = d.toString(); if (t.startsWith('HTTP/')) console.log(t.split('\\r\\n')[0]); ` +
    `const j = t.indexOf('{'); if (j >= 0) { console.log(t.slice(j)); s.end() } })"`
  const refuseHandshakes = (upstream: string) => `  curl -s -d '{"handshake":"fail"}' http://${upstream}/__control`
  const plan = deadGatewayPlan(outlook, stack.gateways)
  const first = outlook.claimOrder[0]

  const firstOrg = outlook.orgHolds !== null
    ? [
      `Start an org's gateway: it kept ${outlook.orgHolds} from an earlier run, so the start answers "reused": true and`,
      `nginx's request a 421 (${outlook.orgHolds} restarted without it: stop and start it again); resolve its name with PowerDNS:`
    ]
    : first === undefined
    ? ["Start an org's gateway (no gateway is free now: GET /pool says why), reach it through nginx, resolve its name:"]
    : [
      `Start an org's gateway: it gets ${first} (a claim takes the least recently allocated free gateway); reach it`,
      "through nginx (the gateway answers with its name), resolve its name with PowerDNS:"
    ]
  const deadGateway = Option.match(plan, {
    onNone: () => [
      `(The dead-gateway demo needs ${outlook.orgHolds === null ? 3 : 2} free sample gateways; ` +
      `the pool has ${outlook.claimOrder.length} now.) Stop it:`
    ],
    onSome: ({ dead, fallback }) => [
      `A dead gateway: the next claim takes ${dead.name}, so make it refuse its handshake; a second org's start sets it`,
      `aside and succeeds on ${fallback} (nginx reaches ${fallback}), and the pool shows ${dead.name} quarantined (it comes`,
      "back once its quarantine ends and it answers its health check):",
      refuseHandshakes(dead.upstream),
      post("/gateway/start", secondOrg),
      throughNginx(secondOrg),
      get("/pool"),
      "Stop both orgs:",
      post("/gateway/stop", secondOrg)
    ]
  })

  return [
    "",
    "gateway-allocator dev stack is up",
    `  API          ${api}   (token: ${stack.apiToken})`,
    `  console      ${api}/console   (enter the token above)`,
    `  nginx        http://127.0.0.1:${stack.nginx.listenPort}` +
    (stack.certificate === undefined ? "" : ` and https://127.0.0.1:${stack.nginx.tlsPort}`) +
    (stack.env.NGINX_ROUTING === "reload"
      ? `   (routes in ${stack.nginx.confDir}/routes)`
      : `   (routes in its shared memory; route API on 127.0.0.1:${stack.nginx.routeApiPort})`),
    ...(stack.certificate === undefined ? [] : [`  dev CA       ${stack.certificate.caPath}   (trust it to reach orgs over HTTPS without warnings)`]),
    ...edges.map((edge) =>
      `  ${edge.name.padEnd(12)} http://127.0.0.1:${edge.listenPort}   (another nginx edge: every route on it too; route API on 127.0.0.1:${edge.routeApiPort})`
    ),
    `  PowerDNS     ${stack.powerDns.apiUrl}   (DNS on 127.0.0.1:${stack.powerDns.dnsPort}, zone ${stack.powerDns.zone})`,
    `  gateways     ${stack.gateways.map((g) => `${g.name}=${g.upstream}`).join("  ")}`,
    "",
    "Try:",
    get("/pool"),
    ...firstOrg,
    post("/gateway/start", DEMO_ORG),
    throughNginx(DEMO_ORG),
    resolve(DEMO_ORG),
    ...(stack.certificate === undefined ? [] : [
      `Over HTTPS by its name (nginx's wildcard certificate for *.${domain} is signed by the dev CA), and over WSS:`,
      overHttps(DEMO_ORG, stack.certificate.caPath),
      overWss(DEMO_ORG, stack.certificate.caPath)
    ]),
    ...deadGateway,
    ...(edges.length === 0 ? [] : [
      "Every edge serves each org (GET /edges shows each one's state); the org's hostname on another edge:",
      ...edges.map((edge) => `  curl -s -H 'host: org-${DEMO_ORG}.${domain}' http://127.0.0.1:${edge.listenPort}/hello`),
      get("/edges")
    ]),
    post("/gateway/stop", DEMO_ORG),
    "Force a failure (every sample gateway refuses the handshake), start, and watch every attempt roll back:",
    ...stack.gateways.map((g) => refuseHandshakes(g.upstream)),
    post("/gateway/start", DEMO_ORG),
    ""
  ].join("\n")
}
