// The operator console in a real headless Chromium (Debian's, driven by playwright-core), against
// the service as a child process over the real stack (Postgres, PowerDNS, nginx, sample gateways)
// and a stand-in OTLP collector, so the trace id the console shows can be checked against the
// spans the service exported. The tests run in order on one stack: each opens a fresh tab and
// enters the token, as an operator would.
//
// CONSOLE_SCREENSHOT=1 writes docs/console.png (the README's picture) after the rolled-back start.
import { PgClient } from "@effect/sql-pg"
import { Context, Effect, Exit, Layer, Scope } from "effect"
import { randomUUID } from "node:crypto"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { createServer, type Server } from "node:http"
import { tmpdir } from "node:os"
import path from "node:path"
import { type BrowserContext, chromium, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { LocalStack } from "../../src/dev/stack.ts"
import type { EdgeId } from "../../src/domain/ids.ts"
import { EdgeRegistry } from "../../src/edges/EdgeRegistry.ts"
import { freePort } from "../../src/lib/ports.ts"
import {
  PROJECT_ROOT,
  registerGateways,
  request,
  type ServiceProcess,
  startGateway,
  startServer,
  stopGateway
} from "../support/server.ts"
import { setAllGateways, Stack, StackLive } from "../support/stack.ts"

const CHROMIUM = "/usr/bin/chromium"
// Headless, and nothing that reaches out: the machine's network is closed.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync"
]
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
/** How long the console may take to show a change (it polls every 2 s). */
const SHOWN_MS = 8000

interface ExportedSpan {
  readonly name: string
  readonly traceId: string
}

/** An OTLP/HTTP (JSON) collector that keeps the spans it receives. */
const startCollector = async (port: number) => {
  const spans: Array<ExportedSpan> = []
  const server: Server = createServer((request, response) => {
    const chunks: Array<Buffer> = []
    request.on("data", (chunk: Buffer) => chunks.push(chunk))
    request.on("end", () => {
      if (request.url === "/v1/traces") {
        const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
          resourceSpans?: Array<{ scopeSpans?: Array<{ spans?: Array<ExportedSpan> }> }>
        }
        for (const resource of body.resourceSpans ?? []) {
          for (const scope of resource.scopeSpans ?? []) spans.push(...(scope.spans ?? []))
        }
      }
      response.writeHead(200, { "content-type": "application/json" }).end("{}")
    })
  })
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve))
  return { spans, close: () => new Promise<void>((resolve) => server.close(() => resolve())) }
}

