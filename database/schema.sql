-- GENERATED FILE, DO NOT EDIT: the schema of a fresh database after every migration in
-- database/ (the last one: 0010_edges.sql), as PostgreSQL 18.4 prints it.
-- Regenerate it after adding a migration: npm run schema (scripts/schema.ts).
-- test/db/schema.test.ts fails while it differs from what that script writes.
-- The migrations, not this file, make a database: it is for reading (it does load, into an
-- empty database, and test/db/schema.test.ts checks that too).

-- Bodies are checked when they run (a function may name one printed after it).
SET check_function_bodies = false;

-- Sequences

CREATE SEQUENCE public.allocation_steps_id_seq AS bigint START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1;

CREATE SEQUENCE public.route_generation AS bigint START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1;

-- Tables

CREATE TABLE public.allocation_steps (
    id bigint DEFAULT nextval('public.allocation_steps_id_seq'::regclass) NOT NULL,
    allocation_id uuid NOT NULL,
    step text NOT NULL,
    event text NOT NULL,
    actor text NOT NULL,
    detail text,
    duration_ms integer,
    at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    CONSTRAINT allocation_steps_event_check CHECK (event = ANY (ARRAY['started'::text, 'completed'::text, 'failed'::text, 'timed_out'::text, 'skipped'::text, 'undo_started'::text, 'undone'::text, 'undo_failed'::text, 'undo_timed_out'::text, 'undo_skipped'::text])),
    CONSTRAINT allocation_steps_pkey PRIMARY KEY (id),
    CONSTRAINT allocation_steps_step_check CHECK (step = ANY (ARRAY['allocate'::text, 'dns'::text, 'nginx-config'::text, 'nginx-reload'::text, 'handshake'::text]))
);

CREATE TABLE public.allocations (
    id uuid NOT NULL,
    organization_id uuid NOT NULL,
    gateway_id uuid,
    upstream text NOT NULL,
    state text NOT NULL,
    runner text NOT NULL,
    error jsonb,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    generation bigint DEFAULT nextval('public.route_generation'::regclass) NOT NULL,
    trace_id text,
    CONSTRAINT allocations_pkey PRIMARY KEY (id),
    CONSTRAINT allocations_state_check CHECK (state = ANY (ARRAY['starting'::text, 'active'::text, 'stopping'::text, 'rolling_back'::text, 'released'::text, 'rolled_back'::text]))
);

CREATE TABLE public.edge (
    singleton boolean DEFAULT true NOT NULL,
    id text NOT NULL,
    conf_dir text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT edge_pkey PRIMARY KEY (singleton),
    CONSTRAINT edge_singleton_check CHECK (singleton)
);

CREATE TABLE public.edge_removals_owed (
    edge_id uuid NOT NULL,
    allocation_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    generation bigint NOT NULL,
    gateway_id uuid NOT NULL,
    reason text,
    since timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT edge_removals_owed_pkey PRIMARY KEY (edge_id, allocation_id)
);

CREATE TABLE public.edges (
    id uuid NOT NULL,
    name text NOT NULL,
    route_api_url text NOT NULL,
    probe_url text NOT NULL,
    secret text NOT NULL,
    local boolean DEFAULT false NOT NULL,
    state text DEFAULT 'active'::text NOT NULL,
    behind boolean DEFAULT true NOT NULL,
    behind_mark bigint DEFAULT 0 NOT NULL,
    boot_id text,
    acked_generation bigint DEFAULT 0 NOT NULL,
    acked_at timestamp with time zone,
    last_seen timestamp with time zone,
    last_error text,
    route_count integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT edges_name_key UNIQUE (name),
    CONSTRAINT edges_pkey PRIMARY KEY (id),
    CONSTRAINT edges_route_api_url_key UNIQUE (route_api_url),
    CONSTRAINT edges_state_check CHECK (state = ANY (ARRAY['active'::text, 'draining'::text]))
);

