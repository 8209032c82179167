-- An org's connections end with its allocation. The `handshake` step's undo asks the gateway to
-- release the allocation (close every connection of it, forget the org), and a gateway is not
-- handed to another org until a release succeeded: nginx cannot close another request's proxied
-- connection, so only the gateway can end an org's open WebSockets and streams.
--
-- A gateway whose release failed is free (its allocation is over, the org may start elsewhere)
-- but held back: `unreleased_allocation_id` names the allocation it has still to release. The
-- health pass retries the release and clears the mark (compare-and-set on the allocation) once
-- the gateway confirms it; until then no claim takes it.

alter table gateways
  add column unreleased_allocation_id uuid references allocations (id),
  -- Failed release attempts in a row for that allocation (the undo's, then each retry's).
  add column release_failures integer not null default 0;

create index gateways_unreleased on gateways (id) where unreleased_allocation_id is not null;

-- The claim's index now leaves out gateways waiting for a release too.
drop index gateways_available;
create index gateways_available on gateways (last_allocated_at nulls first, created_at, id)
  where allocation_id is null and state = 'active' and unreleased_allocation_id is null;

-- The claim of 0005, taking only gateways with no release pending, and recording the trace it
-- ran in on the allocation it creates (which 0006 did with a second statement per claim).
drop function proc_organizations_start_gateway_traced(uuid, uuid, text, text);
drop function proc_organizations_start_gateway(uuid, uuid, text);
create function proc_organizations_start_gateway(
  p_allocation_id uuid, p_organization_id uuid, p_runner text, p_trace_id text
) returns table (allocation_id uuid, gateway_id uuid, upstream text, generation bigint, state text, reused boolean)
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
    return query select v_existing.id, v_existing.gateway_id, v_existing.upstream, v_existing.generation, v_existing.state, true;
    return;
  end if;

  select * into v_gateway from gateways g
    where g.allocation_id is null and g.state = 'active' and g.unreleased_allocation_id is null
      and (g.quarantined_until is null or g.quarantined_until <= now())
    order by g.last_allocated_at nulls first, g.created_at, g.id
    limit 1
    for update skip locked;
  if not found then
    raise exception 'no_gateway_available' using errcode = 'GA001';
  end if;

  begin
    insert into allocations (id, organization_id, gateway_id, upstream, state, runner, trace_id)
      values (p_allocation_id, p_organization_id, v_gateway.id, v_gateway.upstream, 'starting', p_runner, p_trace_id);
    update gateways g set allocation_id = p_allocation_id, last_allocated_at = now() where g.id = v_gateway.id;
    insert into allocation_steps (allocation_id, step, event, actor, detail)
      values (p_allocation_id, 'allocate', 'completed', 'request', 'gateway ' || v_gateway.name);
  exception when unique_violation then
    select * into v_existing from allocations a
      where a.organization_id = p_organization_id
        and a.state in ('starting', 'active', 'stopping', 'rolling_back');
    if not found then
      raise;
    end if;
    return query select v_existing.id, v_existing.gateway_id, v_existing.upstream, v_existing.generation, v_existing.state, true;
    return;
  end;

  return query select a.id, a.gateway_id, a.upstream, a.generation, a.state, false
    from allocations a where a.id = p_allocation_id;
end;
$$;

-- Releases an allocation's gateway (compare-and-set on the allocation and its runner, as in
-- 0003). p_release_error null: the gateway released the allocation (or was never asked to);
-- otherwise what went wrong with its release: the gateway is freed but held back until a retry
-- succeeds. 0003's version (whose p_runner could be null) goes: every caller names its runner.
drop function proc_organizations_gateways_stop(uuid, text, text);
create function proc_organizations_gateways_stop(
  p_allocation_id uuid, p_final_state text, p_runner text, p_release_error text
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
     and a.runner = p_runner
  returning a.gateway_id into v_gateway_id;
  if not found then
    return false;
  end if;
  if p_release_error is null then
    update gateways g set allocation_id = null
     where g.id = v_gateway_id and g.allocation_id = p_allocation_id;
  else
    update gateways g
       set allocation_id = null, unreleased_allocation_id = p_allocation_id, release_failures = 1,
           last_failure = left('release: ' || p_release_error, 500), last_failure_at = now()
     where g.id = v_gateway_id and g.allocation_id = p_allocation_id;
  end if;
  return true;
end;
$$;
