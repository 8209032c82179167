-- The gateway pool, allocations and the step journal.
--
-- The gateway row is the single source of truth for "free": a gateway is free exactly when
-- gateways.allocation_id is null. Claiming updates that column, so a concurrent claimer that
-- skipped or waited on the row re-checks it (no double claim, no false "no gateway").

create table gateways (
  id            uuid primary key default gen_random_uuid(),
  name          text not null unique,
  upstream      text not null,
  allocation_id uuid unique,
  created_at    timestamptz not null default now()
);

-- Free gateways are found through this index, so a claim stays cheap at any pool size.
create index gateways_free on gateways (created_at, id) where allocation_id is null;

-- state: starting -> active -> stopping -> released
--        starting -> rolling_back -> rolled_back
-- The states in allocations_live hold the org and the gateway.
create table allocations (
  id              uuid primary key,
  organization_id uuid not null,
  -- Kept after the gateway leaves the pool (set null), so history survives its removal.
  gateway_id      uuid references gateways (id) on delete set null,
  upstream        text not null,
  state           text not null check (state in
                    ('starting', 'active', 'stopping', 'rolling_back', 'released', 'rolled_back')),
  runner          text not null,
  error           jsonb,
  created_at      timestamptz not null default now(),
  updated_at      timestamptz not null default now(),
  finished_at     timestamptz
);

-- An org has at most one live allocation; a gateway serves at most one live org.
create unique index allocations_one_live_per_org on allocations (organization_id)
  where state in ('starting', 'active', 'stopping', 'rolling_back');
create unique index allocations_one_live_per_gateway on allocations (gateway_id)
  where state in ('starting', 'active', 'stopping', 'rolling_back');
create index allocations_live_by_state on allocations (state, updated_at)
  where state in ('starting', 'stopping', 'rolling_back');

alter table gateways
  add constraint gateways_allocation_fk foreign key (allocation_id) references allocations (id)
  deferrable initially deferred;

-- The step journal: one row per event of a step or of its undo, written as the pipeline runs.
create table allocation_steps (
  id            bigserial primary key,
  allocation_id uuid not null references allocations (id),
  step          text not null check (step in ('allocate', 'dns', 'nginx-config', 'nginx-reload', 'handshake')),
  event         text not null check (event in
                  ('started', 'completed', 'failed', 'timed_out', 'skipped',
                   'undo_started', 'undone', 'undo_failed', 'undo_timed_out', 'undo_skipped')),
  actor         text not null,
  detail        text,
  duration_ms   integer,
  at            timestamptz not null default clock_timestamp()
);
create index allocation_steps_by_allocation on allocation_steps (allocation_id, id);

-- Claims a free gateway for an org. Returns the org's live allocation instead when it has one
-- (reused = true). Raises 'no_gateway_available' (SQLSTATE GA001) when the pool is empty.
-- Two runners starting the same org at once both find no live allocation and both claim a
-- gateway; the second insert hits allocations_one_live_per_org (after waiting for the first to
-- commit). That is not an error: the loser returns the winner's allocation (reused = true), and
-- its subtransaction's rollback gives its gateway back.
create function proc_organizations_start_gateway(
  p_allocation_id uuid, p_organization_id uuid, p_runner text
) returns table (allocation_id uuid, gateway_id uuid, upstream text, state text, reused boolean)
language plpgsql as $$
#variable_conflict use_column
declare
  v_gateway gateways%rowtype;
  v_existing allocations%rowtype;
begin
  select * into v_existing from allocations a
    where a.organization_id = p_organization_id
      and a.state in ('starting', 'active', 'stopping', 'rolling_back');
  if found then
    return query select v_existing.id, v_existing.gateway_id, v_existing.upstream, v_existing.state, true;
    return;
  end if;

  select * into v_gateway from gateways g
    where g.allocation_id is null
    order by g.created_at, g.id
    limit 1
    for update skip locked;
  if not found then
    raise exception 'no_gateway_available' using errcode = 'GA001';
  end if;

  begin
    insert into allocations (id, organization_id, gateway_id, upstream, state, runner)
      values (p_allocation_id, p_organization_id, v_gateway.id, v_gateway.upstream, 'starting', p_runner);
    update gateways g set allocation_id = p_allocation_id where g.id = v_gateway.id;
    insert into allocation_steps (allocation_id, step, event, actor, detail)
      values (p_allocation_id, 'allocate', 'completed', 'request', 'gateway ' || v_gateway.name);
  exception when unique_violation then
    select * into v_existing from allocations a
      where a.organization_id = p_organization_id
        and a.state in ('starting', 'active', 'stopping', 'rolling_back');
    if not found then
      raise;
    end if;
    return query select v_existing.id, v_existing.gateway_id, v_existing.upstream, v_existing.state, true;
    return;
  end;

  return query select p_allocation_id, v_gateway.id, v_gateway.upstream, 'starting'::text, false;
end;
$$;

-- Releases an allocation's gateway. Compare-and-set on (allocation, gateway): a second call,
-- or a call with a stale id, changes nothing and returns false. p_final_state says why
-- ('released' after a stop, 'rolled_back' after a failed start).
create function proc_organizations_gateways_stop(
  p_allocation_id uuid, p_final_state text
) returns boolean
language plpgsql as $$
declare
  v_gateway_id uuid;
begin
  if p_final_state not in ('released', 'rolled_back') then
    raise exception 'invalid final state %', p_final_state;
  end if;
  update allocations a
     set state = p_final_state, updated_at = now(), finished_at = now()
   where a.id = p_allocation_id
     and a.state in ('starting', 'active', 'stopping', 'rolling_back')
  returning a.gateway_id into v_gateway_id;
  if not found then
    return false;
  end if;
  update gateways g set allocation_id = null
   where g.id = v_gateway_id and g.allocation_id = p_allocation_id;
  return true;
end;
$$;