CREATE TABLE public.gateway_allocator_migrations (
    migration_id integer NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    name text NOT NULL,
    CONSTRAINT gateway_allocator_migrations_pkey PRIMARY KEY (migration_id)
);

CREATE TABLE public.gateways (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    upstream text NOT NULL,
    allocation_id uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    state text DEFAULT 'active'::text NOT NULL,
    health text DEFAULT 'unknown'::text NOT NULL,
    quarantined_until timestamp with time zone,
    consecutive_failures integer DEFAULT 0 NOT NULL,
    last_failure text,
    last_failure_at timestamp with time zone,
    last_allocated_at timestamp with time zone,
    duplicate_of text,
    unreleased_allocation_id uuid,
    release_failures integer DEFAULT 0 NOT NULL,
    CONSTRAINT gateways_allocation_id_key UNIQUE (allocation_id),
    CONSTRAINT gateways_health_check CHECK (health = ANY (ARRAY['unknown'::text, 'healthy'::text, 'unhealthy'::text])),
    CONSTRAINT gateways_name_key UNIQUE (name),
    CONSTRAINT gateways_pkey PRIMARY KEY (id),
    CONSTRAINT gateways_state_check CHECK (state = ANY (ARRAY['active'::text, 'draining'::text]))
);

CREATE TABLE public.runners (
    id text NOT NULL,
    hostname text NOT NULL,
    pid integer NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    last_seen_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT runners_pkey PRIMARY KEY (id)
);

CREATE TABLE public.upstream_renames (
    table_name text NOT NULL,
    row_id uuid NOT NULL,
    old_upstream text NOT NULL,
    new_upstream text NOT NULL,
    why text NOT NULL,
    renamed_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT upstream_renames_table_name_check CHECK (table_name = ANY (ARRAY['gateways'::text, 'allocations'::text]))
);

-- Sequences owned by a column

ALTER SEQUENCE public.allocation_steps_id_seq OWNED BY public.allocation_steps.id;

-- Functions

CREATE OR REPLACE FUNCTION public.gateway_allocator_gateway_upstream()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
declare
  v_parsed record;
begin
  select * into v_parsed from gateway_allocator_parse_upstream(new.upstream);
  if v_parsed.upstream is null then
    raise exception 'upstream % is refused: %', new.upstream, v_parsed.refused using errcode = 'check_violation';
  end if;
  new.upstream := v_parsed.upstream;
  if tg_op = 'INSERT'
     and exists (select 1 from gateways g where g.upstream = new.upstream and g.duplicate_of is not null) then
    return null;
  end if;
  return new;
end;
$function$;

CREATE OR REPLACE FUNCTION public.gateway_allocator_is_live(state text)
 RETURNS boolean
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
RETURN (state = ANY (ARRAY['starting'::text, 'active'::text, 'stopping'::text, 'rolling_back'::text]));

CREATE OR REPLACE FUNCTION public.gateway_allocator_normalise_gateways()
 RETURNS void
 LANGUAGE plpgsql
AS $function$
declare
  v record;
  v_upstream text;
  v_serving text;
