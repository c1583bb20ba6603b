-- The federation audit log, partitioned by day, so retention drops whole partitions instead of
-- deleting rows (a benchmark database reached 1.4 GB, and its autovacuum skewed later runs).
--
-- * One partition per UTC day, `federation_audit_log_YYYYMMDD`, created ahead of time by the
--   retention job (`federation_audit_prepare`), which also drops the days older than
--   TESSERA_AUDIT_RETENTION_DAYS, one at a time (`federation_audit_drop_day`).
-- * A default partition catches any row whose day has no partition yet (the job was down), so
--   no write ever fails for want of a partition; the job later moves such rows into their day.
-- * The primary key becomes (at, id): a partitioned table's unique keys must hold the partition
--   key. Ids stay unique (one identity sequence) and keep their values.
alter table federation_audit_log rename to federation_audit_log_unpartitioned;
alter index federation_audit_log_pkey rename to federation_audit_log_unpartitioned_pkey;
alter index federation_audit_log_by_grant rename to federation_audit_log_unpartitioned_by_grant;
alter index federation_audit_log_at rename to federation_audit_log_unpartitioned_at;

create table federation_audit_log (
    id              bigint generated always as identity,
    at              timestamptz not null default now(),
    grant_id        uuid,
    peer_id         uuid,
    subject_user_id uuid,
    verb            text not null,
    resource        text,
    query_hash      text,
    outcome         text not null,
    deny_code       text,
    reason          text,
    rows            integer,
    bytes_out       bigint,
    latency_ms      double precision,
    primary key (at, id)
) partition by range (at);
create table federation_audit_log_default partition of federation_audit_log default;
create index federation_audit_log_by_grant on federation_audit_log (grant_id, at desc);

insert into federation_audit_log
       (id, at, grant_id, peer_id, subject_user_id, verb, resource, query_hash, outcome, deny_code, reason, rows,
        bytes_out, latency_ms)
       overriding system value
select id, at, grant_id, peer_id, subject_user_id, verb, resource, query_hash, outcome, deny_code, reason, rows,
       bytes_out, latency_ms
  from federation_audit_log_unpartitioned;
select setval(pg_get_serial_sequence('federation_audit_log', 'id'),
              coalesce((select max(id) from federation_audit_log), 0) + 1, false);
drop table federation_audit_log_unpartitioned;

-- Creates the partition of one UTC day, first moving that day's rows out of the default
-- partition (attaching checks the default holds none). False when it exists already.
create function federation_audit_ensure_day(day date) returns boolean language plpgsql as $$
declare
    part text := 'federation_audit_log_' || to_char(day, 'YYYYMMDD');
    lo timestamptz := day::timestamp at time zone 'UTC';
    hi timestamptz := (day + 1)::timestamp at time zone 'UTC';
begin
    if to_regclass(part) is not null then
        return false;
    end if;
    execute format('create table %I (like federation_audit_log including defaults including constraints)', part);
    execute format(
        'with moved as (delete from federation_audit_log_default where at >= %L and at < %L returning *)
         insert into %I select * from moved', lo, hi, part);
    execute format('alter table federation_audit_log attach partition %I for values from (%L) to (%L)', part, lo, hi);
    return true;
end $$;

-- The retention job's first call: partitions for today and `ahead_days` days, and for any day
-- that has rows in the default partition; deletes default rows older than `retention_days`
-- (today counts as day 0). Returns how many partitions were created.
create function federation_audit_prepare(retention_days integer, ahead_days integer) returns integer
language plpgsql as $$
declare
    today date := (now() at time zone 'UTC')::date;
    oldest date := today - retention_days;
    created integer := 0;
    d date;
begin
    for d in
        select distinct (at at time zone 'UTC')::date from federation_audit_log_default
        union
        select today + i from generate_series(0, ahead_days) i
    loop
        if d >= oldest and federation_audit_ensure_day(d) then
            created := created + 1;
        end if;
    end loop;
    delete from federation_audit_log_default where at < oldest::timestamp at time zone 'UTC';
    return created;
end $$;

-- The day partitions older than `retention_days`, oldest first.
create function federation_audit_expired_days(retention_days integer) returns setof text
language sql stable as $$
    select c.relname::text
      from pg_inherits i join pg_class c on c.oid = i.inhrelid
     where i.inhparent = 'federation_audit_log'::regclass
       and c.relname ~ '^federation_audit_log_[0-9]{8}$'
       and to_date(right(c.relname, 8), 'YYYYMMDD') < (now() at time zone 'UTC')::date - retention_days
     order by c.relname
$$;

-- Drops one day partition by name (only names of that pattern), for the retention job.
create function federation_audit_drop_day(part text) returns void language plpgsql as $$
begin
    if part !~ '^federation_audit_log_[0-9]{8}$' then
        raise exception 'not an audit day partition: %', part;
    end if;
    execute format('drop table %I', part);
end $$;