let scope: Scope.CloseableScope
let stack: LocalStack
let server: ServiceProcess
let browser: BrowserContext
let collector: Awaited<ReturnType<typeof startCollector>>
let profile: string
/** What every tab reported that must never happen: a script error, a Content-Security-Policy violation. */
const problems: Array<string> = []

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium is not at ${CHROMIUM}: install Debian's chromium package (.ci/run does: apt-get install chromium)`)
  }
  scope = await Effect.runPromise(Scope.make())
  const collectorPort = await Effect.runPromise(freePort)
  collector = await startCollector(collectorPort)
  const started = await Effect.runPromise(
    Effect.gen(function*() {
      const context = yield* Layer.buildWithScope(StackLive(), scope)
      const local = Context.get(context, Stack)
      const service = yield* startServer(local, {
        name: "console",
        env: {
          OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collectorPort}`,
          // Spans leave within a fifth of a second (the SDK's default is 5 s).
          OTEL_BSP_SCHEDULE_DELAY: "200",
          TRACE_URL: "http://traces.example/trace/{trace_id}"
        }
      }).pipe(Scope.extend(scope))
      yield* registerGateways(service, local)
      return { local, service }
    })
  )
  stack = started.local
  server = started.service
  profile = mkdtempSync(path.join(tmpdir(), "console-chromium-"))
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1440, height: 900 }
  })
}, 120_000)

afterAll(async () => {
  await browser?.close()
  if (profile !== undefined) rmSync(profile, { recursive: true, force: true })
  await collector?.close()
  if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
}, 60_000)

/** A fresh tab on /console (its own sessionStorage): script errors and CSP violations are collected. */
const newTab = async () => {
  const page = await browser.newPage()
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`))
  page.on("console", (message) => {
    if (/Content Security Policy|Refused to/i.test(message.text())) problems.push(`console: ${message.text()}`)
  })
  const response = await page.goto(`${server.url}/console`)
  expect(response?.status()).toBe(200)
  expect(response?.headers()["content-security-policy"]).toBe(CSP)
  expect(response?.headers()["x-content-type-options"]).toBe("nosniff")
  return page
}

/** A tab with the token entered and the pool shown. */
const openConsole = async () => {
  const page = await newTab()
  await page.locator("#token").fill(server.token)
  await page.getByRole("button", { name: "Open" }).click()
  await page.locator('#pool-gateways tr[data-gateway="gateway-1"]').waitFor({ timeout: SHOWN_MS })
  return page
}

const count = (page: Page, name: string) => page.locator(`#pool-counts [data-count="${name}"] dd`)

/** Every sample gateway back to answering "ok". */
const resetGateways = () => Effect.runPromise(Effect.forEach(stack.gateways, (gateway) => gateway.reset, { discard: true }))

/** Starts an org from the console's form. */
const startFromConsole = async (page: Page, org: string) => {
  await page.locator('#start-org input[name="organization_id"]').fill(org)
  await page.locator("#start-org").getByRole("button", { name: "Start" }).click()
}

describe("operator console in Chromium (real stack)", () => {
  it("a wrong token: a clear message, the token is forgotten, nothing is shown", async () => {
    const page = await newTab()
    await page.locator("#login").waitFor()
    await page.locator("#token").fill("not-the-token-but-long-enough")
    await page.getByRole("button", { name: "Open" }).click()
    await page.locator("#login-error").getByText("The service refused this token (401 Unauthorized)").waitFor({ timeout: SHOWN_MS })
    expect(await page.locator("#app").isHidden()).toBe(true)
    expect(await page.evaluate("sessionStorage.length")).toBe(0)
    await page.close()
  })

  it("the token opens the console: pool counts and every gateway; the token is in sessionStorage, never in the URL", async () => {
    const page = await openConsole()
    for (const gateway of stack.gateways) {
      const row = page.locator(`#pool-gateways tr[data-gateway="${gateway.name}"]`)
      await row.getByText(gateway.upstream).waitFor({ timeout: SHOWN_MS })
      await row.getByText("active").waitFor()
    }
    await count(page, "total").getByText("3", { exact: true }).waitFor({ timeout: SHOWN_MS })
    await count(page, "free").getByText("3", { exact: true }).waitFor()
    await count(page, "available").getByText("3", { exact: true }).waitFor()
    expect(page.url()).toBe(`${server.url}/console`)
    expect(await page.evaluate("sessionStorage.getItem('gateway-allocator.token')")).toBe(server.token)
    await page.close()
  })

  it("add a gateway, see it in the pool, remove it (a second click confirms)", async () => {
    const page = await openConsole()
    const upstream = `127.0.0.1:${await Effect.runPromise(freePort)}`
    await page.locator('#add-gateway input[name="name"]').fill("console-extra")
    await page.locator('#add-gateway input[name="upstream"]').fill(upstream)
    await page.getByRole("button", { name: "Add gateway" }).click()
    await page.locator("#message").getByText(`console-extra (${upstream}) added to the pool`).waitFor({ timeout: SHOWN_MS })
    const row = page.locator('#pool-gateways tr[data-gateway="console-extra"]')
    await row.getByText(upstream).waitFor({ timeout: SHOWN_MS })
    await count(page, "total").getByText("4", { exact: true }).waitFor({ timeout: SHOWN_MS })

    await row.getByRole("button", { name: "Remove" }).click()
    await row.getByRole("button", { name: "Confirm remove" }).click()
    await row.waitFor({ state: "detached", timeout: SHOWN_MS })
    await count(page, "total").getByText("3", { exact: true }).waitFor({ timeout: SHOWN_MS })
    await page.close()
  })

  const org = randomUUID()

  it("start an org: its allocation appears live, its five steps completed, with the trace id of its start", async () => {
    const page = await openConsole()
    await startFromConsole(page, org)
    await page.locator("#message").getByText(`${org} started on org-${org}.domain.local`).waitFor({ timeout: 30_000 })
    const live = page.locator(`#live tr[data-org="${org}"]`)
    await live.getByText("active").waitFor({ timeout: SHOWN_MS })
    await live.getByText(`org-${org}.domain.local`).waitFor()

    const steps = page.locator("#waterfall li.step")
    await expect.poll(() => steps.evaluateAll((items) => items.map((item) => item.getAttribute("data-step"))), { timeout: SHOWN_MS })
      .toEqual(["allocate", "dns", "nginx-config", "nginx-reload", "handshake"])
    expect(await page.locator("#waterfall li.undo").count()).toBe(0)
    expect(await steps.evaluateAll((items) => items.map((item) => item.getAttribute("data-outcome"))))
      .toEqual(Array(5).fill("completed"))

    const traceId = (await page.locator("#detail-trace").textContent())?.split(" ")[0] ?? ""
    expect(traceId).toMatch(/^[0-9a-f]{32}$/)
    expect(await page.locator("#detail-trace a").getAttribute("href")).toBe(`http://traces.example/trace/${traceId}`)
    await expect.poll(() => collector.spans.filter((span) => span.name === "Allocation.start").map((span) => span.traceId), {
      timeout: SHOWN_MS
    }).toContain(traceId)
    await count(page, "allocated").getByText("1", { exact: true }).waitFor({ timeout: SHOWN_MS })
    await page.locator(`#pool-gateways td`).getByText(org).waitFor()
    await page.close()
  })

  it("a gateway refuses its handshake: the failed start's waterfall shows every undo and the error the caller got", async () => {
    const page = await openConsole()
    await Effect.runPromise(setAllGateways(stack, { handshake: "fail" }))
    try {
      const failed = randomUUID()
      await startFromConsole(page, failed)
      await page.locator("#message").getByText("HTTP 502 StepFailed at handshake")
        .waitFor({ timeout: 30_000 })
      await page.locator("#detail-error").getByText("The caller got: handshake failed").waitFor({ timeout: SHOWN_MS })
      await page.locator("#detail-error").getByText("HTTP 500").waitFor()
      await page.locator("#detail-state").getByText("rolled_back").waitFor({ timeout: SHOWN_MS })

      const bars = (kind: "step" | "undo") =>
        page.locator(`#waterfall li.${kind}`).evaluateAll((items) =>
          items.map((item) => `${item.getAttribute("data-step")}:${item.getAttribute("data-outcome")}`))
      expect(await bars("step")).toEqual([
        "allocate:completed",
        "dns:completed",
        "nginx-config:completed",
        "nginx-reload:completed",
        "handshake:failed"
      ])
      // The gateway said no to the handshake, so that step changed nothing and has no undo.
      expect(await bars("undo")).toEqual(["nginx-reload:undone", "nginx-config:undone", "dns:undone", "allocate:undone"])
      expect(await page.locator("#waterfall li.undo .actor").allTextContents()).toEqual(Array(4).fill("request"))

      // The rollbacks list has it, complete, and the finished list too.
      const rollback = page.locator(`#rollback-list tr[data-allocation]`).filter({ hasText: failed })
      await rollback.getByText("allocate: done").waitFor({ timeout: SHOWN_MS })
      expect(await rollback.getAttribute("class")).toBeNull()
      await page.locator(`#finished tr[data-org="${failed}"]`).getByText("rolled_back").waitFor({ timeout: SHOWN_MS })

      if (process.env["CONSOLE_SCREENSHOT"] === "1") {
        await page.screenshot({ path: path.join(PROJECT_ROOT, "docs", "console.png") })
      }
    } finally {
      await resetGateways()
    }
    await page.close()
  })

  it("an undo that cannot finish (PowerDNS stopped mid-start): the rollback is highlighted, the reconciler's repair counted", async () => {
    const page = await openConsole()
    const frozen = randomUUID()
    // The handshake fails late enough to stop PowerDNS once the record is in. Stopped, not frozen:
    // a frozen PowerDNS would still carry out the undo's timed-out DELETE when it resumes, leaving
    // the reconciler nothing to repair.
    await Effect.runPromise(setAllGateways(stack, { handshake: "fail", handshakeDelayMs: 1500 }))
    try {
      await startFromConsole(page, frozen)
      await expect.poll(async () => {
        const answer = await Effect.runPromise(request(server, "GET", `/allocations?organization_id=${frozen}`))
        const steps: Array<{ step: string; event: string }> = answer.json?.allocations?.[0]?.steps ?? []
        return steps.some((entry) => entry.step === "dns" && entry.event === "completed")
      }, { timeout: SHOWN_MS, interval: 50 }).toBe(true)
      await Effect.runPromise(stack.powerDns.stop)
      await page.locator("#message").getByText("HTTP 502 StepFailed at handshake").waitFor({ timeout: 30_000 })
    } finally {
      await Effect.runPromise(stack.powerDns.start)
      await resetGateways()
    }
    const rollback = page.locator("#rollback-list tr.incomplete").filter({ hasText: frozen })
    await rollback.getByText("was incomplete").waitFor({ timeout: SHOWN_MS })
    await expect.poll(() => rollback.locator(".badge").allTextContents(), { timeout: SHOWN_MS })
      .toEqual(expect.arrayContaining([expect.stringMatching(/^dns: (failed|timed_out)$/), "allocate: done"]))
    // The record the undo left behind is drift: the reconciler removes it once PowerDNS answers.
    await page.locator("#repairs").getByText("orphan record removed").waitFor({ timeout: 30_000 })
    await page.close()
  })

  it("drain a gateway and make it active again", async () => {
    const page = await openConsole()
    const row = page.locator('#pool-gateways tr[data-gateway="gateway-3"]')
    await row.getByRole("button", { name: "Drain" }).click()
    await page.locator("#message").getByText("gateway-3 is draining").waitFor({ timeout: SHOWN_MS })
    await row.getByText("draining").waitFor({ timeout: SHOWN_MS })
    await count(page, "draining").getByText("1", { exact: true }).waitFor({ timeout: SHOWN_MS })
    await row.getByRole("button", { name: "Undrain" }).click()
    await page.locator("#message").getByText("gateway-3 is active").waitFor({ timeout: SHOWN_MS })
    await count(page, "draining").getByText("0", { exact: true }).waitFor({ timeout: SHOWN_MS })
    await page.close()
  })

  it("stop an org (a second click confirms): it leaves the live list and shows as released; filters narrow the lists; forget the token", async () => {
    const page = await openConsole()
    const live = page.locator(`#live tr[data-org="${org}"]`)
    await live.getByRole("button", { name: "Stop" }).click()
    await live.getByRole("button", { name: "Confirm stop" }).click()
    await page.locator("#message").getByText(`${org} stopped: its gateway is back in the pool`).waitFor({ timeout: 30_000 })
    await live.waitFor({ state: "detached", timeout: SHOWN_MS })
    await page.locator(`#finished tr[data-org="${org}"]`).getByText("released").waitFor({ timeout: SHOWN_MS })
    await count(page, "allocated").getByText("0", { exact: true }).waitFor({ timeout: SHOWN_MS })

    // Only rolled-back starts, then only this org (typed in upper case).
    await page.locator('#filters select[name="state"]').selectOption("rolled_back")
    await page.locator(`#finished tr[data-org="${org}"]`).waitFor({ state: "detached", timeout: SHOWN_MS })
    await page.locator('#filters select[name="state"]').selectOption("")
    await page.locator('#filters input[name="organization_id"]').fill(org.toUpperCase())
    await page.locator('#filters input[name="organization_id"]').dispatchEvent("change")
    await expect.poll(() => page.locator("#finished tr[data-org]").evaluateAll((rows) => rows.map((row) => row.getAttribute("data-org"))), {
      timeout: SHOWN_MS
    }).toEqual([org])

    // Forgetting the token takes what the service said off the page.
    await page.getByRole("button", { name: "Forget token" }).click()
    await page.locator("#login-error").getByText("Token forgotten.").waitFor()
    expect(await page.locator("#app").isHidden()).toBe(true)
    expect(await page.locator("#live").textContent()).toBe("")
    expect(await page.evaluate("sessionStorage.length")).toBe(0)
    await page.close()
  })

  it("edges: each edge with its status; a gateway an edge owes a removal for is badged held by it, until the edge is removed", async () => {
    // An org served and stopped first: the edge registered next is made to owe its route's removal
    // (as if it had been cut off then), with no route change of its own in flight to a dead address.
    const org = randomUUID()
    expect((await Effect.runPromise(startGateway(server, org))).status).toBe(200)
    const stopped = await Effect.runPromise(stopGateway(server, org))
    expect(stopped.status).toBe(200)
    const [allocation] = (await Effect.runPromise(request(server, "GET", `/allocations?organization_id=${org}`))).json.allocations

    const added = await Effect.runPromise(request(server, "POST", "/edges", {
      body: { name: "console-edge", route_api_url: "http://10.255.0.1:8089", probe_url: "http://10.255.0.1:8080" }
    }))
    expect(added.status).toBe(201)
    const edgeId: string = added.json.edge_id
    try {
      const page = await openConsole()
      const row = page.locator('#edge-list tr[data-edge="console-edge"]')
      // Registered, never reached by a replica (nothing listens there): unreachable.
      await row.locator(".badge").getByText("unreachable", { exact: true }).waitFor({ timeout: SHOWN_MS })
      await row.getByText("never").waitFor()
      await row.getByText("http://10.255.0.1:8089").waitFor()
      expect(await row.locator("[data-held]").getAttribute("data-held")).toBe("0")

      await Effect.runPromise(
        Effect.flatMap(EdgeRegistry, (edges) =>
          edges.owe(edgeId as EdgeId, { allocationId: allocation.allocation_id, generation: 1 }, "cut off")).pipe(
          Effect.provide(EdgeRegistry.Default.pipe(Layer.provide(PgClient.layer({ url: stack.databaseUrl }))))
        )
      )
      const pool = (await Effect.runPromise(request(server, "GET", "/pool"))).json
      const held = pool.gateways.find((gateway: { gateway_id: string }) => gateway.gateway_id === stopped.json.gateway_id)
      const gatewayRow = page.locator(`#pool-gateways tr[data-gateway="${held.name}"]`)
      await gatewayRow.getByText("held by edge console-edge").waitFor({ timeout: SHOWN_MS })
      await count(page, "held").getByText("1", { exact: true }).waitFor({ timeout: SHOWN_MS })
      await row.locator('[data-held="1"]').waitFor({ timeout: SHOWN_MS })

      // Removed from the registry: what it owed goes with it, the gateway is back in the pool.
      const removed = await Effect.runPromise(request(server, "DELETE", `/edges/${edgeId}`))
      expect(removed.json).toEqual({ edge_id: edgeId, removals_dropped: 1 })
      await row.waitFor({ state: "detached", timeout: SHOWN_MS })
      await gatewayRow.getByText("held by edge console-edge").waitFor({ state: "detached", timeout: SHOWN_MS })
      await count(page, "held").getByText("0", { exact: true }).waitFor({ timeout: SHOWN_MS })
      await page.close()
    } finally {
      await Effect.runPromise(request(server, "DELETE", `/edges/${edgeId}`))
    }
  })

  it("no tab had a script error or a Content-Security-Policy violation", () => {
    expect(problems).toEqual([])
  })
})
