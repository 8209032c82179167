import { HttpClient, type HttpClientError, HttpClientRequest, type HttpClientResponse } from "@effect/platform"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Clock, Context, Data, Duration, Effect, Either, Layer, Option, Redacted, Schedule, Schema } from "effect"
import { DnsProviderConfig, PowerDnsConfig, Settings } from "../config.ts"
import { makeGroupCommitPerMember } from "../lib/GroupCommit.ts"
import { neverDelivered } from "../lib/transport.ts"
import { type ChangedNothingMarker, ChangedNothingTypeId } from "../domain/changedNothing.ts"
import { type OrganizationId, orgHostname, parseOrgLabel } from "../domain/ids.ts"

export class DnsError extends Data.TaggedError("DnsError")<{
  readonly operation: "upsert" | "remove" | "list" | "check"
  readonly reason: string
  readonly cause?: unknown
  /** Known to have changed nothing: PowerDNS refused the change (4xx), or it was never delivered. */
  readonly noEffect?: boolean
}> implements ChangedNothingMarker {
  get [ChangedNothingTypeId]() {
    return this.noEffect === true
  }
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
  /** Whether the provider answers (readiness): a cheap request, bounded like every outside call. */
  readonly check: Effect.Effect<void, DnsError>
}>() {}

/** PowerDNS's error answer. */
const PowerDnsError = Schema.parseJson(Schema.Struct({ error: Schema.String }))

const ZoneRrsets = Schema.Struct({
  rrsets: Schema.Array(Schema.Struct({ name: Schema.String, type: Schema.String }))
})

/** Why one PATCH failed, before it is told to each of its members. */
class PatchFailed extends Data.TaggedError("PatchFailed")<{
  readonly reason: string
  readonly cause?: unknown
  readonly noEffect: boolean
  /** PowerDNS refused the rrsets themselves: the batch without the member at fault may pass. */
  readonly byMember: boolean
}> {}

/**
 * 422 (PowerDNS's ApiException: a conflict, a bad name or content) and 400 (a malformed rrset)
 * judge what was sent. 401, 403, 404 (key, zone) would refuse any batch: splitting cannot help.
 */
const refusedRrsets = (status: number): boolean => status === 422 || status === 400

/** What the start-up look at the zone reads: whether PowerDNS rectifies it on every API change, and whether it is signed. */
const ZoneSettings = Schema.Struct({ api_rectify: Schema.optional(Schema.Boolean), dnssec: Schema.optional(Schema.Boolean) })

/**
 * PowerDNS's HTTP API: one A rrset per org, REPLACEd on upsert and DELETEd on remove (204 both),
 * through the HttpClient it is given (tests wrap one to watch the PATCHes).
 */
