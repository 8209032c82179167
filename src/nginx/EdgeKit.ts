import { Command, FileSystem, Headers, HttpClient, HttpClientRequest, Path } from "@effect/platform"
import type * as NodeContext from "@effect/platform-node/NodeContext"
import { Chunk, Duration, Effect, Option, Schema, Stream } from "effect"
import * as crypto from "node:crypto"
import { NginxConfig, Settings } from "../config.ts"
import { AllocationId, type OrganizationId, orgHostname } from "../domain/ids.ts"
import { EDGE_FILE, PROBE_PATH, PROBE_SECRET_HEADER } from "./config.ts"
import { EdgeLock } from "./Edge.ts"
import { readCertificateNow, type TlsServing } from "./tls.ts"
import { type Edge, NginxError } from "./Nginx.ts"

/**
 * What both routing modes share: the edge's identity and secret (`.gateway-allocator-edge.json`
 * in NGINX_CONF_DIR, made by the first process that uses the directory), atomic file writes,
 * `nginx -s reload`, and the route probe that asks nginx itself which allocation it serves.
 */
export const makeEdgeKit = Effect.gen(function*() {
  const config = yield* NginxConfig
  const { domain, edgeUrl, limits, nginxListen, tls } = yield* Settings
  const edgeLock = yield* EdgeLock
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  const executor = yield* Effect.context<NodeContext.NodeContext>()
  // The edge secret rides in a header of every route API call and probe: the client spans record
  // request headers, so it is redacted there like `authorization` (whoever reads traces must not
  // be able to rewrite routes).
  const http = (yield* HttpClient.HttpClient).pipe(
    HttpClient.transformResponse(Effect.locally(Headers.currentRedactedNames, SECRET_HEADERS))
  )
  const confDir = path.resolve(config.confDir)
  const callTimeout = Duration.millis(limits.outsideCallMs)

  const fail = (operation: NginxError["operation"], noEffect = false) => (cause: { readonly message: string }) =>
    new NginxError({ operation, reason: cause.message, cause, noEffect })

  const edgeFile = path.join(confDir, EDGE_FILE)
  const EdgeFile = Schema.parseJson(Schema.Struct({ id: Schema.String, probeSecret: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{32,}$/)) }))
  const { id: edgeId, probeSecret: secret } = yield* Effect.gen(function*() {
    yield* fs.makeDirectory(confDir, { recursive: true })
    const fresh = { id: crypto.randomUUID(), probeSecret: crypto.randomBytes(24).toString("hex") }
    // Written whole under a name of its own, then linked in place (a link fails if the name
    // exists): of replicas starting together on a new directory, one writes it, and none reads a
    // file another is still writing.
    const draft = `${edgeFile}.${fresh.id}`
    yield* fs.writeFileString(draft, JSON.stringify(fresh), { flag: "wx", mode: 0o600 })
    yield* fs.link(draft, edgeFile).pipe(
      Effect.catchIf((error) => error._tag === "SystemError" && error.reason === "AlreadyExists", () => Effect.void),
      Effect.ensuring(fs.remove(draft).pipe(Effect.ignore))
    )
    return yield* Effect.flatMap(fs.readFileString(edgeFile), Schema.decodeUnknown(EdgeFile))
  }).pipe(Effect.mapError(fail("install")))
  const edge: Edge = { id: edgeId, confDir }

  /**
   * The TLS the local edge's file is rendered with, its certificate read and checked now (at every
   * install: start-up, and each time the files changed). A certificate nginx could not serve, or
   * browsers would refuse, fails the install with what is wrong, naming the file.
   */
  const currentTls: Effect.Effect<{ readonly tls?: TlsServing }, NginxError> = Option.match(tls, {
    onNone: () => Effect.succeed({}),
    onSome: (listener) =>
      readCertificateNow(listener, domain).pipe(
        Effect.provideService(FileSystem.FileSystem, fs),
        Effect.map((certificate) => ({ tls: { tls: listener, listen: listener.listen, certificate, stampDigest: true } })),
        Effect.mapError((error) => new NginxError({ operation: "install", reason: error.message, cause: error, noEffect: true })),
        Effect.withSpan("Nginx.readCertificate")
      )
  })

  /** Runs `effect` while no other process reloads or removes files on this nginx. */
  const underEdgeLock = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    edgeLock.withLock(edgeId, effect, (reason) => new NginxError({ operation: "lock", reason, noEffect: true }))

  /**
   * Temp file + rename: nginx sees the old file or the new one. A failure changed nothing. Owner
   * only (0600): the service's file carries the edge secret, and nginx's master reads its
   * configuration as root.
   */
  const writeAtomically = (file: string, content: string) =>
    Effect.gen(function*() {
      // The temp name does not end in .conf, so a concurrent reload never includes it.
      const temp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`)
      yield* fs.writeFileString(temp, content, { mode: 0o600 })
      yield* fs.rename(temp, file).pipe(Effect.tapError(() => fs.remove(temp).pipe(Effect.ignore)))
    })

  /** `nginx -s reload`: tests the configuration, then signals the master. Refused: no signal was sent. */
  const signalReload = Effect.gen(function*() {
    const args = ["-s", "reload", ...Option.match(config.mainConf, { onNone: () => [], onSome: (c) => ["-c", c] })]
    const result = yield* Effect.scoped(
      Effect.gen(function*() {
        const process = yield* Command.start(Command.make(config.bin, ...args))
        const [exitCode, stderr] = yield* Effect.all(
          [process.exitCode, process.stderr.pipe(Stream.decodeText(), Stream.runCollect)],
          { concurrency: 2 }
        )
        return { exitCode, stderr: Chunk.join(stderr, "").trim() }
      })
    ).pipe(
      Effect.provide(executor),
      Effect.mapError(fail("reload")),
      Effect.timeoutFail({
        duration: callTimeout,
        onTimeout: () => new NginxError({ operation: "reload", reason: `nginx -s reload did not finish within ${Duration.format(callTimeout)}` })
      })
    )
    if (result.exitCode !== 0) {
      return yield* new NginxError({ operation: "reload", reason: `exit ${result.exitCode}: ${lastLines(result.stderr)}`, noEffect: true })
    }
  })

  /**
   * The probes of the edge whose org server block is at `baseUrl` and whose secret is `probeSecret`
   * (this directory's edge: `edgeUrl` and its secret; a registered edge: its own). `fresh`: each
   * probe on a new connection, for reload mode, where a kept-alive one would stay with one
   * worker (of one generation); in lua mode every worker reads one table and a kept-alive
   * connection proves as much.
   */
  const probesAt = (baseUrl: string, probeSecret: string, connection: "fresh" | "kept" = "fresh") => {
    const probeUrl = baseUrl + PROBE_PATH
    const probeTimeout = Duration.min(PROBE_TIMEOUT, callTimeout)
    /** One request through the org server block, answered by nginx: "{allocation served} {worker pid}". */
    const probe = (organizationId: OrganizationId) =>
      http.execute(
        HttpClientRequest.get(probeUrl).pipe(
          HttpClientRequest.setHeaders({
            host: orgHostname(organizationId, domain),
            ...(connection === "fresh" ? { connection: "close" } : {}),
            [PROBE_SECRET_HEADER]: probeSecret
          })
        )
      ).pipe(
        // Read whatever the status: an answer left unread would hold its kept-alive connection.
        Effect.flatMap((response) => Effect.map(response.text, (body) => ({ status: response.status, body }))),
        Effect.mapError((cause) => new NginxError({ operation: "probe", reason: cause.message, cause })),
        Effect.flatMap(({ status, body }) =>
          status === 200 ? Effect.succeed(body) : Effect.fail(new NginxError({ operation: "probe", reason: `HTTP ${status}` }))
        ),
        Effect.map(parseProbe),
        Effect.timeoutFail({
          duration: probeTimeout,
          onTimeout: () => new NginxError({ operation: "probe", reason: `no answer within ${Duration.format(probeTimeout)}` })
        })
      )

    /** The allocation nginx serves for the org right now, or null. */
    const probeRoute = (organizationId: OrganizationId) =>
      probe(organizationId).pipe(
        Effect.flatMap(({ allocation }) =>
          allocation === ""
            ? Effect.succeed(null)
            : Schema.decodeUnknown(AllocationId)(allocation).pipe(
              Effect.mapError((cause) => new NginxError({ operation: "probe", reason: `unreadable answer: ${allocation.slice(0, 80)}`, cause }))
            )
        ),
        Effect.withSpan("Nginx.probeRoute")
      )

    /** Fails with what nginx serves unless `accept` holds of it: for retrying until it does. */
    const probeUntil = (organizationId: OrganizationId, accept: (served: string) => boolean) =>
      probe(organizationId).pipe(
        Effect.filterOrFail(
          (answer) => accept(answer.allocation),
          (answer) =>
            new NginxError({
              operation: "probe",
              reason: `nginx serves ${answer.allocation === "" ? "no route" : `allocation ${answer.allocation}`}`
            })
        )
      )
    return { probe, probeRoute, probeUntil }
  }
  const { probe, probeRoute, probeUntil } = probesAt(edgeUrl, secret)

  return {
    config,
    domain,
    listen: nginxListen,
    edgeUrl,
    confDir,
    edge,
    secret,
    currentTls,
    callTimeout,
    fs,
    path,
    http,
    fail,
    underEdgeLock,
    writeAtomically,
    signalReload,
    probesAt,
    probe,
    probeRoute,
    probeUntil
  }
})

export type EdgeKit = Effect.Effect.Success<typeof makeEdgeKit>

/** Headers whose values never reach a span: the platform's defaults and the edge secret's. */
const SECRET_HEADERS: ReadonlyArray<string> = ["authorization", "cookie", "set-cookie", "x-api-key", PROBE_SECRET_HEADER]

/** One probe's bound: nginx answers it itself, in microseconds, unless it is stalled. */
const PROBE_TIMEOUT = Duration.seconds(2)

/** The probe answers "{allocation id} {worker pid}"; the id is empty when no route matches. */
const parseProbe = (body: string) => {
  const [allocation = "", pid = "0"] = body.split(" ")
  return { allocation: allocation.trim(), pid: Number(pid) }
}

export const lastLines = (text: string) => text.split("\n").slice(-3).join(" | ") || "no output"
