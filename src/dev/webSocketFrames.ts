// RFC 6455 framing, just what the sample gateway and its tests need: 7-, 16- and 64-bit payload
// lengths, masking both ways (a client masks, a server must not), fragmented messages put back
// together, partial frames kept across reads.
import { Data, Either } from "effect"
import * as crypto from "node:crypto"

export const Opcode = {
  continuation: 0x0,
  text: 0x1,
  binary: 0x2,
  close: 0x8,
  ping: 0x9,
  pong: 0xa
} as const
export type Opcode = typeof Opcode[keyof typeof Opcode]

const opcodes: ReadonlySet<number> = new Set(Object.values(Opcode))
const isOpcode = (value: number): value is Opcode => opcodes.has(value)

export interface Frame {
  readonly fin: boolean
  readonly opcode: Opcode
  readonly masked: boolean
  readonly payload: Buffer
}

/** A whole message: a data message (fragments joined) or one control frame. */
export interface Message {
  readonly opcode: Exclude<Opcode, typeof Opcode.continuation>
  readonly payload: Buffer
}

export class WebSocketFrameError extends Data.TaggedError("WebSocketFrameError")<{
  readonly message: string
  /** The close status the peer is sent: 1002 protocol error, 1009 message too big. */
  readonly closeCode: 1002 | 1009
}> {}

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/** `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`. */
export const acceptKey = (key: string): string => crypto.createHash("sha1").update(`${key}${GUID}`).digest("base64")

const applyMask = (data: Buffer, mask: Buffer): Buffer => {
  const out = Buffer.allocUnsafe(data.length)
  for (let i = 0; i < data.length; i++) out[i] = (data[i] ?? 0) ^ (mask[i & 3] ?? 0)
  return out
}

/** One frame; `mask: true` for a client's frames (a server's are never masked). */
export const encodeFrame = (
  opcode: Opcode,
  payload: Buffer | string,
  options: { readonly mask?: boolean; readonly fin?: boolean } = {}
): Buffer => {
  const data = typeof payload === "string" ? Buffer.from(payload, "utf8") : payload
  const mask = options.mask === true ? crypto.randomBytes(4) : null
  const lengthBytes = data.length < 126 ? 0 : data.length <= 0xffff ? 2 : 8
  const head = Buffer.alloc(2 + lengthBytes + (mask === null ? 0 : 4))
  head.writeUInt8((options.fin === false ? 0 : 0x80) | opcode, 0)
  const maskBit = mask === null ? 0 : 0x80
  if (lengthBytes === 0) head.writeUInt8(maskBit | data.length, 1)
  else if (lengthBytes === 2) {
    head.writeUInt8(maskBit | 126, 1)
    head.writeUInt16BE(data.length, 2)
  } else {
    head.writeUInt8(maskBit | 127, 1)
    head.writeBigUInt64BE(BigInt(data.length), 2)
  }
  if (mask === null) return Buffer.concat([head, data])
  mask.copy(head, 2 + lengthBytes)
  return Buffer.concat([head, applyMask(data, mask)])
}

/** A close frame's payload: the status code, then a UTF-8 reason (at most 123 bytes). */
export const closePayload = (code: number, reason = ""): Buffer => {
  const payload = Buffer.alloc(2)
  payload.writeUInt16BE(code, 0)
  return Buffer.concat([payload, Buffer.from(reason, "utf8").subarray(0, 123)])
}

/** The status code of a close frame's payload, or null when it carries none. */
export const closeCode = (payload: Buffer): number | null => (payload.length >= 2 ? payload.readUInt16BE(0) : null)

const protocolError = (message: string) => new WebSocketFrameError({ message, closeCode: 1002 })

/**
 * The frames complete in `buffer`, and what is left of an incomplete one (kept for the next read).
 * Fails on what no peer may send: reserved bits or opcodes, a fragmented or long control frame,
 * a payload over `maxPayload`.
 */
