-- Several nginx edges (lua routing): the registry, and the route removals an edge still owes.
--
-- An edge is an nginx running the service's edge configuration. The local one (NGINX_CONF_DIR)
-- registers itself at start-up under the id of its directory's edge file (`local`); others are
-- registered through POST /edges. Every route change goes to every edge; an edge that missed
-- one is `behind` until a replica has brought it up to date from Postgres.
--
-- A removal an edge did not acknowledge (it was down, frozen, cut off) is owed: a row of
-- edge_removals_owed names the edge, the allocation whose route it may still hold, and the
-- gateway, which no claim takes while any edge owes a removal for it (gateways_claimable below).
-- The row goes once that edge acknowledged (its catch-up), or with the edge (DELETE /edges).

create table edges (
  id uuid primary key,
  name text not null unique,
  -- Where replicas reach the edge's route API, and its org server block (the route proofs).
  route_api_url text not null unique,
  probe_url text not null,
  -- The edge's own secret: sent with every route API call and probe; rendered into its file.
  secret text not null,
  -- The NGINX_CONF_DIR edge of this database's replicas (at most one).
  local boolean not null default false,
  -- draining: its readiness answers 503 (a load balancer takes it out); its routes are kept up to
  -- date all the same, so it can come back (active) or go (DELETE /edges) at any time.
  state text not null default 'active' check (state in ('active', 'draining')),
  -- It missed a change (or its table came back empty): brought up to date before it counts.
  behind boolean not null default true,
  -- Raised each time it is marked behind: a catch-up clears `behind` only if no mark came while
  -- it ran (a change it missed meanwhile is not covered by what it pushed).
  behind_mark bigint not null default 0,
  boot_id text,
  -- The greatest route generation it acknowledged (a write or a removal), and when.
  acked_generation bigint not null default 0,
  acked_at timestamptz,
  -- The last time a replica reached it, what failed last, how many routes it held then.
  last_seen timestamptz,
  last_error text,
  route_count integer not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create unique index edges_one_local on edges (local) where local;

comment on table edges is
  'The nginx edges (lua routing): every route change goes to each; one that missed a change is behind until caught up.';

create table edge_removals_owed (
  edge_id uuid not null references edges (id) on delete cascade,
  allocation_id uuid not null references allocations (id),
  organization_id uuid not null,
  generation bigint not null,
  gateway_id uuid not null references gateways (id) on delete cascade,
  reason text,
  since timestamptz not null default now(),
  primary key (edge_id, allocation_id)
);

create index edge_removals_owed_by_gateway on edge_removals_owed (gateway_id);

comment on table edge_removals_owed is
  'Route removals an edge has not acknowledged: the gateway stays out of every claim until it has (or the edge is deleted).';

-- The free gateways a claim may take (0009), now also none an edge may still route to: same
-- columns, so gateways_claim_order and the claim read it unchanged. The owed rows are few (an edge
-- down), and the anti-join is an index probe per candidate.
create or replace view gateways_claimable as
  select g.* from gateways g
   where g.allocation_id is null and g.state = 'active' and g.unreleased_allocation_id is null
     and (g.quarantined_until is null or g.quarantined_until <= now())
     and not exists (select 1 from edge_removals_owed o where o.gateway_id = g.id);

comment on view gateways_claimable is
  'Free gateways a claim may take: no allocation, active, no release pending, out of quarantine, no edge owing a removal.';
