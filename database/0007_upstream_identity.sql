-- Upstream identity: one gateway process is in the pool once. Until now an upstream was only
-- lowercased, so one process could be registered under several spellings (127.0.0.1:9001,
-- 127.0.0.1:09001, 127.000.000.001:9001, [::ffff:127.0.0.1]:9001, 0.0.0.0:9001) and handed to
-- several orgs. Upstreams are now stored in one spelling (src/domain/ids.ts, normaliseUpstream);
-- this migration brings the rows stored before it to that spelling, and settles the processes
-- registered more than once.

-- Four decimal octets, printed without leading zeros (nginx reads 010 as 10, not 8), or null.
create function gateway_allocator_normalise_ipv4(p_text text) returns text
language plpgsql immutable strict as $$
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
$$;

-- An upstream in its one spelling, as normaliseUpstream (src/domain/ids.ts) makes it:
--   upstream: the normal form, or null when it is refused;
--   refused:  why it is refused;
--   loopback: for the unspecified address (0.0.0.0, [::], [::ffff:0.0.0.0]), refused now, the
--             address a connection to it reaches on Linux (127.0.0.1, [::1]): the process such a
--             row, accepted before, really points at.
-- IPv6 goes through inet, which prints it as RFC 5952 says (lowercase, no leading zeros, the
-- longest run of two or more zero groups as ::, the first of equal runs) and an IPv4-mapped
-- address as ::ffff:a.b.c.d, which becomes the plain IPv4 address.
create function gateway_allocator_parse_upstream(
  p_upstream text, out upstream text, out refused text, out loopback text
) language plpgsql immutable strict as $$
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
$$;

-- The normal form of an upstream, or null when the service refuses it (normaliseUpstream).
create function gateway_allocator_normalise_upstream(p_upstream text) returns text
language sql immutable strict as $$
  select (gateway_allocator_parse_upstream(p_upstream)).upstream
$$;

-- A gateway registered again under another spelling of its process. Such a row stores the
-- normal upstream too, and is left out of the unique index below (the first registration holds
-- the spelling); it names the gateway it duplicates.
alter table gateways add column duplicate_of text;

-- What this migration changed, row by row (an upstream's old spelling stays known, even after a
-- health check overwrites last_failure or the gateway is removed).
create table upstream_renames (
  table_name   text not null check (table_name in ('gateways', 'allocations')),
  row_id       uuid not null,
  old_upstream text not null,
  new_upstream text not null,
  why          text not null,
  renamed_at   timestamptz not null default now()
);

-- Brings every gateway and allocation to its upstream's normal spelling, and settles processes
-- registered more than once. The migration calls it once; calling it again changes only what
-- is not settled yet. A gateway's identity is its normal upstream, or for the unspecified
-- address the loopback address it reaches. On a collision (one process, several rows):
--   - no row is deleted;
--   - the oldest row (created_at, id) keeps the registration: it gets the normal upstream;
--   - every later row gets the normal upstream too, duplicate_of = the oldest's name, state
--     'draining' (never handed out again; an org it serves keeps it until that org stops) and
--     last_failure saying so: it is to be removed;
--   - when a later row serves an org, the oldest is drained too (with last_failure saying why),
--     whether it is free or serves an org itself: handing it out would give that process to a
--     second org. An operator sets it active again once the duplicates are removed.
-- A row whose upstream is refused now and reaches no process (0.x.x.x, an IPv4-compatible or
-- malformed IPv6 address, unix:...) could not be decoded any more: its upstream becomes
-- unusable-{id}.invalid:{port} (.invalid never resolves), the gateway is drained, and
-- last_failure says what it was and that it is to be removed.
-- Allocations keep a copy of their gateway's upstream: they get the same spelling (history
-- included, so that every stored upstream decodes).
create function gateway_allocator_normalise_gateways() returns void
language plpgsql as $$
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
$$;

-- The old index (lower(upstream)) would see the oldest row and its duplicates collide while they
-- take the one spelling: it goes first.
drop index gateways_one_per_upstream;

select gateway_allocator_normalise_gateways();

-- Upstreams are stored normalised: one registration per spelling, duplicates aside.
create unique index gateways_one_per_upstream on gateways (upstream) where duplicate_of is null;

-- Postgres keeps the rule too, whatever writes the row (a replica still running the previous
-- release during a rolling deploy, a manual insert): an upstream is stored in its normal spelling
-- (an alias then meets the unique index: 409), a refused one is an error, and a process that a
-- duplicate still holds is not registered again, even once the row it duplicates is gone (the
-- insert is skipped, so addGateway answers GatewayUpstreamTaken, as for the unique index).
create index gateways_duplicates on gateways (upstream) where duplicate_of is not null;

create function gateway_allocator_gateway_upstream() returns trigger
language plpgsql as $$
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
$$;

create trigger gateways_upstream_identity before insert or update of upstream on gateways
  for each row execute function gateway_allocator_gateway_upstream();