begin
  lock table gateways in share row exclusive mode;

  -- Later rows first: each takes the normal upstream once it is out of the unique index, before
  -- the oldest takes it.
  for v in
    select g.id, g.name, g.upstream, g.allocation_id, g.duplicate_of, p.refused,
           coalesce(p.upstream, p.loopback) as identity,
           row_number() over ordered as rank,
           first_value(g.name) over ordered as keeper,
           count(*) over (partition by coalesce(p.upstream, p.loopback)) as registrations
      from gateways g
     cross join lateral gateway_allocator_parse_upstream(g.upstream) p
    window ordered as (partition by coalesce(p.upstream, p.loopback) order by g.created_at, g.id)
     order by rank desc, g.created_at, g.id
  loop
    if v.identity is null then
      v_upstream := coalesce(
        gateway_allocator_normalise_upstream('unusable-' || v.id || '.invalid:' || substring(v.upstream from '[^:]*$')),
        'unusable-' || v.id || '.invalid:1');
      update gateways
         set upstream = v_upstream, state = 'draining', last_failure_at = now(),
             last_failure = left(format('upstream %s is refused since migration 0007 (%s): stored as %s, which '
               'reaches nothing; drained, remove this gateway', v.upstream, v.refused, v_upstream), 500)
       where id = v.id;
      insert into upstream_renames (table_name, row_id, old_upstream, new_upstream, why)
        values ('gateways', v.id, v.upstream, v_upstream, v.refused);
    elsif v.rank > 1 then
      update gateways
         set upstream = v.identity, duplicate_of = v.keeper, state = 'draining', last_failure_at = now(),
             last_failure = left(format('duplicates gateway %s (same process: %s, registered here as %s): '
               'drained so that one process never serves two orgs; remove this gateway once it serves no org',
               v.keeper, v.identity, v.upstream), 500)
       where id = v.id and (duplicate_of is distinct from v.keeper or upstream <> v.identity);
      if v.upstream <> v.identity then
        insert into upstream_renames (table_name, row_id, old_upstream, new_upstream, why)
          values ('gateways', v.id, v.upstream, v.identity, 'duplicates gateway ' || v.keeper);
      end if;
    else
      -- The oldest holds the registration (a duplicate of a gateway since removed becomes it).
      update gateways set upstream = v.identity, duplicate_of = null
       where id = v.id and (upstream <> v.identity or duplicate_of is not null);
      if v.upstream <> v.identity then
        insert into upstream_renames (table_name, row_id, old_upstream, new_upstream, why)
          values ('gateways', v.id, v.upstream, v.identity,
                  coalesce(v.refused || ': it reaches ' || v.identity, 'normal spelling'));
      end if;
      if v.registrations > 1 then
        select string_agg(g.name, ', ' order by g.created_at, g.id) into v_serving
          from gateways g
         where g.upstream = v.identity and g.id <> v.id and g.allocation_id is not null;
        if v_serving is not null then
          update gateways
             set state = 'draining', last_failure_at = now(),
                 last_failure = left(format('its process (%s) is registered again as %s, which serves an org: '
                   'drained so that the process is not handed to a second org; set it active again once %s '
                   'is removed', v.identity, v_serving, v_serving), 500)
           where id = v.id and state <> 'draining';
        end if;
      end if;
    end if;
  end loop;

  -- Allocations: the same spelling; a refused one that reaches nothing names its gateway's
  -- placeholder (or its own id once the gateway is gone).
  with renamed as (
    select a.id, a.upstream as old_upstream, p.refused,
           coalesce(p.upstream, p.loopback,
             gateway_allocator_normalise_upstream(
               'unusable-' || coalesce(a.gateway_id, a.id) || '.invalid:' || substring(a.upstream from '[^:]*$')),
             'unusable-' || coalesce(a.gateway_id, a.id) || '.invalid:1') as new_upstream
      from allocations a
     cross join lateral gateway_allocator_parse_upstream(a.upstream) p
     where p.upstream is distinct from a.upstream),
  updated as (
    update allocations a set upstream = r.new_upstream
      from renamed r
     where a.id = r.id
    returning r.id, r.old_upstream, r.new_upstream, r.refused)
  insert into upstream_renames (table_name, row_id, old_upstream, new_upstream, why)
    select 'allocations', u.id, u.old_upstream, u.new_upstream,
           case when u.refused is null then 'normal spelling'
                when u.new_upstream like 'unusable-%' then u.refused
                else u.refused || ': it reaches ' || u.new_upstream end
      from updated u;
end;
$function$;

CREATE OR REPLACE FUNCTION public.gateway_allocator_normalise_ipv4(p_text text)
 RETURNS text
 LANGUAGE plpgsql
 IMMUTABLE STRICT
