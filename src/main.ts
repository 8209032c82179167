import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Layer } from "effect"
import { AppLive } from "./app.ts"

Layer.launch(AppLive).pipe(NodeRuntime.runMain({ disablePrettyLogger: true }))