export const decodeFrames = (
  buffer: Buffer,
  maxPayload: number
): Either.Either<{ readonly frames: ReadonlyArray<Frame>; readonly rest: Buffer }, WebSocketFrameError> => {
  const frames: Array<Frame> = []
  let offset = 0
  while (buffer.length - offset >= 2) {
    const first = buffer.readUInt8(offset)
    const second = buffer.readUInt8(offset + 1)
    const fin = (first & 0x80) !== 0
    const opcode = first & 0x0f
    const masked = (second & 0x80) !== 0
    if ((first & 0x70) !== 0) return Either.left(protocolError("reserved bits set"))
    if (!isOpcode(opcode)) return Either.left(protocolError(`unknown opcode ${opcode}`))
    let length = second & 0x7f
    let at = offset + 2
    if (length === 126) {
      if (buffer.length < at + 2) break
      length = buffer.readUInt16BE(at)
      at += 2
    } else if (length === 127) {
      if (buffer.length < at + 8) break
      const long = buffer.readBigUInt64BE(at)
      if (long > BigInt(maxPayload)) {
        return Either.left(new WebSocketFrameError({ message: `frame of ${long} bytes`, closeCode: 1009 }))
      }
      length = Number(long)
      at += 8
    }
    if (opcode >= 0x8 && (!fin || length > 125)) return Either.left(protocolError("fragmented or long control frame"))
    if (length > maxPayload) {
      return Either.left(new WebSocketFrameError({ message: `frame of ${length} bytes`, closeCode: 1009 }))
    }
    const maskAt = at
    if (masked) at += 4
    if (buffer.length < at + length) break
    const raw = buffer.subarray(at, at + length)
    frames.push({ fin, opcode, masked, payload: masked ? applyMask(raw, buffer.subarray(maskAt, maskAt + 4)) : Buffer.from(raw) })
    offset = at + length
  }
  return Either.right({ frames, rest: buffer.subarray(offset) })
}

/**
 * Reads one side of a connection: feed it each chunk as it arrives, get the whole messages it
 * completed. `masked`: what the peer's frames must be (a server reads masked frames, a client
 * unmasked ones). After a failure the connection is to be closed; the reader is not reused.
 */
export const messageReader = (options: { readonly masked: boolean; readonly maxPayload: number }) => {
  let pending = Buffer.alloc(0)
  let fragments: { readonly opcode: typeof Opcode.text | typeof Opcode.binary; readonly parts: Array<Buffer>; size: number } | null = null
  return (chunk: Buffer): Either.Either<ReadonlyArray<Message>, WebSocketFrameError> => {
    const decoded = decodeFrames(pending.length === 0 ? chunk : Buffer.concat([pending, chunk]), options.maxPayload)
    if (Either.isLeft(decoded)) return Either.left(decoded.left)
    // Copied: a subarray would pin the whole read buffer until the next frame completes.
    pending = Buffer.from(decoded.right.rest)
    const messages: Array<Message> = []
    for (const frame of decoded.right.frames) {
      if (frame.masked !== options.masked) return Either.left(protocolError(options.masked ? "unmasked frame" : "masked frame"))
      if (frame.opcode === Opcode.continuation) {
        if (fragments === null) return Either.left(protocolError("continuation without a first fragment"))
        fragments.parts.push(frame.payload)
        fragments.size += frame.payload.length
        if (fragments.size > options.maxPayload) {
          return Either.left(new WebSocketFrameError({ message: `message of ${fragments.size} bytes`, closeCode: 1009 }))
        }
        if (frame.fin) {
          messages.push({ opcode: fragments.opcode, payload: Buffer.concat(fragments.parts) })
          fragments = null
        }
      } else if (frame.opcode === Opcode.text || frame.opcode === Opcode.binary) {
        if (fragments !== null) return Either.left(protocolError("new message inside a fragmented one"))
        if (frame.fin) messages.push({ opcode: frame.opcode, payload: frame.payload })
        else fragments = { opcode: frame.opcode, parts: [frame.payload], size: frame.payload.length }
      } else {
        // Control frames may come between fragments; they are never fragmented themselves.
        messages.push({ opcode: frame.opcode, payload: frame.payload })
      }
    }
    return Either.right(messages)
  }
}