AS $function$
declare
  v_octet text;
  v_octets text[] := '{}';
begin
  if p_text !~ '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$' then
    return null;
  end if;
  foreach v_octet in array string_to_array(p_text, '.') loop
    v_octet := coalesce(nullif(ltrim(v_octet, '0'), ''), '0');
    if length(v_octet) > 3 or v_octet::integer > 255 then
      return null;
    end if;
    v_octets := v_octets || v_octet;
  end loop;
  return array_to_string(v_octets, '.');
end;
$function$;

CREATE OR REPLACE FUNCTION public.gateway_allocator_normalise_upstream(p_upstream text)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE STRICT
AS $function$
  select (gateway_allocator_parse_upstream(p_upstream)).upstream
$function$;

CREATE OR REPLACE FUNCTION public.gateway_allocator_parse_upstream(p_upstream text, OUT upstream text, OUT refused text, OUT loopback text)
 RETURNS record
 LANGUAGE plpgsql
 IMMUTABLE STRICT
AS $function$
declare
  v_host text;
  v_port text;
  v_inner text;
  v_ipv4 text;
  v_address inet;
begin
  if p_upstream ~* '^unix:' then
    refused := 'nginx reads "unix:" as a unix socket path';
    return;
  end if;
  if p_upstream like '[%' then
    v_host := substring(p_upstream from '^(\[[^]]*\]):');
    v_port := substring(p_upstream from '^\[[^]]*\]:(.*)$');
  else
    v_host := substring(p_upstream from '^(.*):');
    v_port := substring(p_upstream from ':([^:]*)$');
  end if;
  if v_host is null then
    refused := 'the port is missing';
    return;
  end if;
  if v_port !~ '^[0-9]+$' then
    refused := format('port "%s" is not a number', v_port);
    return;
  end if;
  -- Checked in two steps: a cast of six digits or more could overflow.
  if length(ltrim(v_port, '0')) not between 1 and 5 then
    refused := format('port %s is not in 1-65535', v_port);
    return;
  end if;
  if ltrim(v_port, '0')::integer > 65535 then
    refused := format('port %s is not in 1-65535', v_port);
    return;
  end if;
  v_port := ltrim(v_port, '0');
  v_host := lower(v_host);

  if v_host like '[%' then
    v_inner := substr(v_host, 2, length(v_host) - 2);
    if position('%' in v_inner) > 0 then
      refused := 'IPv6 zone ids (%) are not supported';
      return;
    end if;
    if v_inner !~ '^[0-9a-f:.]+$' or position(':' in v_inner) = 0 then
      refused := format('%s is not an IPv6 address', v_host);
      return;
    end if;
    -- inet refuses an embedded IPv4 address with leading zeros (and takes 1.2.3 for 1.2.3.0).
    if position('.' in v_inner) > 0 then
      v_ipv4 := gateway_allocator_normalise_ipv4(substring(v_inner from '[^:]*$'));
      if v_ipv4 is null then
        refused := format('%s is not an IPv6 address', v_host);
        return;
      end if;
      v_inner := substring(v_inner from '^(.*:)') || v_ipv4;
    end if;
    begin
      v_address := v_inner::inet;
    exception when invalid_text_representation then
      refused := format('%s is not an IPv6 address', v_host);
      return;
    end;
    if v_address = '::'::inet then
      refused := '[::] is the unspecified address';
      loopback := '[::1]:' || v_port;
      return;
    elsif v_address << '::ffff:0:0/96'::inet then
      v_ipv4 := host('0.0.0.0'::inet + (v_address - '::ffff:0.0.0.0'::inet));
    elsif v_address << '::/96'::inet and v_address <> '::1'::inet then
      refused := format('%s is an IPv4-compatible IPv6 address (deprecated, unroutable)', v_host);
      return;
    else
      upstream := '[' || host(v_address) || ']:' || v_port;
      return;
    end if;
  else
    v_host := regexp_replace(v_host, '\.$', '');
    if v_host = 'unix' then
      refused := 'nginx reads "unix:" as a unix socket path';
      return;
    elsif v_host ~ '^[0-9.]+$' then
      v_ipv4 := gateway_allocator_normalise_ipv4(v_host);
      if v_ipv4 is null then
        refused := format('%s is not an IPv4 address', v_host);
        return;
      end if;
    elsif length(v_host) <= 253
          and v_host ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$' then
      upstream := v_host || ':' || v_port;
      return;
    else
      refused := format('"%s" is not a host name', v_host);
      return;
    end if;
  end if;

  -- An IPv4 address, written as one or mapped into IPv6.
  if split_part(v_ipv4, '.', 1) = '0' then
    refused := format('%s is not a gateway''s address (0.x.x.x is "this network")', v_ipv4);
    if v_ipv4 = '0.0.0.0' then
      loopback := '127.0.0.1:' || v_port;
    end if;
    return;
  end if;
  upstream := v_ipv4 || ':' || v_port;
