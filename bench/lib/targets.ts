// Every target of the benchmark, in one table, keyed by the figure it bounds (figures.ts computes
// the figures and names them). A target changes here and nowhere else.

export interface Target {
  readonly comparison: "<=" | ">="
  readonly limit: number
  /** Why this bound: what a figure beyond it would mean for the service. */
  readonly why: string
}

export const TARGETS = {
  // ---- lua routing (routes in nginx's shared memory, no reload) -------------------------------
  "lua.start.c1.vsRawSum": {
    comparison: "<=",
    limit: 1.3,
    why: "with no reload, a start is its outside calls; the allocator's own work (claim, fences, journal) should add little"
  },
  "tls.start.c1.vsPlain": {
    comparison: "<=",
    limit: 1.15,
    why: "with TLS on, only the health wait's one request goes over HTTPS: a start should not feel the handshake"
  },
  "tls.request.keptAlive.vsPlain": {
    comparison: "<=",
    limit: 1.2,
    why: "on a kept-alive connection TLS is symmetric encryption of a few hundred bytes: a request should barely notice it"
  },
  "lua.failedStart.vsStart": {
    comparison: "<=",
    limit: 1.3,
    why: "a refused handshake is the common failure: undoing a start should cost about what the start did"
  },
  "lua.cpu.perStartStop": {
    comparison: "<=",
    limit: 7,
    why: "a start and its stop are a handful of outside calls and Postgres statements: the service's own CPU should be a small part of the time they take"
  },
  "lua.throughput.c64": {
    comparison: ">=",
    limit: 200,
    why: "2 cores should start 200 orgs a second when the outside calls are cheap"
  },
  "lua.throughput.c64.vsCoalesce": {
    comparison: ">=",
    limit: 2,
    why: "routing without reloads exists to take nginx's reload off the start path; it should at least double coalesced reloads"
  },
  "lua.start.largest.vs100": {
    comparison: "<=",
    limit: 1.2,
    why: "the route table is one hash lookup per request: a start should not notice how many routes exist"
  },
  "lua.propagation.write.p99": {
    comparison: "<=",
    limit: 5,
    why: "a start answers once its route is written: every nginx worker should serve it at once"
  },
  "lua.propagation.removal.p99": {
    comparison: "<=",
    limit: 5,
    why: "a removed route's gateway may go to another org next: no worker may keep routing the old org to it"
  },
  "lua.bystander.broken": {
    comparison: "<=",
    limit: 0,
    why: "starting and stopping other orgs must not break an unrelated org's open connections"
  },
  // ---- several edges (lua: the local edge and remote ones, each change to each) ---------------
  "edges.start.c1.vsOneEdge": {
    comparison: "<=",
    limit: 1.2,
    why: "a change goes to every edge in parallel: a second and third edge should add little to a start, not an edge's round trip each"
  },
  "edges.catchUp10k.ms": {
    comparison: "<=",
    limit: 2000,
    why: "a restarted edge answers 503 (out of rotation) until it is caught up: with 10,000 routes it should be back within a load balancer's health check or two"
  },
  // ---- reload routing (route files, `nginx -s reload`) ----------------------------------------
  "coalesce.throughput.c64.vsEach": {
    comparison: ">=",
    limit: 10,
    why: "coalescing exists so that concurrent starts share one reload instead of queuing for one each"
  },
  "coalesce.start.c1.vsRawSum": {
    comparison: "<=",
    limit: 1.2,
    why: "a start should cost little more than the outside calls it must make (PATCH, reload, probe, health, handshake)"
  },
  "coalesce.start.largest.vs100": {
    comparison: "<=",
    limit: 3,
    why: "a reload re-parses every route file: a start may grow with the route count, but not without bound (set at 10,000 routes)"
  },
  "coalesce.rollback.largest.vsReload": {
    comparison: "<=",
    limit: 1.5,
    why: "a rollback takes one route away: it should cost about one reload"
  },
  // ---- the process ----------------------------------------------------------------------------
  "memory.peakRss.largest": {
    comparison: "<=",
    limit: 150,
    why: "the service runs beside nginx, PowerDNS and Postgres on a small machine; 10,000 allocations must fit (tightened from < 200)"
  },
  "memory.rssAfterStartup": {
    comparison: "<=",
    limit: 100,
    why: "an idle replica should be cheap to run"
  },
  "startup.npmStart": {
    comparison: "<=",
    limit: 1500,
    why: "a restart (deploy, crash, failover) should be serving again within a load balancer's first retries"
  }
} as const satisfies Record<string, Target>

export type TargetedFigure = keyof typeof TARGETS

const isTargeted = (id: string): id is TargetedFigure => Object.hasOwn(TARGETS, id)

export const targetOf = (id: string): Target | undefined => (isTargeted(id) ? TARGETS[id] : undefined)

/** NaN (a figure that could not be measured) meets no target. */
export const isMet = (target: Target, value: number): boolean =>
  target.comparison === "<=" ? value <= target.limit : value >= target.limit
