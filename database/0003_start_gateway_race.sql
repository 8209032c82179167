-- Two runners starting the same org at once: both find no live allocation, both claim a gateway,
-- and the second insert hits allocations_one_live_per_org (after waiting for the first to
-- commit). That is not an error: the loser returns the winner's allocation (reused = true) and
-- gives its gateway back (the subtransaction rolls back its insert and gateway update).
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
