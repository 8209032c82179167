import * as Metrics from "@effect/opentelemetry/Metrics"
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus"
import { Data, Effect } from "effect"
import { ResourceLive } from "./Tracing.ts"

export class ScrapeFailed extends Data.TaggedError("ScrapeFailed")<{ readonly cause: unknown }> {}

/**
 * The Prometheus text exposition of every Effect metric of this process, made on request: the
 * OpenTelemetry Prometheus exporter as a pull MetricReader of @effect/opentelemetry's metrics
 * bridge, without its own HTTP server (`GET /metrics` of the API collects and serializes on each
 * scrape). Scope labels are left out (every metric has the same one); `target_info` carries the
 * resource (service.name...).
 */
export class PrometheusMetrics extends Effect.Service<PrometheusMetrics>()("PrometheusMetrics", {
  scoped: Effect.gen(function*() {
    const reader = new PrometheusExporter({ preventServerStart: true })
    const producer = yield* Metrics.makeProducer
    yield* Metrics.registerProducer(producer, () => reader)
    const serializer = new PrometheusSerializer(undefined, false, undefined, false, true)
    return {
      contentType: "text/plain; version=0.0.4; charset=utf-8",
      scrape: Effect.tryPromise({
        try: () => reader.collect(),
        catch: (cause) => new ScrapeFailed({ cause })
      }).pipe(
        Effect.tap(({ errors }) =>
          errors.length === 0 ? Effect.void : Effect.logWarning(`metrics collection: ${errors.map(String).join("; ")}`)
        ),
        Effect.map(({ resourceMetrics }) => serializer.serialize(resourceMetrics))
      )
    }
  }),
  dependencies: [ResourceLive]
}) {}
