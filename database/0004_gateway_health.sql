-- Dead gateways set aside: quarantine (with backoff), health, draining, and a claim that hands
-- out only available gateways, least recently used first.

alter table gateways
  -- 'draining': not handed out again (maintenance); it keeps serving its org until that org stops.
  add column state text not null default 'active' check (state in ('active', 'draining')),
  -- What the last health check or start said of it.
  add column health text not null default 'unknown' check (health in ('unknown', 'healthy', 'unhealthy')),
  -- Not handed out before this moment (it failed a start or a health check).
  add column quarantined_until timestamptz,
  -- Failures in a row since its last successful start: the quarantine doubles with each.
  add column consecutive_failures integer not null default 0,
  add column last_failure text,
  add column last_failure_at timestamptz,
  -- Claims go to the least recently allocated available gateway (wear is spread).
  add column last_allocated_at timestamptz;

drop index gateways_free;
create index gateways_available on gateways (last_allocated_at nulls first, created_at, id)
  where allocation_id is null and state = 'active';

-- Claims a free, available gateway for an org (see 0001 for the race this handles). Available:
-- active (not draining) and not in quarantine. Raises 'no_gateway_available' (GA001) when none is.
create or replace function proc_organizations_start_gateway(
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
    where g.allocation_id is null and g.state = 'active'
      and (g.quarantined_until is null or g.quarantined_until <= now())
    order by g.last_allocated_at nulls first, g.created_at, g.id
    limit 1
    for update skip locked;
  if not found then
    raise exception 'no_gateway_available' using errcode = 'GA001';
  end if;

  begin
    insert into allocations (id, organization_id, gateway_id, upstream, state, runner)
      values (p_allocation_id, p_organization_id, v_gateway.id, v_gateway.upstream, 'starting', p_runner);
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
    return query select v_existing.id, v_existing.gateway_id, v_existing.upstream, v_existing.state, true;
    return;
  end;

  return query select p_allocation_id, v_gateway.id, v_gateway.upstream, 'starting'::text, false;
end;
$$;
