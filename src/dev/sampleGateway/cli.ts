// The command line of `tsx src/dev/SampleGateway.ts` (see its header).
import { Either, Schema } from "effect"
import { BehaviourPatch, type SampleGatewayOptions } from "./model.ts"

const known = new Set(["port", "host", "name", "health-path", "handshake-path", "release-path", "health", "handshake", "release", "delay"])

/** `--flag value` pairs to options; the error names what is wrong. */
export const parseArgs = (argv: ReadonlyArray<string>): Either.Either<SampleGatewayOptions, string> => {
  const flags = new Map<string, string>()
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i] ?? ""
    const value = argv[i + 1]
    if (!flag.startsWith("--") || value === undefined) return Either.left(`expected --flag value pairs, got ${flag}`)
    flags.set(flag.slice(2), value)
  }
  const unknown = [...flags.keys()].filter((flag) => !known.has(flag))
  if (unknown.length > 0) return Either.left(`unknown flags: ${unknown.map((f) => `--${f}`).join(", ")}`)
  const port = flags.get("port")
  const behaviour = Schema.decodeUnknownEither(BehaviourPatch)({
    ...(flags.has("health") ? { health: flags.get("health") } : {}),
    ...(flags.has("handshake") ? { handshake: flags.get("handshake") } : {}),
    ...(flags.has("release") ? { release: flags.get("release") } : {}),
    ...(flags.has("delay") ? { handshakeDelayMs: Number(flags.get("delay")) } : {})
  })
  if (Either.isLeft(behaviour)) return Either.left(String(behaviour.left))
  if (port !== undefined && !/^\d+$/.test(port)) return Either.left(`--port must be a number, got ${port}`)
  const host = flags.get("host")
  const name = flags.get("name")
  const healthPath = flags.get("health-path")
  const handshakePath = flags.get("handshake-path")
  const releasePath = flags.get("release-path")
  return Either.right({
    ...(port === undefined ? {} : { port: Number(port) }),
    ...(host === undefined ? {} : { host }),
    ...(name === undefined ? {} : { name }),
    ...(healthPath === undefined ? {} : { healthPath }),
    ...(handshakePath === undefined ? {} : { handshakePath }),
    ...(releasePath === undefined ? {} : { releasePath }),
    behaviour: behaviour.right
  })
}
