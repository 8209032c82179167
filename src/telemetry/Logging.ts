import { Config, Effect, Layer, Logger, LogLevel } from "effect"

/** LOG_FORMAT (`json`, the default, or `pretty`) and LOG_LEVEL (`Info` by default). */
export const LoggingLive = Layer.unwrapEffect(
  Effect.gen(function*() {
    const format = yield* Config.literal("json", "pretty", "logfmt")("LOG_FORMAT").pipe(Config.withDefault("json" as const))
    const level = yield* Config.logLevel("LOG_LEVEL").pipe(Config.withDefault(LogLevel.Info))
    const logger = format === "pretty" ? Logger.pretty : format === "logfmt" ? Logger.logFmt : Logger.json
    return Layer.merge(logger, Logger.minimumLogLevel(level))
  })
)
