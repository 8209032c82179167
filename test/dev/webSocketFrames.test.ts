import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import {
  acceptKey,
  closeCode,
  closePayload,
  decodeFrames,
  encodeFrame,
  messageReader,
  Opcode
} from "../../src/dev/webSocketFrames.ts"

const readAll = (masked: boolean, ...chunks: ReadonlyArray<Buffer>) => {
  const read = messageReader({ masked, maxPayload: 1 << 20 })
  return chunks.map((chunk) => read(chunk))
}

describe("webSocketFrames", () => {
  it("computes the RFC 6455 example accept key", () => {
    expect(acceptKey("dGhlIHNhbXBsZSBub25jZQ==")).toBe("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
  })

  it("round-trips 7-, 16- and 64-bit lengths, masked and not", () => {
    for (const size of [0, 125, 126, 65_535, 65_536, 70_000]) {
      for (const mask of [false, true]) {
        const payload = Buffer.alloc(size, "x")
        const frame = encodeFrame(Opcode.binary, payload, { mask })
        const header = size < 126 ? 2 : size <= 65_535 ? 4 : 10
        expect(frame.length).toBe(header + (mask ? 4 : 0) + size)
        const { frames, rest } = Either.getOrThrow(decodeFrames(frame, 1 << 20))
        expect(frames.map(({ fin, masked, opcode }) => ({ fin, masked, opcode }))).toEqual([{ fin: true, masked: mask, opcode: Opcode.binary }])
        // Buffer.equals: toEqual compares 70,000 bytes one by one, slowly.
        expect(frames[0]?.payload.equals(payload)).toBe(true)
        expect(rest.length).toBe(0)
      }
    }
  })

  it("keeps a partial frame until the rest arrives, one byte at a time", () => {
    const frame = encodeFrame(Opcode.text, "x".repeat(300), { mask: true })
    const results = readAll(true, ...Array.from(frame, (byte) => Buffer.from([byte])))
    const messages = results.flatMap((result) => Either.getOrThrow(result))
    expect(messages).toEqual([{ opcode: Opcode.text, payload: Buffer.from("x".repeat(300)) }])
  })

  it("joins fragments, with a control frame between them", () => {
    const [result] = readAll(
      true,
      Buffer.concat([
        encodeFrame(Opcode.text, "hel", { mask: true, fin: false }),
        encodeFrame(Opcode.ping, "p", { mask: true }),
        encodeFrame(Opcode.continuation, "lo", { mask: true })
      ])
    )
    expect(result === undefined ? [] : Either.getOrThrow(result)).toEqual([
      { opcode: Opcode.ping, payload: Buffer.from("p") },
      { opcode: Opcode.text, payload: Buffer.from("hello") }
    ])
  })

  it("refuses what no peer may send", () => {
    const refused = (masked: boolean, frame: Buffer) => {
      const [result] = readAll(masked, frame)
      return result !== undefined && Either.isLeft(result) ? result.left.closeCode : null
    }
    expect(refused(true, encodeFrame(Opcode.text, "x"))).toBe(1002) // a client frame must be masked
    expect(refused(false, encodeFrame(Opcode.text, "x", { mask: true }))).toBe(1002) // a server frame must not
    expect(refused(true, encodeFrame(Opcode.continuation, "x", { mask: true }))).toBe(1002)
    expect(refused(true, encodeFrame(Opcode.ping, "x".repeat(126), { mask: true }))).toBe(1002)
    expect(refused(true, Buffer.from([0x83, 0x80, 0, 0, 0, 0]))).toBe(1002) // opcode 3 is reserved
    const huge = Buffer.from([0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0]) // 2^32 bytes announced
    expect(refused(true, huge)).toBe(1009)
  })

  it("writes and reads close payloads", () => {
    expect(closeCode(closePayload(1008, "gone"))).toBe(1008)
    expect(closePayload(1000, "r".repeat(200)).length).toBe(125)
    expect(closeCode(Buffer.alloc(0))).toBeNull()
  })
})
