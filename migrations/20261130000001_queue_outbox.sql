-- The embedded job queue and the transactional outbox (DESIGN §8).
--
-- Postgres is the only store of record for pending work: a job or an outbox row is written in
-- the same transaction as the change that caused it, and nothing pending lives only in memory.

create schema queue;

-- Named queues. A queue exists implicitly as soon as a job names it; a row here only records
-- its controls. `concurrency` caps how many of its jobs one worker process runs at once.
create table queue.queues (
    name        text primary key check (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    paused      boolean not null default false,
    concurrency integer not null default 64 check (concurrency between 1 and 4096),
    updated_at  timestamptz not null default now()
);

create table queue.jobs (
    -- Deterministic and colon-free: hex SHA-256 of (queue, kind, payload) or of a caller key,
    -- so enqueueing the same work twice makes one job.
    id               text primary key check (id ~ '^[0-9a-f]{64}$'),
    queue            text not null,
    kind             text not null,
    payload          jsonb not null default '{}',
    status           text not null default 'pending'
                     check (status in ('pending', 'running', 'done', 'failed', 'dead', 'cancelled')),
    attempts         integer not null default 0,
    max_attempts     integer not null default 10 check (max_attempts >= 1),
    run_at           timestamptz not null default now(),
    -- `<node id>/<worker>`: the node id is stable across restarts of one gateway, so start-up
    -- can take back exactly the jobs its previous life left `running`.
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    finished_at      timestamptz
);
-- The claim scans this: ready jobs of one queue in run_at order. Only `pending` rows are in it,
-- so it stays small however many finished jobs are retained.
create index jobs_ready on queue.jobs (queue, run_at) where status = 'pending';
-- Stall recovery and start-up reconciliation look at running jobs only.
create index jobs_running on queue.jobs (lease_expires_at) where status = 'running';
-- `queue stats`, `jobs tail` and retention.
create index jobs_by_queue_status on queue.jobs (queue, status);
create index jobs_finished on queue.jobs (finished_at) where finished_at is not null;

-- A write wakes idle workers at once: NOTIFY is transactional, so it fires only when the
-- enqueueing transaction commits, and Postgres folds identical notifications of one
-- transaction into one. Statement-level, so a bulk enqueue notifies once per queue.
create function queue.notify_jobs() returns trigger language plpgsql as $$
begin
    perform pg_notify('tessera_queue', q) from (select distinct queue as q from inserted) s;
    return null;
end $$;
create trigger jobs_notify after insert on queue.jobs
    referencing new table as inserted for each statement execute function queue.notify_jobs();

-- Jobs that become pending again (retry, replay, resume) are announced by the code that moves
-- them (`pg_notify` in the same statement), not by an update trigger: a trigger with transition
-- tables would tax every claim and completion, which are updates too.

-- Runs of the built-in diagnostic job kind `diag.probe` (see `queue::diag`): one row per
-- handler start, so exactly-once and backoff can be checked from outside the process.
create table queue.diag_runs (
    job_id     text not null,
    attempt    integer not null,
    worker     text not null,
    started_at timestamptz not null default clock_timestamp()
);
create index diag_runs_job on queue.diag_runs (job_id);

create schema outbox;

-- Operator-registered webhook receivers (deleting one deletes its pending deliveries). The secret is sealed (AES-256-GCM with the gateway's
-- sealing key), so a raw read of the database never shows it.
create table outbox.webhook_endpoints (
    id            uuid primary key,
    url           text not null,
    secret_sealed text not null,
    -- Event names, or '*' for all.
    events        text[] not null,
    created_at    timestamptz not null default now()
);

-- One row per (event, endpoint): the unit of delivery. `event_id` is the Idempotency-Key.
create table outbox.deliveries (
    id              uuid primary key,
    -- Delivery order per endpoint.
    seq             bigint generated always as identity,
    event_id        uuid not null,
    endpoint_id     uuid not null references outbox.webhook_endpoints (id) on delete cascade,
    event           text not null,
    payload         jsonb not null,
    status          text not null default 'pending'
                    check (status in ('pending', 'inflight', 'done', 'dead')),
    attempts        integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    lease_owner     text,
    lease_expires_at timestamptz,
    last_error      text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    delivered_at    timestamptz,
    unique (event_id, endpoint_id)
);
-- The head of each endpoint's line: its oldest delivery not yet done or dead.
create index deliveries_open on outbox.deliveries (endpoint_id, seq) where status in ('pending', 'inflight');
create index deliveries_dead on outbox.deliveries (updated_at desc) where status = 'dead';

create function outbox.notify_deliveries() returns trigger language plpgsql as $$
begin
    perform pg_notify('tessera_outbox', '');
    return null;
end $$;
create trigger deliveries_notify after insert on outbox.deliveries
    for each statement execute function outbox.notify_deliveries();