end;
$function$;

CREATE OR REPLACE FUNCTION public.gateway_allocator_runner_alive(p_runner text)
 RETURNS boolean
 LANGUAGE sql
 STABLE
AS $function$
  select exists (
    select 1 from pg_locks l
     where l.locktype = 'advisory' and l.granted and l.objsubid = 1
       and ((l.classid::bigint << 32) | l.objid::bigint) = gateway_allocator_runner_key(p_runner)
  )
$function$;

CREATE OR REPLACE FUNCTION public.gateway_allocator_runner_key(p_runner text)
 RETURNS bigint
 LANGUAGE sql
 IMMUTABLE
AS $function$
  select hashtextextended('gateway-allocator:runner:' || p_runner, 0)
$function$;

CREATE OR REPLACE FUNCTION public.proc_organizations_gateways_stop(p_allocation_id uuid, p_final_state text, p_runner text, p_release_error text)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION public.proc_organizations_start_gateway(p_allocation_id uuid, p_organization_id uuid, p_runner text, p_trace_id text)
 RETURNS TABLE(allocation_id uuid, gateway_id uuid, upstream text, generation bigint, state text, reused boolean)
 LANGUAGE plpgsql
AS $function$
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
$function$;

-- Views

CREATE VIEW public.gateways_claimable AS
 SELECT id,
    name,
    upstream,
    allocation_id,
    created_at,
    state,
    health,
    quarantined_until,
    consecutive_failures,
    last_failure,
    last_failure_at,
    last_allocated_at,
    duplicate_of,
    unreleased_allocation_id,
    release_failures
   FROM public.gateways g
  WHERE allocation_id IS NULL AND state = 'active'::text AND unreleased_allocation_id IS NULL AND (quarantined_until IS NULL OR quarantined_until <= now()) AND NOT (EXISTS ( SELECT 1
           FROM public.edge_removals_owed o
          WHERE o.gateway_id = g.id));

CREATE VIEW public.gateways_claim_order AS
 SELECT id,
    name,
    upstream,
    allocation_id,
    created_at,
    state,
    health,
    quarantined_until,
    consecutive_failures,
    last_failure,
    last_failure_at,
    last_allocated_at,
    duplicate_of,
    unreleased_allocation_id,
    release_failures
   FROM public.gateways_claimable c
  ORDER BY last_allocated_at NULLS FIRST, created_at, id;

-- Indexes (other than those of primary keys and unique constraints)

CREATE INDEX allocation_steps_by_allocation ON public.allocation_steps USING btree (allocation_id, id);

CREATE INDEX allocations_by_org ON public.allocations USING btree (organization_id, created_at DESC, id DESC);

CREATE INDEX allocations_live_by_state ON public.allocations USING btree (state, updated_at) WHERE (public.gateway_allocator_is_live(state) AND (state <> 'active'::text));

