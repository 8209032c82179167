import { HttpClient, type HttpClientError, HttpClientRequest, type HttpClientResponse } from "@effect/platform"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Context, Data, Duration, Effect, Layer, Option, Redacted, Schedule, Schema } from "effect"
import { DnsProviderConfig, PowerDnsConfig, Settings } from "../config.ts"
import { makeGroupCommit } from "../lib/GroupCommit.ts"
import { transportCode } from "../lib/transport.ts"
import { type OrganizationId, orgHostname, parseOrgLabel } from "../domain/ids.ts"

export class DnsError extends Data.TaggedError("DnsError")<{
  readonly operation: "upsert" | "remove" | "list"
  readonly reason: string
  readonly cause?: unknown
  /** Known to have changed nothing: PowerDNS refused the change (4xx), or it was never delivered. */
  readonly noEffect?: boolean
}> {
  override get message() {
    return `PowerDNS ${this.operation}: ${this.reason}`
  }
}

/**
 * The org's DNS name. `upsert` and `remove` are keyed by the org and idempotent, so an undo can
 * run whether or not a timed-out call took effect.
 */
export class Dns extends Context.Tag("Dns")<Dns, {
  /** `none` means wildcard DNS: the `dns` step is journaled as skipped. */
  readonly provider: "powerdns" | "none"
  readonly upsert: (organizationId: OrganizationId) => Effect.Effect<void, DnsError>
  readonly remove: (organizationId: OrganizationId) => Effect.Effect<void, DnsError>
  /** Orgs that have an `org-{uuid}` A record in the zone (foreign records are not listed). */
  readonly listOrgRecords: Effect.Effect<ReadonlyArray<OrganizationId>, DnsError>
}>() {}

/** PowerDNS's error answer. */
const PowerDnsError = Schema.parseJson(Schema.Struct({ error: Schema.String }))

const ZoneRrsets = Schema.Struct({
  rrsets: Schema.Array(Schema.Struct({ name: Schema.String, type: Schema.String }))
})

/** A request that never reached the server: refused or unresolvable before anything was sent. */
const neverDelivered = (error: HttpClientError.HttpClientError): boolean => {
  const code = transportCode(error)
  return code === "ECONNREFUSED" || code === "ENOTFOUND"
}

