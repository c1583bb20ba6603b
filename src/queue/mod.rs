//! The embedded durable job queue (DESIGN §8), on Postgres schema `queue`.
//!
//! Design choices:
//! - **Postgres is the store of record.** [`enqueue`] is generic over [`sqlx::PgExecutor`], so a
//!   job commits in the caller's transaction together with the change that caused it; nothing
//!   pending lives only in memory.
//! - **Deterministic, colon-free ids**: the hex SHA-256 of `(queue, kind, payload)` or of
//!   `(queue, key)` when the caller gives a key. The insert is `on conflict do nothing`, so
//!   enqueueing the same work twice (two replicas scheduling the same time slot, a retried
//!   request) makes one job. A job id is never reused: once done, the same content does nothing;
//!   callers that want a second run give a new key.
//! - **Claiming** ([`worker`]): one `update ... from (select ... for update skip locked limit n)`
//!   statement claims a batch and takes a lease (`lease_owner`, `lease_expires_at`). A heartbeat
//!   extends the leases of running jobs; an expired lease puts the job back to `pending` (stall
//!   recovery). Completions are collected in memory and written in batches
//!   (`update ... where id = any($1)`): the handler has already run, and until the batch lands
//!   the lease still protects the job.
//! - **Statuses**: `pending → running → done`; a retryable failure goes back to `pending` with
//!   exponential backoff, full jitter and a cap; after `max_attempts` it is `dead`. A handler
//!   that reports a fatal error makes the job `failed` at once. `drain` marks pending jobs
//!   `cancelled` (kept for the record, not deleted). `dead`, `failed` and `cancelled` jobs can be
//!   retried ([`retry`]), which starts their attempt count afresh.
//! - **Wake-ups**: a statement-level insert trigger calls `pg_notify('tessera_queue', queue)`,
//!   which Postgres delivers on commit; workers `LISTEN` and fall back to polling.
//! - **Leases and restarts**: the lease owner is `<node id>/<queue>/<worker>`; the node id of a
//!   gateway is stable across its restarts (a hash of host name and data dir), so start-up
//!   hands back exactly the jobs its previous life left `running` ([`reconcile_node`]).
//! - **Concurrency** is per queue and per process: `queue.queues.concurrency` (default 64)
//!   caps how many of a queue's jobs one gateway runs at once.
//! - **Durability**: enqueues and completions commit durably; claims, heartbeats and releases
//!   use `synchronous_commit = off` ([`worker::lease_pool`]): losing one in a database crash
//!   only means the job runs again, and the wake-up path saves a WAL flush.
//! - **Pause** is checked inside the claim statement, so a paused queue stops being claimed on
//!   the next claim (at most one poll interval later); jobs already claimed finish.

pub mod diag;
pub mod registry;
pub mod routes;
pub mod schedule;
pub mod settings;
pub mod worker;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use utoipa::ToSchema;

pub use registry::{Periodic, Registry, Running};
pub use worker::{Handler, HandlerRegistry, JobError, QueueRuntime, Worker, WorkerOptions};

/// Default attempt cap of a job.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 10;
/// Default per-process concurrency of a queue without a `queue.queues` row.
pub const DEFAULT_CONCURRENCY: i32 = 64;
/// Channel the insert trigger notifies, with the queue name as payload.
pub const NOTIFY_CHANNEL: &str = "tessera_queue";

/// Where a job is in its life: `pending → running → done`; a retryable failure goes back to
/// `pending`, or to `dead` once its attempts are spent; a fatal one makes it `failed`; a drain
/// makes pending jobs `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, ToSchema, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Running,
    Done,
    Failed,
    Dead,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [Self; 6] = [Self::Pending, Self::Running, Self::Done, Self::Failed, Self::Dead, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// "pending, running, done, failed, dead, cancelled", for messages.
    pub fn list() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|status| status.as_str() == s).ok_or(UnknownStatus)
    }
}

