// Upstream identity: every spelling of one gateway process decodes to one upstream (so the pool's
// unique index sees it once), and what is not a TCP address nginx can reach is refused, saying why.
// The SQL twin of this normaliser (migration 0007) is checked against it in test/db/upstream.test.ts.
import { describe, expect, it } from "@effect/vitest"
import { Either, Schema } from "effect"
import { isUpstream, normaliseUpstream, Upstream } from "../../src/domain/ids.ts"

/** The one spelling, then spellings of the same address that must decode to it. */
const ALIASES: ReadonlyArray<readonly [string, ReadonlyArray<string>]> = [
  ["127.0.0.1:9001", [
    "127.0.0.1:9001",
    "127.0.0.1:09001",
    "127.0.0.1:0000009001",
    "127.000.000.001:9001",
    "127.0.0.01:9001",
    "127.0.0.1.:9001",
    "[::ffff:127.0.0.1]:9001",
    "[::FFFF:127.0.0.1]:9001",
    "[::ffff:7f00:1]:9001",
    "[::FFFF:7F00:0001]:9001",
    "[0:0:0:0:0:ffff:7f00:1]:9001",
    "[0000:0000:0000:0000:0000:ffff:127.000.000.001]:09001",
    "[::0:ffff:127.0.0.1]:9001"
  ]],
  // Leading zeros are decimal, as nginx reads them: 010 is 10, not 8.
  ["10.0.0.8:80", ["010.0.0.8:80", "10.00.000.8:080", "[::ffff:a00:8]:80", "[::ffff:010.0.0.08]:80"]],
  ["192.168.1.255:65535", ["192.168.001.255:065535", "[::ffff:c0a8:1ff]:65535"]],
  ["[::1]:9001", ["[::1]:9001", "[0:0:0:0:0:0:0:1]:9001", "[::0.0.0.1]:9001", "[0000::0001]:09001", "[::0:1]:9001"]],
  ["[2001:db8::1]:443", [
    "[2001:DB8::1]:443",
    "[2001:0db8:0000:0000:0000:0000:0000:0001]:443",
    "[2001:db8:0:0:0:0:0:1]:0443",
    "[2001:db8::0:1]:443",
    "[2001:db8:0::1]:443"
  ]],
  // RFC 5952: the first of two equally long zero runs is compressed...
  ["[2001:db8::1:0:0:1]:443", ["[2001:db8:0:0:1:0:0:1]:443", "[2001:db8:0:0:1::1]:443"]],
  // ... the longest one otherwise ...
  ["[1:0:0:2::3]:8080", ["[1:0:0:2:0:0:0:3]:8080", "[1::2:0:0:0:3]:8080"]],
  ["[1::2:0:0:3]:8080", ["[1:0:0:0:2:0:0:3]:8080"]],
  // ... and a single zero group never.
  ["[2001:db8:0:1:1:1:1:1]:443", ["[2001:db8::1:1:1:1:1]:443", "[2001:DB8:0000:1:1:1:1:1]:443"]],
  ["[0:2:3:4:5:6:7:8]:80", ["[::2:3:4:5:6:7:8]:80"]],
  ["[1:2:3:4:5:6:7:0]:80", ["[1:2:3:4:5:6:7::]:80"]],
  ["[2001:db8::]:80", ["[2001:db8:0:0:0:0:0:0]:80", "[2001:DB8::0]:80"]],
  ["[fe80::abcd]:80", ["[FE80::ABCD]:80", "[fe80:0:0:0:0:0:0:abcd]:80"]],
  // Not IPv4-mapped (NAT64, SIIT): plain IPv6, in hex.
  ["[64:ff9b::102:304]:80", ["[64:ff9b::1.2.3.4]:80"]],
  ["[::ffff:0:102:304]:80", ["[::ffff:0:1.2.3.4]:80"]],
  ["[::1:0:0:0]:80", ["[0:0:0:0:1:0:0:0]:80"]],
  // Host names: lowercase, without the trailing dot.
  ["localhost:9002", ["LOCALHOST.:9002", "localhost:09002", "LocalHost:9002"]],
  ["gw.internal:8080", ["GW.Internal:8080", "gw.internal.:8080"]]
]

