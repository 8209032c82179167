import { LogFormat, LogLevelConfig } from "../config.ts"
import { Cause, Context, Effect, FiberId, FiberRef, FiberRefs, HashMap, Inspectable, Layer, List, Logger, Option, Tracer } from "effect"

// Log lines carry the trace they belong to: `trace_id` and `span_id` of the current span of the
// fiber that logs (the same ids the OTLP exporter sends, when tracing is on), next to the
// annotations (organization_id, allocation_id, step...).

/** The ids of the span current in the logging fiber, if any. */
export const traceIdsOf = (context: FiberRefs.FiberRefs): Option.Option<{ traceId: string; spanId: string }> =>
  Option.map(
    Context.getOption(FiberRefs.getOrDefault(context, FiberRef.currentContext), Tracer.ParentSpan),
    (span) => ({ traceId: span.traceId, spanId: span.spanId })
  )

/** Adds `trace_id` and `span_id` to a log's annotations (for the pretty and logfmt formats). */
export const withTraceIds = <M>(options: Logger.Logger.Options<M>): Logger.Logger.Options<M> =>
  Option.match(traceIdsOf(options.context), {
    onNone: () => options,
    onSome: ({ spanId, traceId }) => ({
      ...options,
      annotations: HashMap.set(HashMap.set(options.annotations, "trace_id", traceId as unknown), "span_id", spanId as unknown)
    })
  })

const errorToJson = (value: unknown): unknown =>
  value instanceof Error && !("toJSON" in value) ? { name: value.name, message: value.message } : value

const structured = (value: unknown): unknown =>
  typeof value === "bigint" || typeof value === "function" || typeof value === "symbol"
    ? String(value)
    : errorToJson(Inspectable.toJSON(value))

/**
 * One JSON object per line, flat so log pipelines index the fields directly:
 * `{"timestamp","level","message","trace_id","span_id",...annotations,"cause","log_spans","fiber"}`.
 * The fixed fields win over an annotation of the same name.
 */
export const jsonLogger: Logger.Logger<unknown, string> = Logger.make((options) => {
  const line: Record<string, unknown> = {}
  for (const [key, value] of options.annotations) line[key] = structured(value)
  const messages = Array.isArray(options.message) ? options.message : [options.message]
  line.timestamp = options.date.toISOString()
  line.level = options.logLevel.label
  line.message = messages.length === 1 ? structured(messages[0]) : messages.map(structured)
  const ids = traceIdsOf(options.context)
  if (Option.isSome(ids)) {
    line.trace_id = ids.value.traceId
    line.span_id = ids.value.spanId
  }
  if (!Cause.isEmpty(options.cause)) line.cause = Cause.pretty(options.cause, { renderErrorCause: true })
  if (List.isCons(options.spans)) {
    const now = options.date.getTime()
    const spans: Record<string, number> = {}
    for (const span of options.spans) spans[span.label] = now - span.startTime
    line.log_spans = spans
  }
  line.fiber = FiberId.threadName(options.fiberId)
  return Inspectable.stringifyCircular(line)
})

/** The pretty (human) logger, with the trace ids among the annotations. */
export const prettyLogger: Logger.Logger<unknown, void> = Logger.mapInputOptions(Logger.prettyLogger(), withTraceIds)

/** logfmt, with the trace ids among the annotations. */
export const logfmtLogger: Logger.Logger<unknown, string> = Logger.mapInputOptions(Logger.logfmtLogger, withTraceIds)

/** The logger for a LOG_FORMAT, writing to the console (stdout). */
export const loggerFor = (format: "json" | "pretty" | "logfmt"): Logger.Logger<unknown, void> =>
  format === "pretty"
    ? prettyLogger
    : Logger.withConsoleLog(format === "logfmt" ? logfmtLogger : jsonLogger)

/** LOG_FORMAT (`json`, the default, `pretty` or `logfmt`) and LOG_LEVEL (`Info` by default). */
export const LoggingLive = Layer.unwrapEffect(
  Effect.gen(function*() {
    const format = yield* LogFormat
    const level = yield* LogLevelConfig
    return Layer.merge(Logger.replace(Logger.defaultLogger, loggerFor(format)), Logger.minimumLogLevel(level))
  })
)