/** PowerDNS's HTTP API: one A rrset per org, REPLACEd on upsert and DELETEd on remove (204 both). */
export const DnsPowerDns = Layer.scoped(
  Dns,
  Effect.gen(function*() {
    const config = yield* PowerDnsConfig
    const { domain, limits } = yield* Settings
    const callTimeout = Duration.millis(limits.outsideCallMs)
    const zoneUrl = `${config.apiUrl}/api/v1/servers/${encodeURIComponent(config.serverId)}/zones/${
      encodeURIComponent(config.zone)
    }`
    const client = (yield* HttpClient.HttpClient).pipe(
      HttpClient.mapRequest(HttpClientRequest.setHeader("X-API-Key", Redacted.value(config.apiKey))),
      HttpClient.filterStatusOk
    )
    const fqdn = (organizationId: OrganizationId) => `${orgHostname(organizationId, domain)}.`

    interface RrsetChange {
      readonly operation: "upsert" | "remove"
      readonly rrset: { readonly name: string } & Record<string, unknown>
    }

    /** What PowerDNS said when it refused: its status and its `{"error": ...}` (read, so the connection is free again). */
    const refusal = (response: HttpClientResponse.HttpClientResponse) =>
      response.text.pipe(
        Effect.map((body) => {
          const said = Schema.decodeOption(PowerDnsError)(body).pipe(Option.map((answer) => answer.error), Option.getOrElse(() => body))
          return `HTTP ${response.status}${said.trim() === "" ? "" : `: ${said.trim().slice(0, 300)}`}`
        }),
        Effect.orElseSucceed(() => `HTTP ${response.status}`)
      )

    // 5xx (e.g. SQLite's "database is locked") and transport errors are worth a quick retry.
    const transient = (error: HttpClientError.HttpClientError) =>
      error._tag === "RequestError" || error.response.status >= 500

    const patch = (changes: ReadonlyArray<RrsetChange>) =>
      client.execute(
        HttpClientRequest.patch(zoneUrl).pipe(
          HttpClientRequest.bodyUnsafeJson({ rrsets: changes.map((change) => change.rrset) })
        )
      ).pipe(
        Effect.retry({ while: transient, schedule: Schedule.exponential(Duration.millis(25)), times: 3 }),
        Effect.asVoid,
        Effect.catchAll((cause) =>
          Effect.flatMap(
            cause._tag === "ResponseError" ? refusal(cause.response) : Effect.succeed(cause.message),
            (reason) =>
              new DnsError({
                operation: changes[0]?.operation ?? "upsert",
                reason,
                cause,
                noEffect: cause._tag === "ResponseError" ? cause.response.status < 500 : neverDelivered(cause)
              })
          )
        ),
        Effect.timeoutFail({
          duration: callTimeout,
          onTimeout: () =>
            new DnsError({
              operation: changes[0]?.operation ?? "upsert",
              reason: `PowerDNS did not answer within ${Duration.format(callTimeout)}`
            })
        }),
        Effect.withSpan("Dns.patch", { attributes: { "dns.rrsets": changes.length } })
      )

    /**
     * Concurrent changes share one PATCH (it takes a list of rrsets, applied atomically): one
     * request instead of many, and no writers racing each other in PowerDNS's backend.
     */
    const submit = yield* makeGroupCommit<RrsetChange, DnsError>({
      flush: patch,
      onInterrupt: () => new DnsError({ operation: "upsert", reason: "interrupted: shutting down" }),
      canJoin: (batch, change) => !batch.some((other) => other.rrset.name === change.rrset.name)
    })
    const change = (operation: RrsetChange["operation"], rrset: RrsetChange["rrset"]) =>
      submit({ operation, rrset }).pipe(
        Effect.mapError((error) => (error.operation === operation ? error : new DnsError({ ...error, operation })))
      )

    return Dns.of({
      provider: "powerdns",
      upsert: Effect.fn("Dns.upsert")(function*(organizationId: OrganizationId) {
        yield* change("upsert", {
          name: fqdn(organizationId),
          type: "A",
          ttl: config.ttl,
          changetype: "REPLACE",
          records: [{ content: config.recordIp, disabled: false }]
        })
      }),
      remove: Effect.fn("Dns.remove")(function*(organizationId: OrganizationId) {
        yield* change("remove", { name: fqdn(organizationId), type: "A", changetype: "DELETE" })
      }),
      listOrgRecords: client.get(zoneUrl).pipe(
        Effect.flatMap((response) => response.json),
        Effect.flatMap(Schema.decodeUnknown(ZoneRrsets)),
        Effect.map(({ rrsets }) =>
          rrsets.flatMap((rrset) => {
            const suffix = `.${domain}.`
            if (rrset.type !== "A" || !rrset.name.endsWith(suffix)) return []
            const org = parseOrgLabel(rrset.name.slice(0, -suffix.length))
            return org === undefined ? [] : [org]
          })
        ),
        Effect.timeout(callTimeout),
        Effect.mapError((cause) => new DnsError({ operation: "list", reason: cause.message, cause })),
        Effect.withSpan("Dns.listOrgRecords")
      )
    })
  })
).pipe(Layer.provide(NodeHttpClient.layer))

/** Wildcard DNS: nothing to create or delete per org. */
export const DnsNone = Layer.succeed(
  Dns,
  Dns.of({
    provider: "none",
    upsert: () => Effect.void,
    remove: () => Effect.void,
    listOrgRecords: Effect.succeed([])
  })
)

/** Picks the provider from `DNS_PROVIDER` (`powerdns`, the default, or `none`). */
export const DnsLive = Layer.unwrapEffect(
  Effect.map(DnsProviderConfig, (provider) => (provider === "none" ? DnsNone : DnsPowerDns))
)
