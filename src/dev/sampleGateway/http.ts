// JSON in and out over plain node:http, for the sample gateway's handlers.
import { Either, Schema } from "effect"
import * as http from "node:http"
import type * as net from "node:net"

const decodeJson = Schema.decodeUnknownEither(Schema.parseJson(Schema.Unknown))

export const send = (res: http.ServerResponse, status: number, body: unknown): void => {
  const text = JSON.stringify(body)
  // A length, not chunks: a raw client (or a test) reading a kept-alive connection knows where it ends.
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) })
  res.end(text)
}

export const readBody = (req: http.IncomingMessage, onBody: (text: string) => void): void => {
  const chunks: Array<Buffer> = []
  req.on("data", (chunk: Buffer) => chunks.push(chunk))
  req.on("end", () => onBody(Buffer.concat(chunks).toString("utf8")))
}

/** Reads a JSON body, records it, then decodes it: 400 when it is not JSON or lacks a field. */
export const readRequest = <A>(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  decode: (json: unknown) => Either.Either<A, unknown>,
  record: (json: unknown) => void,
  onBody: (body: A) => void
): void =>
  readBody(req, (text) => {
    const json = decodeJson(text)
    if (Either.isLeft(json)) return send(res, 400, { error: "body is not JSON" })
    record(json.right)
    const body = decode(json.right)
    if (Either.isLeft(body)) return send(res, 400, { error: String(body.left) })
    onBody(body.right)
  })

/** Refuses an upgrade with a plain HTTP answer, then hangs up once it is written. */
export const refuseUpgrade = (socket: net.Socket, status: number, body: unknown): void => {
  const text = JSON.stringify(body)
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ""}\r\ncontent-type: application/json\r\n` +
      `content-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
    () => socket.destroy()
  )
}
