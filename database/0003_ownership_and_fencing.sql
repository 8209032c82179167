-- Ownership and fencing: exactly one runner works on an allocation at a time, and what it does
-- names the allocation it does it for.

-- A release names the runner that owns the allocation: a runner that lost the allocation (its
-- lease lapsed and another runner adopted it) cannot free the gateway under the new owner.
-- p_runner null keeps the old meaning (release whoever owns it).
drop function proc_organizations_gateways_stop(uuid, text);
create function proc_organizations_gateways_stop(
  p_allocation_id uuid, p_final_state text, p_runner text default null
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
     and (p_runner is null or a.runner = p_runner)
  returning a.gateway_id into v_gateway_id;
  if not found then
    return false;
  end if;
  update gateways g set allocation_id = null
   where g.id = v_gateway_id and g.allocation_id = p_allocation_id;
  return true;
end;
$$;

-- One gateway process never serves two orgs: an upstream is in the pool once. Upstreams are
-- stored normalised (lowercase host, no trailing dot), and compared the same way here.
update gateways set upstream = lower(upstream);
create unique index gateways_one_per_upstream on gateways (lower(upstream));

-- The nginx this database's allocations are routed by: every replica must share it (one
-- NGINX_CONF_DIR, one nginx) until several edges are supported. A replica whose NGINX_CONF_DIR
-- carries another edge id refuses to start.
create table edge (
  singleton  boolean primary key default true check (singleton),
  id         text not null,
  conf_dir   text not null,
  created_at timestamptz not null default now()
);
