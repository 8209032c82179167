-- Crash recovery. Every process registers as a runner and holds a session-level advisory lock
-- on its runner key for as long as it lives. Postgres releases the lock the moment the process's
-- connection dies (kill -9, OOM, host reboot), so "is the runner of this allocation alive?" is
-- answered by Postgres itself, immediately, without waiting out a deadline.

create table runners (
  id           text primary key,
  hostname     text not null,
  pid          integer not null,
  started_at   timestamptz not null default now(),
  last_seen_at timestamptz not null default now()
);

create function gateway_allocator_runner_key(p_runner text) returns bigint
language sql immutable as $$
  select hashtextextended('gateway-allocator:runner:' || p_runner, 0)
$$;

-- True while some session holds the runner's advisory lock.
create function gateway_allocator_runner_alive(p_runner text) returns boolean
language sql stable as $$
  select exists (
    select 1 from pg_locks l
     where l.locktype = 'advisory' and l.granted and l.objsubid = 1
       and ((l.classid::bigint << 32) | l.objid::bigint) = gateway_allocator_runner_key(p_runner)
  )
$$;
