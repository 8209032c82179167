-- One definition of the live states and one claim order. Until now each procedure and index that
-- needs them spelled out the live states, and the claim's availability predicate and order were
-- copied by the health pass, the pool's stats and the query-plan test. From here on:
--   gateway_allocator_is_live(state)  the live states: an allocation in one holds its org and gateway;
--   gateways_claimable                the free gateways a claim may take (the availability predicate);
--   gateways_claim_order              gateways_claimable in the order claims take them.
-- The claim and the release are redefined to use them (same signatures, same behaviour).
-- database/schema.sql shows the resulting schema in one file.

-- The live states, as src/domain/allocation.ts (LiveState) lists them. The body is SQL-standard
-- (parsed here, independent of search_path) and the planner inlines it: a query written
-- `gateway_allocator_is_live(a.state)` is planned as `a.state in (...)`, so it uses the partial
-- indexes allocations_one_live_per_org and allocations_one_live_per_gateway, whose predicates
-- (0001) spell out the same list (test/db/liveStatesAndClaimOrder.test.ts checks they agree).
-- Indexes are built with it (allocations_live_by_state): never `create or replace` it with other
-- states, that would leave those indexes wrong. New live states are a new function and new indexes.
create function gateway_allocator_is_live(state text) returns boolean
  language sql immutable parallel safe
  return state in ('starting', 'active', 'stopping', 'rolling_back');

comment on function gateway_allocator_is_live(text) is
  'The live states (an allocation in one holds its org and its gateway). Inlined by the planner; '
  'indexes are built with it: never replace it with other states.';

-- Allocations a runner is moving (recovery reads them): live, not active. Its predicate listed
-- those three states, which the planner cannot prove from `gateway_allocator_is_live(a.state) and
-- a.state <> 'active'`: it is rebuilt with the function (a query listing the three states still
-- uses it). The new index is built before the old one goes; one transaction, never none.
create index allocations_live_by_state_new on allocations (state, updated_at)
  where gateway_allocator_is_live(state) and state <> 'active';
drop index allocations_live_by_state;
alter index allocations_live_by_state_new rename to allocations_live_by_state;

-- The free gateways a claim may take: no allocation, active (not draining), no release pending,
-- out of quarantine. The index gateways_available (0008) holds all but the quarantine condition,
-- so reads of this view are index-backed.
create view gateways_claimable as
  select g.* from gateways g
   where g.allocation_id is null and g.state = 'active' and g.unreleased_allocation_id is null
     and (g.quarantined_until is null or g.quarantined_until <= now());

comment on view gateways_claimable is
  'Free gateways a claim may take: no allocation, active, no release pending, out of quarantine.';

-- The claim order: least recently allocated first (never allocated ones before all), then oldest.
-- The order of gateways_available, so reading it is an index scan that stops at its LIMIT.
-- A claim locks through it: `select ... from gateways_claim_order limit 1 for update skip locked`
-- locks the gateways row (a locking clause applies to the tables of a view), skipping rows other
-- claims hold, in this order. Read it with a LIMIT and no join or ORDER BY of your own (a join
-- may return its rows in another order).
create view gateways_claim_order as
  select c.* from gateways_claimable c
   order by c.last_allocated_at nulls first, c.created_at, c.id;

comment on view gateways_claim_order is
  'gateways_claimable in the order claims take them (index gateways_available). '
  'Claim: select ... from gateways_claim_order limit 1 for update skip locked.';

-- The claim of 0008, taking the gateway through gateways_claim_order and telling live states with
-- gateway_allocator_is_live. Same signature, result and errors (see 0001 for the race it handles).
create or replace function proc_organizations_start_gateway(
  p_allocation_id uuid, p_organization_id uuid, p_runner text, p_trace_id text
) returns table (allocation_id uuid, gateway_id uuid, upstream text, generation bigint, state text, reused boolean)
language plpgsql as $$
#variable_conflict use_column
declare
  v_gateway record;
  v_existing allocations%rowtype;
begin
  select * into v_existing from allocations a
    where a.organization_id = p_organization_id and gateway_allocator_is_live(a.state);
  if found then
    return query select v_existing.id, v_existing.gateway_id, v_existing.upstream, v_existing.generation, v_existing.state, true;
    return;
  end if;

  select c.id, c.name, c.upstream into v_gateway from gateways_claim_order c limit 1 for update skip locked;
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
      where a.organization_id = p_organization_id and gateway_allocator_is_live(a.state);
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

-- The release of 0008, telling live states with gateway_allocator_is_live. Same signature and behaviour.
create or replace function proc_organizations_gateways_stop(
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
     and gateway_allocator_is_live(a.state)
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
