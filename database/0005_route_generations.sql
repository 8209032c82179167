-- Route generations: every allocation takes one at claim time, from one sequence, so a newer
-- allocation of an org always has a greater generation than any older one. nginx's route table
-- (NGINX_ROUTING=lua) refuses a route older than the one it holds for the org, and keeps a
-- tombstone after a removal: a late write of an old allocation (a zombie runner, a restore racing
-- a stop) can never replace a newer route or bring a removed one back.

create sequence route_generation;

alter table allocations add column generation bigint not null default nextval('route_generation');

-- The claim returns the generation with the allocation (the return type changes: drop, create).
drop function proc_organizations_start_gateway(uuid, uuid, text);
create function proc_organizations_start_gateway(
  p_allocation_id uuid, p_organization_id uuid, p_runner text
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
    return query select v_existing.id, v_existing.gateway_id, v_existing.upstream, v_existing.generation, v_existing.state, true;
    return;
  end;

  return query select a.id, a.gateway_id, a.upstream, a.generation, a.state, false
    from allocations a where a.id = p_allocation_id;
end;
$$;
