import { NodeRuntime } from "@effect/platform-node"
import { Layer } from "effect"
import { AppLive } from "./app.ts"

Layer.launch(AppLive).pipe(NodeRuntime.runMain({ disablePrettyLogger: true }))