/** Refused spellings, with what the refusal must say. */
const REFUSED: ReadonlyArray<readonly [string, RegExp]> = [
  ["0.0.0.0:9001", /0\.0\.0\.0 is not a gateway's address/],
  ["000.000.000.000:9001", /0\.0\.0\.0 is not a gateway's address/],
  ["0.1.2.3:9001", /0\.1\.2\.3 is not a gateway's address/],
  ["[::ffff:0.0.0.0]:9001", /0\.0\.0\.0 is not a gateway's address/],
  ["[::ffff:0:0]:9001", /0\.0\.0\.0 is not a gateway's address/],
  ["[::]:9001", /unspecified address/],
  ["[0:0:0:0:0:0:0:0]:9001", /unspecified address/],
  ["[::0.0.0.0]:9001", /unspecified address/],
  ["[::127.0.0.1]:9001", /IPv4-compatible/],
  ["[::7f00:1]:9001", /IPv4-compatible/],
  ["[::0.0.0.2]:9001", /IPv4-compatible/],
  ["[fe80::1%eth0]:9001", /zone ids \(%eth0\)/],
  ["[fe80::1%25eth0]:9001", /zone ids/],
  ["unix:9001", /unix socket path/],
  ["UNIX:/tmp/x", /unix socket path/],
  ["unix:/tmp/gateway.sock:", /unix socket path/],
  ["Unix.:9001", /unix socket path/],
  [":9001", /the host is missing/],
  ["127.0.0.1", /the port is missing/],
  ["127.0.0.1:", /the port is missing/],
  ["gw.test", /the port is missing/],
  ["", /the port is missing/],
  ["[::1]", /\[IPv6\] must be followed by :port/],
  ["[::1]9001", /\[IPv6\] must be followed by :port/],
  ["[::1]:", /the port is missing/],
  ["127.0.0.1:0", /port 0 is not in 1-65535/],
  ["127.0.0.1:00000", /not in 1-65535/],
  ["127.0.0.1:65536", /port 65536 is not in 1-65535/],
  ["127.0.0.1:100000", /not in 1-65535/],
  ["127.0.0.1:9a", /port "9a" is not a number/],
  ["127.0.0.1:-1", /not a number/],
  ["127.0.0.1: 80", /not a number/],
  ["127.1:9001", /127\.1 is not an IPv4 address/],
  ["1.2.3.4.5:9001", /is not an IPv4 address/],
  ["256.0.0.1:9001", /is not an IPv4 address/],
  ["1.2.3.:9001", /is not an IPv4 address/],
  ["1234:80", /1234 is not an IPv4 address/],
  ["::1:9001", /must be written in brackets/],
  ["fe80::1:80", /must be written in brackets/],
  ["[1::2::3]:80", /"::" twice/],
  ["[1:2:3:4:5:6:7:8:9]:80", /not 8 groups/],
  ["[1:2:3:4:5:6:7::8]:80", /more than 8 groups/],
  ["[1:2:3:4:5:6::1.2.3.4]:80", /more than 8 groups/],
  ["[12345::1]:80", /group "12345" is not 1-4 hex digits/],
  ["[:::]:80", /stray colon/],
  ["[1:]:80", /stray colon/],
  ["[::1.2.3]:80", /1\.2\.3 is not an IPv4 address/],
  ["[::ffff:1.2.3.256]:80", /is not an IPv4 address/],
  ["[1.2.3.4::]:80", /not an IPv6 address/],
  ["[127.0.0.1]:80", /\[127\.0\.0\.1\]: not an IPv6 address/],
  ["[::g]:80", /not an IPv6 address/],
  ["[]:80", /not an IPv6 address/],
  ["[::1:80", /is not a host/],
  ["::1]:80", /is not a host/],
  ["gw_1.test:80", /"gw_1\.test" is not a host name/],
  ["-gw.test:80", /is not a host name/],
  ["gw .test:80", /is not a host name/],
  ["gw..test:80", /is not a host name/],
  ["http://gw.test:80", /is not a host name/],
  ["gw.test;:80", /is not a host name/],
  [`${"a".repeat(254)}:80`, /is not a host name/],
  [`${"a".repeat(64)}.test:80`, /is not a host name/]
]

const refusal = (value: string) => Either.flip(normaliseUpstream(value))

describe("upstream identity", () => {
  describe.each(ALIASES)("%s", (normal, spellings) => {
    it.each(spellings)("%s decodes to it", (spelling) => {
      expect(normaliseUpstream(spelling)).toEqual(Either.right(normal))
      expect(Schema.decodeUnknownSync(Upstream)(spelling)).toBe(normal)
    })

    it("is its own normal form, and encodes as it is", () => {
      expect(normaliseUpstream(normal)).toEqual(Either.right(normal))
      expect(Upstream.make(normal)).toBe(normal)
      expect(Schema.encodeSync(Upstream)(Upstream.make(normal))).toBe(normal)
    })
  })

  it.each(REFUSED)("%j is refused: %s", (value, reason) => {
    const refused = refusal(value)
    expect(Either.isRight(refused)).toBe(true)
    expect(Either.getOrElse(refused, () => "")).toMatch(reason)
    expect(isUpstream(value)).toBe(false)
    // Through the schema (the API's 400), with the same reason.
    const decoded = Schema.decodeUnknownEither(Upstream)(value)
    expect(Either.isLeft(decoded)).toBe(true)
    if (Either.isLeft(decoded)) expect(decoded.left.message).toMatch(reason)
  })

  it("every refusal says what an upstream must be", () => {
    for (const [value] of REFUSED) {
      expect(Either.getOrElse(refusal(value), () => "")).toMatch(
        /^upstream must be host:port \(IPv4, \[IPv6\] or host name, port 1-65535\): /
      )
    }
  })

  it("a spelling that is not the normal form is not an Upstream value (make checks it)", () => {
    expect(() => Upstream.make("127.0.0.1:09001")).toThrow(/normal form/)
    expect(() => Upstream.make("[::FFFF:7F00:1]:9001")).toThrow(/normal form/)
    expect(() => Upstream.make("0.0.0.0:9001")).toThrow()
    expect(Schema.is(Upstream)("LOCALHOST:9002")).toBe(false)
    expect(Schema.is(Upstream)("localhost:9002")).toBe(true)
  })

  it("normalising is idempotent over every accepted spelling", () => {
    for (const [, spellings] of ALIASES) {
      for (const spelling of spellings) {
        const once = Either.getOrElse(normaliseUpstream(spelling), () => spelling)
        expect(normaliseUpstream(once)).toEqual(Either.right(once))
      }
    }
  })
})
