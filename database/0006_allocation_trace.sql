-- The operator console: the trace of the start that made an allocation, and the indexes the
-- allocation listing reads (newest first, of every allocation or of one org's).

alter table allocations add column trace_id text;

create index allocations_newest on allocations (created_at desc, id desc);
create index allocations_by_org on allocations (organization_id, created_at desc, id desc);

-- The claim of 0005, recording on the allocation it creates the trace it ran in (a reused
-- allocation keeps its own; the row of a lost race is gone, so nothing is updated).
create function proc_organizations_start_gateway_traced(
  p_allocation_id uuid, p_organization_id uuid, p_runner text, p_trace_id text
) returns table (allocation_id uuid, gateway_id uuid, upstream text, generation bigint, state text, reused boolean)
language plpgsql as $$
begin
  return query select * from proc_organizations_start_gateway(p_allocation_id, p_organization_id, p_runner);
  update allocations a set trace_id = p_trace_id where a.id = p_allocation_id;
end;
$$;
