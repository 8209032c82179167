import { Either, Option, ParseResult, Schema } from "effect"

// UUIDs are accepted in any case and stored lowercase: they become DNS names and file names,
// where "A" and "a" must not make two different orgs.
const LowercaseUuid = Schema.Lowercase.pipe(Schema.compose(Schema.UUID))

export const OrganizationId = LowercaseUuid.pipe(Schema.brand("OrganizationId"))
export type OrganizationId = typeof OrganizationId.Type

export const GatewayId = LowercaseUuid.pipe(Schema.brand("GatewayId"))
export type GatewayId = typeof GatewayId.Type

export const AllocationId = LowercaseUuid.pipe(Schema.brand("AllocationId"))
export type AllocationId = typeof AllocationId.Type

/** An nginx edge: the id of its edge file (the local one), or the registry's (POST /edges). */
export const EdgeId = LowercaseUuid.pipe(Schema.brand("EdgeId"))
export type EdgeId = typeof EdgeId.Type

/**
 * An allocation's route generation, taken from a Postgres sequence at claim time: a newer
 * allocation of an org has a greater one, so nginx's route table can refuse a stale write.
 * (Postgres sends bigint as text; a generation stays far below 2^53.)
 */
export const Generation = Schema.NumberFromString.pipe(Schema.int(), Schema.nonNegative(), Schema.brand("Generation"))
export type Generation = typeof Generation.Type

// ---------------------------------------------------------------------------------------------
// Upstreams: one gateway process, one spelling
// ---------------------------------------------------------------------------------------------

/** The normal form of a part of an upstream, or why it is refused. */
type Normalised<A> = Either.Either<A, string>

const refuse = (reason: string): Normalised<never> => Either.left(reason)

const hostnamePattern = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/

/** 1-65535 without leading zeros: nginx reads `09001` as 9001. */
const normalisePort = (port: string): Normalised<string> => {
  if (port === "") return refuse("the port is missing")
  if (!/^\d+$/.test(port)) return refuse(`port "${port}" is not a number`)
  const digits = port.replace(/^0+/, "")
  return digits === "" || digits.length > 5 || Number(digits) > 65535
    ? refuse(`port ${port} is not in 1-65535`)
    : Either.right(digits)
}

/**
 * Four decimal octets. A leading zero does not make an octet octal: nginx reads `010` as 10 (and
 * `127.000.000.001` as 127.0.0.1), so that is what the address is.
 */
const ipv4Octets = (text: string): Normalised<ReadonlyArray<number>> => {
  const parts = text.split(".")
  const octets = parts.map((part) => (/^\d+$/.test(part) ? Number(part) : Number.NaN))
  return parts.length === 4 && octets.every((octet) => octet <= 255)
    ? Either.right(octets)
    : refuse(`${text} is not an IPv4 address (four numbers 0-255)`)
}

/** 0.x.x.x is "this network", and 0.0.0.0 any address: on Linux a connection to it reaches this host. */
const gatewayIpv4 = (octets: ReadonlyArray<number>): Normalised<string> => {
  const address = octets.join(".")
  return octets[0] === 0
    ? refuse(`${address} is not a gateway's address (0.x.x.x is "this network", 0.0.0.0 any address)`)
    : Either.right(address)
}

/** Groups of 1-4 hex digits between colons ("" is none). */
const hexGroups = (text: string): Normalised<ReadonlyArray<number>> => {
  const parts = text === "" ? [] : text.split(":")
  const bad = parts.find((part) => !/^[0-9a-f]{1,4}$/.test(part))
  if (bad === undefined) return Either.right(parts.map((part) => parseInt(part, 16)))
  return refuse(bad === "" ? "not an IPv6 address (a stray colon)" : `not an IPv6 address (group "${bad}" is not 1-4 hex digits)`)
}

