import { Option, Schema } from "effect"

// UUIDs are accepted in any case and stored lowercase: they become DNS names and file names,
// where "A" and "a" must not make two different orgs.
const LowercaseUuid = Schema.Lowercase.pipe(Schema.compose(Schema.UUID))

export const OrganizationId = LowercaseUuid.pipe(Schema.brand("OrganizationId"))
export type OrganizationId = typeof OrganizationId.Type

export const GatewayId = LowercaseUuid.pipe(Schema.brand("GatewayId"))
export type GatewayId = typeof GatewayId.Type

export const AllocationId = LowercaseUuid.pipe(Schema.brand("AllocationId"))
export type AllocationId = typeof AllocationId.Type

/**
 * An allocation's route generation, taken from a Postgres sequence at claim time: a newer
 * allocation of an org has a greater one, so nginx's route table can refuse a stale write.
 * (Postgres sends bigint as text; a generation stays far below 2^53.)
 */
export const Generation = Schema.NumberFromString.pipe(Schema.int(), Schema.nonNegative(), Schema.brand("Generation"))
export type Generation = typeof Generation.Type

const ipv4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/
const hostname = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i
const ipv6 = /^\[[0-9a-f:.]{2,45}\]$/i

/** True for `host:port` where host is an IPv4 address, a bracketed IPv6 address or a hostname. */
export const isUpstream = (value: string): boolean => {
  const colon = value.lastIndexOf(":")
  if (colon <= 0) return false
  const host = value.slice(0, colon)
  const port = value.slice(colon + 1)
  if (!/^\d{1,5}$/.test(port)) return false
  const portNumber = Number(port)
  if (portNumber < 1 || portNumber > 65535) return false
  return ipv4.test(host) || ipv6.test(host) || (hostname.test(host) && !/^[\d.]+$/.test(host))
}

/** `host:port` as stored and compared: the host lowercase, without a trailing dot. */
export const normaliseUpstream = (value: string): string => {
  const colon = value.lastIndexOf(":")
  return colon <= 0 ? value : `${value.slice(0, colon).toLowerCase().replace(/\.$/, "")}${value.slice(colon)}`
}

/**
 * A gateway's address, `host:port`, normalised (`LOCALHOST.:9002` is `localhost:9002`): one
 * gateway process has one spelling. Only these characters ever reach an nginx file, so the
 * validation is also the injection guard.
 */
export const Upstream = Schema.transform(Schema.String, Schema.String, {
  strict: true,
  decode: normaliseUpstream,
  encode: (value) => value
}).pipe(
  Schema.maxLength(261),
  Schema.filter(isUpstream, { message: () => "upstream must be host:port (IPv4, [IPv6] or hostname, port 1-65535)" }),
  Schema.brand("Upstream")
)
export type Upstream = typeof Upstream.Type

export const GatewayName = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, {
    message: () => "name must be 1-63 characters of letters, digits, '.', '_' or '-'"
  }),
  Schema.brand("GatewayName")
)
export type GatewayName = typeof GatewayName.Type

/** The hostname an org's gateway is reached at: `org-{uuid}.{domain}`. */
export const orgHostname = (organizationId: OrganizationId, domain: string): string =>
  `org-${organizationId}.${domain}`

/** Recognises a hostname label or file stem the service owns, returning the org id. */
export const parseOrgLabel = (label: string): OrganizationId | undefined => {
  const match = /^org-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/.exec(label)
  return match === null ? undefined : Option.getOrUndefined(Schema.decodeUnknownOption(OrganizationId)(match[1]))
}
