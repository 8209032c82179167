import * as Metrics from "@effect/opentelemetry/Metrics"
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import * as Resource from "@effect/opentelemetry/Resource"
import * as OtelTracer from "@effect/opentelemetry/Tracer"
import { diag, type DiagLogger, DiagLogLevel } from "@opentelemetry/api"
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics"
import { BatchSpanProcessor, type SpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Cause, Config, Effect, Exit, Layer, Option, Predicate, Runtime, Tracer } from "effect"
import type { NonEmptyReadonlyArray } from "effect/Array"
import { StepName } from "../domain/steps.ts"

export const serviceName = "gateway-allocator"

/**
 * The OpenTelemetry resource of this process: `service.name=gateway-allocator`, plus whatever
 * OTEL_RESOURCE_ATTRIBUTES adds (e.g. `deployment.environment=prod`).
 */
export const ResourceLive = Resource.layerFromEnv(Resource.configToAttributes({ serviceName }))

// ---------------------------------------------------------------------------------------------
// The span tree of a start
// ---------------------------------------------------------------------------------------------

/** Ids that every span below a start's span carries too (so one query finds the whole tree). */
const inherited = ["organization_id", "allocation_id", "gateway_id"] as const
const steps: ReadonlySet<string> = new Set(StepName.literals)

const failureOf = (exit: Exit.Exit<unknown, unknown>) =>
  Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()

const tagOf = (error: unknown) => Predicate.hasProperty(error, "_tag") ? error._tag : undefined

const gatewayIdOf = (value: unknown) =>
  Predicate.hasProperty(value, "gatewayId") && typeof value.gatewayId === "string" ? value.gatewayId : undefined

/** The same outcome names as the `gateway_allocator_starts_total` metric. */
const startOutcome = (exit: Exit.Exit<unknown, unknown>) => {
  if (Exit.isSuccess(exit)) {
    return Predicate.hasProperty(exit.value, "reused") && exit.value.reused === true ? "reused" : "success"
  }
  if (Cause.isInterruptedOnly(exit.cause)) return "interrupted"
  switch (Option.match(failureOf(exit), { onNone: () => undefined, onSome: tagOf })) {
    case "NoGatewayAvailable":
      return "no_gateway"
    case "StepTimedOut":
      return "step_timed_out"
    default:
      return "step_failed"
  }
}

/** The same outcome names as the step metrics (`completed`, `failed`, `timed_out`), or `interrupted`. */
const stepOutcome = (exit: Exit.Exit<unknown, unknown>) => {
  if (Exit.isSuccess(exit)) return "completed"
  if (Cause.isInterruptedOnly(exit.cause)) return "interrupted"
  return Option.match(failureOf(exit), { onNone: () => undefined, onSome: tagOf }) === "StepTimedOut"
    ? "timed_out"
    : "failed"
}

const localParent = (span: Tracer.Span): Tracer.Span | undefined =>
  Option.isSome(span.parent) && span.parent.value._tag === "Span" ? span.parent.value : undefined

/** Sets what a span learns when it ends: its outcome, the gateway claimed, the failed step. */
const onEnd = (span: Tracer.Span, exit: Exit.Exit<unknown, unknown>) => {
  if (span.name === "Allocation.start") {
    span.attribute("outcome", startOutcome(exit))
    const failed = Option.flatMap(failureOf(exit), (error) =>
      Predicate.hasProperty(error, "step") && typeof error.step === "string" ? Option.some(error.step) : Option.none())
    if (Option.isSome(failed)) span.attribute("error.step", failed.value)
    const gatewayId = Exit.isSuccess(exit) ? gatewayIdOf(exit.value) : undefined
    if (gatewayId !== undefined) span.attribute("gateway_id", gatewayId)
  } else if (steps.has(span.name)) {
    span.attribute("outcome", stepOutcome(exit))
    // The claim (`allocate`) names the gateway: the start's span and the later steps get it too.
    const gatewayId = Exit.isSuccess(exit) ? gatewayIdOf(exit.value) : undefined
    if (gatewayId !== undefined) {
      span.attribute("gateway_id", gatewayId)
      const parent = localParent(span)
      if (parent !== undefined && !parent.attributes.has("gateway_id")) parent.attribute("gateway_id", gatewayId)
    }
  } else if (span.name.startsWith("undo ")) {
    const status = span.attributes.get("undo.status")
    if (status !== undefined) span.attribute("outcome", status)
  }
}

/**
 * Wraps a tracer so that the spans of a start carry the ids and outcomes operators search by:
 * - every span copies `organization_id`, `allocation_id` and `gateway_id` from its parent
 *   (its own attributes, set afterwards, win);
 * - `Allocation.start` gets `outcome` (success, reused, no_gateway, step_failed,
 *   step_timed_out, interrupted), `error.step` and `gateway_id`;
 * - each step span (`allocate` ... `handshake`) gets `outcome` (completed, failed, timed_out,
 *   interrupted), and `allocate` the `gateway_id` it claimed;
 * - each `undo <step>` span gets `outcome` = its `undo.status`.
 * The error status of a failed span is set by the tracer itself (from the span's Exit).
 */
export const enrichTracer = (tracer: Tracer.Tracer): Tracer.Tracer =>
  Tracer.make({
    context: (f, fiber) => tracer.context(f, fiber),
    span: (name, parent, context, links, startTime, kind, options) => {
      const span = tracer.span(name, parent, context, links, startTime, kind, options)
      const from = Option.isSome(parent) && parent.value._tag === "Span" ? parent.value : undefined
      if (from !== undefined) {
        for (const key of inherited) {
          const value = from.attributes.get(key)
          if (value !== undefined) span.attribute(key, value)
        }
      }
      const end = span.end
      span.end = (endTime, exit) => {
        onEnd(span, exit)
        end.call(span, endTime, exit)
      }
      return span
    }
  })

/**
 * Traces through an OpenTelemetry tracer provider with the given span processors (the OTLP
 * exporter in production, an in-memory exporter in tests). Needs the Resource.
 */
export const layerTracer = (processors: SpanProcessor | NonEmptyReadonlyArray<SpanProcessor>) =>
  Layer.unwrapEffect(Effect.map(OtelTracer.make, (tracer) => Layer.setTracer(enrichTracer(tracer)))).pipe(
    Layer.provideMerge(OtelTracer.layerTracer),
    Layer.provide(NodeSdk.layerTracerProvider(processors))
  )

// ---------------------------------------------------------------------------------------------
// OTLP/HTTP export
// ---------------------------------------------------------------------------------------------

export const OtlpConfig = Config.all({
  endpoint: Config.option(Config.nonEmptyString("OTEL_EXPORTER_OTLP_ENDPOINT")),
  metricIntervalMs: Config.integer("OTEL_METRIC_EXPORT_INTERVAL").pipe(Config.withDefault(60_000))
})

/** Where to say telemetry goes, without credentials, paths or query strings. */
const originOf = (url: string) => {
  try {
    return new URL(url).origin
  } catch {
    return "(unparsable URL)"
  }
}

/** The SDK's error handler logs errors as JSON (message, stack...): keep the message. */
const readable = (message: string) => {
  if (!message.startsWith("{")) return message
  try {
    const parsed: unknown = JSON.parse(message)
    return Predicate.hasProperty(parsed, "message") && typeof parsed.message === "string" ? parsed.message : message
  } catch {
    return message
  }
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