/** The last 32 bits written as IPv4 (`::ffff:1.2.3.4`) as two hex groups (`::ffff:102:304`). */
const embeddedIpv4AsHex = (text: string): Normalised<string> => {
  const lastColon = text.lastIndexOf(":")
  const tail = text.slice(lastColon + 1)
  if (!tail.includes(".")) return Either.right(text)
  return Either.map(ipv4Octets(tail), ([a = 0, b = 0, c = 0, d = 0]) =>
    `${text.slice(0, lastColon + 1)}${(a * 256 + b).toString(16)}:${(c * 256 + d).toString(16)}`)
}

/** The 8 groups of an IPv6 address; "::" stands for one or more zero groups (RFC 4291). */
const ipv6Groups = (text: string): Normalised<ReadonlyArray<number>> =>
  Either.gen(function*() {
    if (text.includes("%")) return yield* refuse(`zone ids (${text.slice(text.indexOf("%"))}) are not supported`)
    if (!/^[0-9a-f:.]+$/.test(text) || !text.includes(":")) return yield* refuse("not an IPv6 address")
    const halves = (yield* embeddedIpv4AsHex(text)).split("::")
    if (halves.length > 2) return yield* refuse(`not an IPv6 address ("::" twice)`)
    const head = yield* hexGroups(halves[0] ?? "")
    if (halves.length === 1) return head.length === 8 ? head : yield* refuse("not an IPv6 address (not 8 groups)")
    const tail = yield* hexGroups(halves[1] ?? "")
    const zeros = 8 - head.length - tail.length
    if (zeros < 1) return yield* refuse("not an IPv6 address (more than 8 groups)")
    return [...head, ...Array.from({ length: zeros }, () => 0), ...tail]
  }).pipe(Either.mapLeft((reason) => `[${text}]: ${reason}`))

/** Where the longest run of two or more zero groups starts, the first of equal runs (RFC 5952). */
const longestZeroRun = (groups: ReadonlyArray<number>): { readonly start: number; readonly length: number } => {
  let best = { start: -1, length: 0 }
  let start = -1
  groups.forEach((group, i) => {
    if (group !== 0) start = -1
    else {
      if (start < 0) start = i
      if (i - start + 1 > best.length) best = { start, length: i - start + 1 }
    }
  })
  return best.length >= 2 ? best : { start: -1, length: 0 }
}

/** RFC 5952: lowercase hex without leading zeros, the longest zero run (2 groups or more) as "::". */
const formatIpv6 = (groups: ReadonlyArray<number>): string => {
  const hex = groups.map((group) => group.toString(16))
  const run = longestZeroRun(groups)
  return run.length === 0
    ? hex.join(":")
    : `${hex.slice(0, run.start).join(":")}::${hex.slice(run.start + run.length).join(":")}`
}

/**
 * A bracketed IPv6 address: IPv4-mapped ones (`::ffff:a.b.c.d`) are the IPv4 address they map,
 * others compressed per RFC 5952. The unspecified address and IPv4-compatible ones (first 96 bits
 * zero, deprecated; nothing routes them) are no gateway's address.
 */
const normaliseIpv6 = (text: string): Normalised<string> =>
  Either.flatMap(ipv6Groups(text), (groups) => {
    const firstFiveZero = groups.slice(0, 5).every((group) => group === 0)
    const low = groups.slice(6).flatMap((group) => [group >> 8, group & 0xff])
    if (groups.every((group) => group === 0)) return refuse(`[${text}] is the unspecified address (::), not a gateway's`)
    if (firstFiveZero && groups[5] === 0xffff) return gatewayIpv4(low)
    const loopback = groups.slice(0, 7).every((group) => group === 0) && groups[7] === 1
    if (firstFiveZero && groups[5] === 0 && !loopback) {
      return refuse(`[${text}] is an IPv4-compatible IPv6 address (deprecated, unroutable): write the IPv4 address`)
    }
    return Either.right(`[${formatIpv6(groups)}]`)
  })