export const DnsPowerDnsOver = Layer.scoped(
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

    // PowerDNS rectifies the whole zone on every API change unless the zone says not to
    // (default-api-rectify=yes since 4.2): each start's PATCH then lists every record, and starts
    // slow down as the zone grows. A zone without DNSSEC needs no rectify: told once at start-up.
    yield* client.get(`${zoneUrl}?rrsets=false`).pipe(
      Effect.flatMap((response) => response.json),
      Effect.flatMap(Schema.decodeUnknown(ZoneSettings)),
      Effect.flatMap((zone) =>
        zone.api_rectify === true && zone.dnssec !== true
          ? Effect.logWarning(
            `PowerDNS rectifies zone ${config.zone} on every API change (API-RECTIFY on, no DNSSEC), so every start's DNS step ` +
              `grows with the zone: turn it off (pdnsutil set-meta ${config.zone} API-RECTIFY 0, or PUT the zone with ` +
              `{"api_rectify": false}); a zone without DNSSEC does not need it`
          )
          : Effect.void
      ),
      Effect.scoped,
      Effect.timeout(callTimeout),
      // PowerDNS away at start-up is the readiness check's to tell.
      Effect.catchAllCause((cause) => Effect.logDebug("could not read the zone's API-RECTIFY setting", cause)),
      Effect.forkScoped
    )

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

    /** One PATCH; `within` is what is left of its batch's time. */
    const patch = (changes: ReadonlyArray<RrsetChange>, within: Duration.Duration, split: boolean) =>
      client.execute(
        HttpClientRequest.patch(zoneUrl).pipe(
          HttpClientRequest.bodyUnsafeJson({ rrsets: changes.map((change) => change.rrset) })
        )
      ).pipe(
        Effect.retry({ while: transient, schedule: Schedule.exponential(Duration.millis(25)), times: 3 }),
        Effect.asVoid,
        Effect.catchAll((cause) =>
          cause._tag === "ResponseError"
            ? Effect.flatMap(refusal(cause.response), (reason) =>
              new PatchFailed({
                reason,
                cause,
                noEffect: cause.response.status < 500,
                byMember: refusedRrsets(cause.response.status)
              }))
            : new PatchFailed({ reason: cause.message, cause, noEffect: neverDelivered(cause), byMember: false })
        ),
        Effect.timeoutFail({
          duration: within,
          onTimeout: () =>
            new PatchFailed({
              reason: `PowerDNS did not answer within ${Duration.format(callTimeout)}`,
              noEffect: false,
              byMember: false
            })
        }),
        Effect.withSpan("Dns.patch", { attributes: { "dns.rrsets": changes.length, "dns.split": split } })
      )

    /**
     * How to split a batch PowerDNS refused. PowerDNS checks the rrsets one by one and refuses at
     * the first bad one, naming it ("RRset org-….{DOMAIN}. IN A: Conflicts with pre-existing
     * RRset"). When the refusal names exactly one member, that member goes alone and the rest
     * together: 2 more PATCHes per bad member, whatever the batch's size (batches grow with load,
     * so member by member would cost n). Otherwise (no member named, or several) bisect: about
     * 2*log2(n) more per bad member. A member only ever gets a refusal of a PATCH that held it
     * alone, so a wrong guess costs PATCHes, never a wrong answer.
     */
    const divide = <M extends { readonly change: RrsetChange }>(members: ReadonlyArray<M>, reason: string) => {
      const said = reason.toLowerCase()
      const named = members.filter((member) => said.includes(member.change.rrset.name.toLowerCase()))
      const [culprit] = named
      if (named.length === 1 && culprit !== undefined) return [members.filter((member) => member !== culprit), [culprit]]
      const half = Math.ceil(members.length / 2)
      return [members.slice(0, half), members.slice(half)]
    }

    /**
     * A batch's PATCH, answered member by member. A refusal of the rrsets (400, 422) is some
     * member's: the batch is split and PATCHed again until each refusal has one member, and
     * everyone else gets their own PATCH's answer. A 5xx, a transport error or a timeout is no
     * member's fault: after the retries it is every member of that PATCH's answer, unsplit
     * (splitting would only send more requests to a server that is not answering). All PATCHes
     * of a batch share one call's time, so a dns change stays one bounded outside call.
     */
    const flush = Effect.fn("Dns.batch")(function*(changes: ReadonlyArray<RrsetChange>) {
      interface Member {
        readonly index: number
        readonly change: RrsetChange
      }
      const results: Array<Either.Either<void, DnsError> | undefined> = changes.map(() => undefined)
      const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(callTimeout)
      let patches = 0

      const settle = (members: ReadonlyArray<Member>, split: boolean): Effect.Effect<void> =>
        Effect.gen(function*() {
          const left = deadline - (yield* Clock.currentTimeMillis)
          if (left > 0) patches++
          const outcome = yield* Effect.either(
            left > 0
              ? patch(members.map((member) => member.change), Duration.millis(left), split)
              : new PatchFailed({
                reason: `not sent: PowerDNS refused part of its batch, and splitting it took over ${Duration.format(callTimeout)}`,
                noEffect: true,
                byMember: false
              })
          )
          if (Either.isLeft(outcome) && outcome.left.byMember && members.length > 1) {
            for (const part of divide(members, outcome.left.reason)) yield* settle(part, true)
            return
          }
          for (const member of members) {
            results[member.index] = Either.mapLeft(outcome, (failure) =>
              new DnsError({
                operation: member.change.operation,
                reason: failure.reason,
                cause: failure.cause,
                noEffect: failure.noEffect
              }))
          }
        })

      yield* settle(changes.map((change, index) => ({ index, change })), false)
      yield* Effect.annotateCurrentSpan({
        "dns.rrsets": changes.length,
        "dns.split": patches > 1,
        "dns.patches": patches,
        "dns.failed": results.filter((result) => result !== undefined && Either.isLeft(result)).length
      })
      return yield* Effect.forEach(results, (result, index) =>
        result === undefined ? Effect.dieMessage(`Dns: member ${index} of a batch got no answer`) : Effect.succeed(result))
    })

    /**
     * Concurrent changes share one PATCH (it takes a list of rrsets, applied atomically): one
     * request instead of many, and no writers racing each other in PowerDNS's backend. Each
     * member gets its own answer (`flush`), so one org's refused record fails that org alone.
     */
    const submit = yield* makeGroupCommitPerMember<RrsetChange, void, DnsError>({
      flush,
      onInterrupt: () => new DnsError({ operation: "upsert", reason: "interrupted: shutting down" }),
      canJoin: (batch, change) => !batch.some((other) => other.rrset.name === change.rrset.name)
    })
    const change = (operation: RrsetChange["operation"], rrset: RrsetChange["rrset"]) =>
      submit({ operation, rrset }).pipe(
        // Every answer names its member's operation, but the shutdown error is made for no one.
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
      ),
      // The zone's metadata, not its records: a zone of 100,000 records costs the same.
      check: client.get(`${zoneUrl}?rrsets=false`).pipe(
        Effect.scoped,
        Effect.asVoid,
        Effect.timeout(callTimeout),
        Effect.mapError((cause) => new DnsError({ operation: "check", reason: cause.message, cause }))
      )
    })
  })
)

/**
 * PowerDNS's HTTP API over Node's HTTP client. Not kept alive: PowerDNS's webserver closes every
 * connection after its answer (measured: one connect per call with a kept-alive agent).
 */
export const DnsPowerDns = DnsPowerDnsOver.pipe(Layer.provide(NodeHttpClient.layer))

/** Wildcard DNS: nothing to create or delete per org. */
export const DnsNone = Layer.succeed(
  Dns,
  Dns.of({
    provider: "none",
    upsert: () => Effect.void,
    remove: () => Effect.void,
    listOrgRecords: Effect.succeed([]),
    check: Effect.void
  })
)

/** Picks the provider from `DNS_PROVIDER` (`powerdns`, the default, or `none`). */
export const DnsLive = Layer.unwrapEffect(
  Effect.map(DnsProviderConfig, (provider) => (provider === "none" ? DnsNone : DnsPowerDns))
)