/// A string that is no [`JobStatus`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("status must be one of {}", JobStatus::list())]
pub struct UnknownStatus;

/// A checked queue name ([`valid_queue_name`]). Queue names are open (an operator may pause or
/// size a queue before any job of it exists, and callers create their own), so the type checks
/// the rule rather than listing names; the gateway's own queues are [`schedule::QUEUE`] and
/// [`diag::QUEUE`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct QueueName(String);

/// A string that breaks the queue name rule.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("queue names have 1 to 63 characters: a-z, 0-9, '_', '.', '-'")]
pub struct InvalidQueueName;

impl QueueName {
    /// # Errors
    /// [`InvalidQueueName`] when `name` breaks the rule.
    pub fn parse(name: &str) -> Result<Self, InvalidQueueName> {
        if valid_queue_name(name) { Ok(Self(name.to_string())) } else { Err(InvalidQueueName) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Identity of the work instead of its content (for example `renew@<time slot>`).
    pub key: Option<String>,
    /// Not before this time (default: now).
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: Option<i32>,
}

impl NewJob {
    pub fn new(queue: impl Into<String>, kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Self { queue: queue.into(), kind: kind.into(), payload, key: None, run_at: None, max_attempts: None }
    }

    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    #[must_use]
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    #[must_use]
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }

    /// The job's deterministic id (64 lowercase hex characters, never a colon).
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.queue.as_bytes());
        h.update([0]);
        match &self.key {
            Some(key) => {
                h.update(b"key");
                h.update([0]);
                h.update(key.as_bytes());
            }
            None => {
                h.update(self.kind.as_bytes());
                h.update([0]);
                // serde_json keeps object keys sorted (no `preserve_order`), so equal values
                // serialise identically.
                h.update(self.payload.to_string().as_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// The result of [`enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: String,
    /// False when a job with this id already existed (nothing was written).
    pub created: bool,
}

/// Enqueues one job in the caller's transaction (or on its own when given a pool).
///
/// # Errors
/// Database errors.
pub async fn enqueue<'e, E: PgExecutor<'e>>(db: E, job: &NewJob) -> Result<Enqueued, sqlx::Error> {
    let id = job.id();
    let done = sqlx::query!(
        "insert into queue.jobs (id, queue, kind, payload, run_at, max_attempts)
         values ($1, $2, $3, $4, coalesce($5, now()), $6)
         on conflict (id) do nothing",
        id,
        job.queue,
        job.kind,
        job.payload,
        job.run_at,
        job.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
    )
    .execute(db)
    .await?;
    Ok(Enqueued { id, created: done.rows_affected() == 1 })
}

/// Enqueues many jobs in one statement (bulk loads, benchmarks); returns how many were new.
///
/// # Errors
/// Database errors.
pub async fn enqueue_many<'e, E: PgExecutor<'e>>(db: E, jobs: &[NewJob]) -> Result<u64, sqlx::Error> {
    let ids: Vec<String> = jobs.iter().map(NewJob::id).collect();
    let queues: Vec<String> = jobs.iter().map(|j| j.queue.clone()).collect();
    let kinds: Vec<String> = jobs.iter().map(|j| j.kind.clone()).collect();
    let payloads: Vec<serde_json::Value> = jobs.iter().map(|j| j.payload.clone()).collect();
    let run_at: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.run_at).collect();
    let max: Vec<i32> = jobs.iter().map(|j| j.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)).collect();
    let done = sqlx::query!(
        "insert into queue.jobs (id, queue, kind, payload, run_at, max_attempts)
         select id, queue, kind, payload, coalesce(run_at, now()), max_attempts
           from unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::timestamptz[], $6::int[])
                as t(id, queue, kind, payload, run_at, max_attempts)
         on conflict (id) do nothing",
        &ids,
        &queues,
        &kinds,
        &payloads,
        &run_at as &[Option<DateTime<Utc>>],
        &max,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Checks a queue name: 1–63 characters of `a-z 0-9 _ . -`, starting with a letter or digit.
pub fn valid_queue_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-'))
}

/// One queue with its controls and job counts.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    pub name: String,
    pub paused: bool,
    pub concurrency: i32,
    pub pending: i64,
    pub running: i64,
    pub done: i64,
    pub failed: i64,
    pub dead: i64,
    pub cancelled: i64,
    /// Age in seconds of the oldest job that is due and still pending.
    pub oldest_pending_secs: Option<f64>,
}