/** A host: an IPv4 address, a bracketed IPv6 address, or a host name (nginx resolves it). */
const normaliseHost = (host: string): Normalised<string> => {
  const lower = host.toLowerCase()
  if (lower === "") return refuse("the host is missing")
  if (lower.startsWith("[") && lower.endsWith("]")) return normaliseIpv6(lower.slice(1, -1))
  if (/[[\]]/.test(lower)) return refuse(`"${host}" is not a host ([IPv6] goes in brackets)`)
  const name = lower.replace(/\.$/, "")
  if (name === "unix") return refuse(`the host "${host}" is not allowed: nginx reads "unix:" as a unix socket path`)
  if (name.includes(":")) {
    const ipv6 = /^[\da-f:.]+$/.test(name)
    return refuse(ipv6 ? `${host} must be written in brackets ([IPv6]:port)` : `"${host}" is not a host name`)
  }
  if (/^[\d.]+$/.test(name)) return Either.flatMap(ipv4Octets(name), gatewayIpv4)
  return hostnamePattern.test(name) ? Either.right(name) : refuse(`"${host}" is not a host name`)
}

const splitHostPort = (value: string): Normalised<{ readonly host: string; readonly port: string }> => {
  const close = value.startsWith("[") ? value.indexOf("]") : -1
  // An IPv6 address holds colons of its own: the port follows the bracket.
  const colon = close >= 0 ? close + 1 : value.lastIndexOf(":")
  if (value.slice(colon, colon + 1) !== ":") {
    return refuse(close >= 0 ? "[IPv6] must be followed by :port" : "the port is missing")
  }
  return Either.right({ host: value.slice(0, colon), port: value.slice(colon + 1) })
}

/**
 * `host:port` in its one spelling, or why it is refused. Aliases of one address are one spelling
 * (`127.0.0.1:09001`, `127.000.000.001:9001`, `[::ffff:7f00:1]:9001` are `127.0.0.1:9001`), so
 * the pool's unique index sees one gateway process once. Host names are lowercase, without a
 * trailing dot (`LOCALHOST.:9002` is `localhost:9002`).
 */
export const normaliseUpstream = (value: string): Either.Either<string, string> =>
  Either.gen(function*() {
    // nginx reads "unix:" as a socket path, whatever follows.
    if (/^unix:/i.test(value)) return yield* refuse(`"unix:" is not allowed: nginx reads it as a unix socket path`)
    const { host, port } = yield* splitHostPort(value)
    const normalHost = yield* normaliseHost(host)
    const normalPort = yield* normalisePort(port)
    return `${normalHost}:${normalPort}`
  }).pipe(Either.mapLeft((reason) => `upstream must be host:port (IPv4, [IPv6] or host name, port 1-65535): ${reason}`))

/** True for an upstream `normaliseUpstream` accepts (in any spelling). */
export const isUpstream = (value: string): boolean => Either.isRight(normaliseUpstream(value))

/** True for an upstream in its one spelling. */
const isNormalUpstream = (value: string): boolean => {
  const normal = normaliseUpstream(value)
  return Either.isRight(normal) && normal.right === value
}

/**
 * A gateway's address, `host:port`, decoded to its one spelling (see `normaliseUpstream`); a
 * refused one fails with the reason. Only these characters ever reach an nginx file, so the
 * validation is also the injection guard.
 */
export const Upstream = Schema.transformOrFail(Schema.String, Schema.String, {
  strict: true,
  decode: (value, _, ast) =>
    Either.match(normaliseUpstream(value), {
      onLeft: (reason) => ParseResult.fail(new ParseResult.Type(ast, value, reason)),
      onRight: ParseResult.succeed
    }),
  encode: ParseResult.succeed
}).pipe(
  Schema.maxLength(261),
  Schema.filter(isNormalUpstream, { message: () => "upstream must be in its normal form (see normaliseUpstream)" }),
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