CREATE INDEX allocations_newest ON public.allocations USING btree (created_at DESC, id DESC);

CREATE UNIQUE INDEX allocations_one_live_per_gateway ON public.allocations USING btree (gateway_id) WHERE (state = ANY (ARRAY['starting'::text, 'active'::text, 'stopping'::text, 'rolling_back'::text]));

CREATE UNIQUE INDEX allocations_one_live_per_org ON public.allocations USING btree (organization_id) WHERE (state = ANY (ARRAY['starting'::text, 'active'::text, 'stopping'::text, 'rolling_back'::text]));

CREATE INDEX edge_removals_owed_by_gateway ON public.edge_removals_owed USING btree (gateway_id);

CREATE UNIQUE INDEX edges_one_local ON public.edges USING btree (local) WHERE local;

CREATE INDEX gateways_available ON public.gateways USING btree (last_allocated_at NULLS FIRST, created_at, id) WHERE ((allocation_id IS NULL) AND (state = 'active'::text) AND (unreleased_allocation_id IS NULL));

CREATE INDEX gateways_duplicates ON public.gateways USING btree (upstream) WHERE (duplicate_of IS NOT NULL);

CREATE UNIQUE INDEX gateways_one_per_upstream ON public.gateways USING btree (upstream) WHERE (duplicate_of IS NULL);

CREATE INDEX gateways_unreleased ON public.gateways USING btree (id) WHERE (unreleased_allocation_id IS NOT NULL);

-- Foreign keys

ALTER TABLE ONLY public.allocation_steps ADD CONSTRAINT allocation_steps_allocation_id_fkey FOREIGN KEY (allocation_id) REFERENCES public.allocations(id);

ALTER TABLE ONLY public.allocations ADD CONSTRAINT allocations_gateway_id_fkey FOREIGN KEY (gateway_id) REFERENCES public.gateways(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.edge_removals_owed ADD CONSTRAINT edge_removals_owed_allocation_id_fkey FOREIGN KEY (allocation_id) REFERENCES public.allocations(id);

ALTER TABLE ONLY public.edge_removals_owed ADD CONSTRAINT edge_removals_owed_edge_id_fkey FOREIGN KEY (edge_id) REFERENCES public.edges(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.edge_removals_owed ADD CONSTRAINT edge_removals_owed_gateway_id_fkey FOREIGN KEY (gateway_id) REFERENCES public.gateways(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.gateways ADD CONSTRAINT gateways_allocation_fk FOREIGN KEY (allocation_id) REFERENCES public.allocations(id) DEFERRABLE INITIALLY DEFERRED;

ALTER TABLE ONLY public.gateways ADD CONSTRAINT gateways_unreleased_allocation_id_fkey FOREIGN KEY (unreleased_allocation_id) REFERENCES public.allocations(id);

-- Triggers

CREATE TRIGGER gateways_upstream_identity BEFORE INSERT OR UPDATE OF upstream ON public.gateways FOR EACH ROW EXECUTE FUNCTION public.gateway_allocator_gateway_upstream();

-- Comments

COMMENT ON TABLE public.edge_removals_owed IS 'Route removals an edge has not acknowledged: the gateway stays out of every claim until it has (or the edge is deleted).';

COMMENT ON TABLE public.edges IS 'The nginx edges (lua routing): every route change goes to each; one that missed a change is behind until caught up.';

COMMENT ON FUNCTION public.gateway_allocator_is_live(pg_catalog.text) IS 'The live states (an allocation in one holds its org and its gateway). Inlined by the planner; indexes are built with it: never replace it with other states.';

COMMENT ON VIEW public.gateways_claim_order IS 'gateways_claimable in the order claims take them (index gateways_available). Claim: select ... from gateways_claim_order limit 1 for update skip locked.';

COMMENT ON VIEW public.gateways_claimable IS 'Free gateways a claim may take: no allocation, active, no release pending, out of quarantine, no edge owing a removal.';
