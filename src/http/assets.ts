import { FileSystem, Path } from "@effect/platform"
import { Data, Effect, Option, Schema } from "effect"

export class AssetsNotFound extends Data.TaggedError("AssetsNotFound")<{ readonly from: string }> {
  override get message() {
    return `no package.json of gateway-allocator above ${this.from}`
  }
}

const isOurPackage = Schema.decodeUnknownOption(Schema.parseJson(Schema.Struct({ name: Schema.Literal("gateway-allocator") })))

/**
 * The directory holding this project's package.json, walking up from `from`: this module runs
 * from src/http under tsx and from dist/ once bundled, so a path relative to it would break one
 * of the two.
 */
export const packageRoot = Effect.fnUntraced(function*(from: string = import.meta.url) {
  const fs = yield* FileSystem.FileSystem
  const path = yield* Path.Path
  let directory = path.dirname(yield* path.fromFileUrl(new URL(from)).pipe(Effect.orElseFail(() => new AssetsNotFound({ from }))))
  for (;;) {
    const text = yield* fs.readFileString(path.join(directory, "package.json")).pipe(Effect.option)
    if (Option.isSome(Option.flatMap(text, isOurPackage))) return directory
    const parent = path.dirname(directory)
    if (parent === directory) return yield* new AssetsNotFound({ from })
    directory = parent
  }
})
