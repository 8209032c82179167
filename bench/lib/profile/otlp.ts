// A tiny OTLP/HTTP receiver in the benchmark's process: the service's trace exporter
// (@opentelemetry/exporter-trace-otlp-http: JSON, Content-Type application/json) posts to
// `<endpoint>/v1/traces`; its metric exporter's `/v1/metrics` posts are answered and dropped.
// Spans are kept as they come (times in ms of the Unix epoch, from the service's clock).
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { gunzipSync, inflateSync } from "node:zlib"

export interface ReceivedSpan {
  readonly traceId: string
  readonly spanId: string
  /** "" for a root span. */
  readonly parentSpanId: string
  readonly name: string
  readonly startMs: number
  readonly endMs: number
}

export interface OtlpReceiver {
  /** For OTEL_EXPORTER_OTLP_ENDPOINT. */
  readonly url: string
  readonly spans: () => ReadonlyArray<ReceivedSpan>
  readonly stats: () => { readonly traceRequests: number; readonly metricRequests: number; readonly refused: number }
  readonly close: () => Promise<void>
}

/** Unix nanoseconds (a decimal string in OTLP/JSON, or a number) to ms, µs kept. */
const nanosToMs = (value: unknown): number => {
  if (typeof value === "number") return value / 1e6
  if (typeof value === "string" && /^\d+$/.test(value)) return Number(BigInt(value) / 1000n) / 1000
  return Number.NaN
}

/** OTLP/JSON ids are hex strings; base64 is accepted too (protobuf's JSON mapping). */
const idOf = (value: unknown): string => (typeof value === "string" ? value : "")

interface OtlpSpan {
  readonly traceId?: unknown
  readonly spanId?: unknown
  readonly parentSpanId?: unknown
  readonly name?: unknown
  readonly startTimeUnixNano?: unknown
  readonly endTimeUnixNano?: unknown
}
interface OtlpTraces {
  readonly resourceSpans?: ReadonlyArray<{ readonly scopeSpans?: ReadonlyArray<{ readonly spans?: ReadonlyArray<OtlpSpan> }> }>
}

const body = (request: http.IncomingMessage): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    request.on("data", (chunk: Buffer) => chunks.push(chunk))
    request.on("end", () => {
      const raw = Buffer.concat(chunks)
      const encoding = String(request.headers["content-encoding"] ?? "").toLowerCase()
      try {
        resolve(encoding === "gzip" ? gunzipSync(raw) : encoding === "deflate" ? inflateSync(raw) : raw)
      } catch (error) {
        reject(error as Error)
      }
    })
    request.on("error", reject)
  })

export const startOtlpReceiver = async (): Promise<OtlpReceiver> => {
  const spans: Array<ReceivedSpan> = []
  const counts = { traceRequests: 0, metricRequests: 0, refused: 0 }
  const server = http.createServer((request, response) => {
    const answer = (status: number, text = "{}") => {
      response.writeHead(status, { "content-type": "application/json" })
      response.end(text)
    }
    const url = request.url ?? ""
    body(request).then((payload) => {
      if (request.method === "POST" && url === "/v1/metrics") {
        counts.metricRequests += 1
        return answer(200)
      }
      if (request.method !== "POST" || url !== "/v1/traces") {
        counts.refused += 1
        return answer(404)
      }
      if (!String(request.headers["content-type"] ?? "").includes("json")) {
        // The -proto exporter would post protobuf: this receiver reads OTLP/JSON only.
        counts.refused += 1
        return answer(415, JSON.stringify({ message: "OTLP/JSON only" }))
      }
      counts.traceRequests += 1
      const traces = JSON.parse(payload.toString("utf8")) as OtlpTraces
      for (const resource of traces.resourceSpans ?? []) {
        for (const scope of resource.scopeSpans ?? []) {
          for (const span of scope.spans ?? []) {
            spans.push({
              traceId: idOf(span.traceId),
              spanId: idOf(span.spanId),
              parentSpanId: idOf(span.parentSpanId),
              name: typeof span.name === "string" ? span.name : "(unnamed)",
              startMs: nanosToMs(span.startTimeUnixNano),
              endMs: nanosToMs(span.endTimeUnixNano)
            })
          }
        }
      }
      return answer(200)
    }).catch(() => {
      counts.refused += 1
      answer(400)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    spans: () => spans,
    stats: () => ({ ...counts }),
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}