/// Every known queue (with a control row or at least one job), by name.
///
/// # Errors
/// Database errors.
pub async fn list_queues(db: impl PgExecutor<'_>) -> Result<Vec<QueueStats>, sqlx::Error> {
    queue_stats(db, None).await
}

/// One queue's stats; `None` when the queue is unknown.
///
/// # Errors
/// Database errors.
pub async fn stats(db: impl PgExecutor<'_>, name: &str) -> Result<Option<QueueStats>, sqlx::Error> {
    Ok(queue_stats(db, Some(name)).await?.pop())
}

/// The stats of every queue, or of the one named.
async fn queue_stats(db: impl PgExecutor<'_>, name: Option<&str>) -> Result<Vec<QueueStats>, sqlx::Error> {
    sqlx::query_as!(
        QueueStats,
        r#"
    with names as (
        select name from queue.queues where $1::text is null or name = $1
        union
        select distinct queue from queue.jobs where $1::text is null or queue = $1
    ), counts as (
        select queue, status, count(*) as n,
               extract(epoch from now() - min(run_at) filter (where run_at <= now()))::float8 as oldest
          from queue.jobs where $1::text is null or queue = $1
         group by queue, status
    )
    select n.name as "name!",
           coalesce(q.paused, false) as "paused!",
           coalesce(q.concurrency, 64) as "concurrency!",
           coalesce(sum(c.n) filter (where c.status = 'pending'), 0)::int8 as "pending!",
           coalesce(sum(c.n) filter (where c.status = 'running'), 0)::int8 as "running!",
           coalesce(sum(c.n) filter (where c.status = 'done'), 0)::int8 as "done!",
           coalesce(sum(c.n) filter (where c.status = 'failed'), 0)::int8 as "failed!",
           coalesce(sum(c.n) filter (where c.status = 'dead'), 0)::int8 as "dead!",
           coalesce(sum(c.n) filter (where c.status = 'cancelled'), 0)::int8 as "cancelled!",
           max(c.oldest) filter (where c.status = 'pending') as oldest_pending_secs
      from names n
      left join queue.queues q on q.name = n.name
      left join counts c on c.queue = n.name
     group by n.name, q.paused, q.concurrency
     order by n.name"#,
        name
    )
    .fetch_all(db)
    .await
}

/// Pauses or resumes a queue (creating its control row). Resuming wakes idle workers.
///
/// # Errors
/// Database errors.
pub async fn set_paused(db: impl PgExecutor<'_>, name: &str, paused: bool) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "with up as (
            insert into queue.queues (name, paused) values ($1, $2)
            on conflict (name) do update set paused = excluded.paused, updated_at = now()
            returning name
         )
         select pg_notify($3, name) from up where not $2",
        name,
        paused,
        NOTIFY_CHANNEL,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Sets a queue's per-process concurrency.
