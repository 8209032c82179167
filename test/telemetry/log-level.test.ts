import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, LogLevel } from "effect"
import { LogLevelConfig } from "../../src/config.ts"

const parse = (value: string | undefined) =>
  Effect.withConfigProvider(
    Effect.either(LogLevelConfig),
    ConfigProvider.fromMap(new Map(value === undefined ? [] : [["LOG_LEVEL", value]]))
  )

describe("LOG_LEVEL", () => {
  it.effect("accepts Effect's labels in any case, and Warning for Warn; Info by default", () =>
    Effect.gen(function*() {
      expect(yield* parse(undefined)).toEqual(Either.right(LogLevel.Info))
      expect(yield* parse("debug")).toEqual(Either.right(LogLevel.Debug))
      expect(yield* parse("Warning")).toEqual(Either.right(LogLevel.Warning))
      expect(yield* parse("WARN")).toEqual(Either.right(LogLevel.Warning))
      expect(Either.isLeft(yield* parse("loud"))).toBe(true)
    }))
})
