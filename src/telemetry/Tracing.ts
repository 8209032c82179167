import * as Metrics from "@effect/opentelemetry/Metrics"
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import * as Resource from "@effect/opentelemetry/Resource"
import * as OtelTracer from "@effect/opentelemetry/Tracer"
import { diag, type DiagLogger, DiagLogLevel } from "@opentelemetry/api"
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics"
import { BatchSpanProcessor, type SpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Effect, Either, Layer, Option, Predicate, Runtime } from "effect"
import type { NonEmptyReadonlyArray } from "effect/Array"
import { OtlpConfig } from "../config.ts"

export const serviceName = "gateway-allocator"

/**
 * The OpenTelemetry resource of this process: `service.name=gateway-allocator`, plus whatever
 * OTEL_RESOURCE_ATTRIBUTES adds (e.g. `deployment.environment=prod`).
 */
export const ResourceLive = Resource.layerFromEnv(Resource.configToAttributes({ serviceName }))

/**
 * Traces through an OpenTelemetry tracer provider with the given span processors (the OTLP
 * exporter in production, an in-memory exporter in tests). Needs the Resource.
 */
export const layerTracer = (processors: SpanProcessor | NonEmptyReadonlyArray<SpanProcessor>) =>
  OtelTracer.layer.pipe(Layer.provide(NodeSdk.layerTracerProvider(processors)))

// ---------------------------------------------------------------------------------------------
// OTLP/HTTP export
// ---------------------------------------------------------------------------------------------

/** Where to say telemetry goes, without credentials, paths or query strings. */
const originOf = (url: string) =>
  Either.getOrElse(Either.try(() => new URL(url).origin), () => "(unparsable URL)")

/** The SDK's error handler logs errors as JSON (message, stack...): keep the message. */
const readable = (message: string): string => {
  if (!message.startsWith("{")) return message
  const parsed = Either.try((): unknown => JSON.parse(message))
  return Either.isRight(parsed) && Predicate.hasProperty(parsed.right, "message") && typeof parsed.right.message === "string"
    ? parsed.right.message
    : message
}

/** The OpenTelemetry SDK's own diagnostics (e.g. "export failed") as log lines of this service. */
const DiagnosticsToLogs = Layer.scopedDiscard(
  Effect.gen(function*() {
    const runtime = yield* Effect.runtime<never>()
    const log = (level: "warning" | "error") => (message: string, ...args: Array<unknown>) => {
      const text = [readable(message), ...args.map((arg) => (arg instanceof Error ? arg.message : String(arg)))].join(" ")
      Runtime.runFork(runtime)(
        (level === "error" ? Effect.logError : Effect.logWarning)(`opentelemetry: ${text}`)
      )
    }
    const logger: DiagLogger = {
      error: log("error"),
      warn: log("warning"),
      info: () => {},
      debug: () => {},
      verbose: () => {}
    }
    yield* Effect.acquireRelease(
      Effect.sync(() => diag.setLogger(logger, { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true })),
      () => Effect.sync(() => diag.disable())
    )
  })
)

/**
 * OTEL_EXPORTER_OTLP_ENDPOINT set: traces (batched) and metrics (every
 * OTEL_METRIC_EXPORT_INTERVAL ms) go there over OTLP/HTTP (`/v1/traces`, `/v1/metrics`).
 * Unset: no tracer SDK is installed at all, and nothing is pushed. Needs the Resource.
 */
export const OtlpLive = Layer.unwrapEffect(
  Effect.gen(function*() {
    const config = yield* OtlpConfig
    if (Option.isNone(config.endpoint)) return Layer.empty
    const base = config.endpoint.value.replace(/\/+$/, "")
    return Layer.mergeAll(
      layerTracer(new BatchSpanProcessor(new OTLPTraceExporter({ url: `${base}/v1/traces` }))),
      Metrics.layer(() =>
        new PeriodicExportingMetricReader({
          exporter: new OTLPMetricExporter({ url: `${base}/v1/metrics` }),
          exportIntervalMillis: config.metricIntervalMs
        })
      ),
      Layer.effectDiscard(Effect.logInfo(`telemetry: traces and metrics go to ${originOf(base)} over OTLP/HTTP`))
    ).pipe(Layer.provideMerge(DiagnosticsToLogs))
  })
)

/** OTLP export as configured, with this service's resource. What `AppLive` installs. */
export const TracingLive = OtlpLive.pipe(Layer.provide(ResourceLive))