///
/// # Errors
/// Database errors (including the range check, 1..=4096).
pub async fn set_concurrency(db: impl PgExecutor<'_>, name: &str, concurrency: i32) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into queue.queues (name, concurrency) values ($1, $2)
         on conflict (name) do update set concurrency = excluded.concurrency, updated_at = now()",
        name,
        concurrency,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Cancels every pending job of one queue (running jobs finish); returns how many.
///
/// # Errors
/// Database errors.
pub async fn drain(db: impl PgExecutor<'_>, name: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "update queue.jobs set status = 'cancelled', finished_at = now(), updated_at = now()
          where queue = $1 and status = 'pending'",
        name,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// A job as listed by `jobs tail` and the admin API.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub queue: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub status: JobStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The most recently changed jobs, newest first, optionally of one queue and status.
///
/// # Errors
/// Database errors.
pub async fn recent_jobs(
    db: impl PgExecutor<'_>,
    queue: Option<&str>,
    status: Option<JobStatus>,
    limit: i64,
) -> Result<Vec<JobView>, sqlx::Error> {
    sqlx::query_as!(
        JobView,
        r#"select id, queue, kind, payload, status as "status: JobStatus", attempts, max_attempts, run_at,
                  lease_owner, lease_expires_at, last_error, created_at, updated_at, finished_at
             from queue.jobs
            where ($1::text is null or queue = $1) and ($2::text is null or status = $2)
            order by updated_at desc, id desc limit $3"#,
        queue,
        status as Option<JobStatus>,
        limit,
    )
    .fetch_all(db)
    .await
}

/// One job by id.
///
/// # Errors
/// Database errors.
pub async fn find_job(db: impl PgExecutor<'_>, id: &str) -> Result<Option<JobView>, sqlx::Error> {
    sqlx::query_as!(
        JobView,
        r#"select id, queue, kind, payload, status as "status: JobStatus", attempts, max_attempts, run_at,
                  lease_owner, lease_expires_at, last_error, created_at, updated_at, finished_at
             from queue.jobs where id = $1"#,
        id,
    )
    .fetch_optional(db)
    .await
}

/// Why [`retry`] refused.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no such job")]
    NotFound,
    #[error("job is {0}; only dead, failed or cancelled jobs can be retried")]
    NotRetryable(JobStatus),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Puts a `dead`, `failed` or `cancelled` job back to `pending` with a fresh attempt count.
///
/// # Errors
/// [`RetryError`].
pub async fn retry(db: &sqlx::PgPool, id: &str) -> Result<JobView, RetryError> {
    // The row as updated, from the same statement: read afterwards, a worker could already
    // have claimed it. (sqlx's checked macros take only literals, so the column list is
    // written out here as in `recent_jobs` and `find_job`.)
    let row = sqlx::query_as!(
        JobView,
        r#"with up as (
            update queue.jobs set status = 'pending', attempts = 0, run_at = now(), lease_owner = null,
                   lease_expires_at = null, finished_at = null, updated_at = now()
             where id = $1 and status in ('dead', 'failed', 'cancelled')
         returning id, queue, kind, payload, status, attempts, max_attempts, run_at, lease_owner,
                   lease_expires_at, last_error, created_at, updated_at, finished_at
         ), wake as (select pg_notify($2, queue) from up)
         select up.id as "id!", up.queue as "queue!", up.kind as "kind!", up.payload as "payload!",
                up.status as "status!: JobStatus", up.attempts as "attempts!", up.max_attempts as "max_attempts!",
                up.run_at as "run_at!", up.lease_owner, up.lease_expires_at, up.last_error,
                up.created_at as "created_at!", up.updated_at as "updated_at!", up.finished_at
           from up, (select count(*) from wake) w"#,
        id,
        NOTIFY_CHANNEL,
    )
    .fetch_optional(db)
    .await?;
    match row {
        Some(job) => Ok(job),
        None => match find_job(db, id).await? {
            None => Err(RetryError::NotFound),
            Some(job) => Err(RetryError::NotRetryable(job.status)),
        },
    }
}

/// Start-up reconciliation: jobs that an earlier life of this node left `running` go back to
/// `pending` (or `dead` once their attempts are spent), whatever their lease says. Returns how
/// many rows moved.
///
/// # Errors
/// Database errors.
pub async fn reconcile_node(db: impl PgExecutor<'_>, node_id: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "update queue.jobs
            set status = case when attempts >= max_attempts then 'dead' else 'pending' end,
                finished_at = case when attempts >= max_attempts then now() end,
                last_error = 'interrupted: the worker restarted while the job ran',
                lease_owner = null, lease_expires_at = null, run_at = now(), updated_at = now()
          where status = 'running' and starts_with(lease_owner, $1 || '/')",
        node_id,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Stall recovery: running jobs whose lease expired (their worker died or hangs) go back to
/// `pending`, or `dead` once their attempts are spent. Returns how many rows moved.
///
/// # Errors
/// Database errors.
pub async fn reclaim_expired(db: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "update queue.jobs
            set status = case when attempts >= max_attempts then 'dead' else 'pending' end,
                finished_at = case when attempts >= max_attempts then now() end,
                last_error = 'lease expired: the worker stopped heart-beating',
                lease_owner = null, lease_expires_at = null, updated_at = now()
          where status = 'running' and lease_expires_at < now()",
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Makes sure no other live process uses `node_id`; returns the id to use and the connection
/// that holds its lock.
///
/// Start-up hands back every job and delivery leased under this process's node id, which is
/// right for the previous life of this gateway and wrong for a live sibling that happens to
/// share it (two replicas with the same host name and data dir path, for example containers
/// with a pinned `hostname:`). A session advisory lock on the id, held for the life of the
/// process, tells them apart: when it is taken, this process runs under a fresh random id
/// instead (and so reconciles nothing of the sibling's).
///
/// # Errors
/// Database errors.
pub async fn claim_node_id(pool: &sqlx::PgPool, node_id: String) -> anyhow::Result<(String, sqlx::PgConnection)> {
    use sqlx::Connection;
    let mut conn = pool.acquire().await?.detach();
    if try_node_lock(&mut conn, &node_id).await? {
        return Ok((node_id, conn));
    }
    let fresh = format!("{node_id}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    tracing::warn!(node_id = %node_id, fresh = %fresh, "another live gateway uses this node id; running under a fresh one");
    if !try_node_lock(&mut conn, &fresh).await? {
        conn.close().await.ok();
        anyhow::bail!("cannot take a node id lock");
    }
    Ok((fresh, conn))
}

/// Takes the session advisory lock of `node_id` on `conn`, unless another session holds it.
async fn try_node_lock(conn: &mut sqlx::PgConnection, node_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select pg_try_advisory_lock(hashtextextended('tessera-node:' || $1, 0)) as "locked!""#,
        node_id
    )
    .fetch_one(conn)
    .await
}

/// A node id that stays the same across restarts of one gateway: a hash of the host name and
/// the data dir (two gateways on one host have different data dirs; the gateway lock forbids
/// two on the same one).
pub fn node_id_for(data_dir: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut h = Sha256::new();
    h.update(host.trim().as_bytes());
    h.update([0]);
    h.update(data_dir.as_os_str().as_encoded_bytes());
    format!("n{}", &hex::encode(h.finalize())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_hex_and_colon_free() {
        let a = NewJob::new("q", "k", serde_json::json!({"b": 1, "a": [1, 2]}));
        let b = NewJob::new("q", "k", serde_json::json!({"a": [1, 2], "b": 1}));
        assert_eq!(a.id(), b.id(), "key order does not change the id");
        assert_eq!(a.id().len(), 64);
        assert!(a.id().bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a.id(), NewJob::new("q2", "k", a.payload.clone()).id());
        assert_ne!(a.id(), NewJob::new("q", "k2", a.payload.clone()).id());
        let keyed = NewJob::new("q", "k", serde_json::json!({"x": 1})).key("slot-1");
        assert_eq!(keyed.id(), NewJob::new("q", "other", serde_json::json!(null)).key("slot-1").id());
    }

    #[test]
    fn queue_names_are_checked() {
        assert!(valid_queue_name("maintenance"));
        assert!(valid_queue_name("a.b-c_1"));
        assert!(!valid_queue_name(""));
        assert!(!valid_queue_name("Upper"));
        assert!(!valid_queue_name("has:colon"));
        assert!(!valid_queue_name("-lead"));
        assert!(!valid_queue_name(&"a".repeat(64)));
    }
}
