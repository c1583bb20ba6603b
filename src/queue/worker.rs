//! Workers: claim, run, complete; heartbeat, stall recovery, wake-ups and graceful shutdown.
//!
//! One [`Worker`] is one claim loop with its own lease owner id. It keeps up to `concurrency`
//! handlers running (a semaphore); each claim asks for at most as many jobs as there are free
//! slots (and at most `batch`), so a worker never holds leases on jobs it cannot start.
//! Handlers run as tokio tasks; a panic counts as a retryable failure. Outcomes go over a
//! channel to a completer task that writes them in batches: while one batch is being written
//! the next one accumulates, so under load each statement completes hundreds of jobs, and when
//! idle a single job is written at once.
//!
//! [`QueueRuntime`] runs the workers of a process: one `LISTEN tessera_queue` connection that
//! wakes the workers of the notified queue (polling stays as the fallback), a reaper that returns
//! expired leases to `pending`, and start-up reconciliation of this node's leftovers. Shutdown
//! stops claiming, waits up to the grace period for running handlers and their completions, then
//! releases whatever is still running (without counting the attempt) so another worker takes it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use super::JobStatus;
use super::settings::{Backoff, QueueSettings};

/// How a handler failed: retry later, or give up now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (network trouble, a busy dependency).
    #[error("{0}")]
    Retryable(String),
    /// Will never succeed (bad payload, unknown kind): the job becomes `failed` at once.
    #[error("{0}")]
    Fatal(String),
}

impl JobError {
    pub fn retryable(e: impl std::fmt::Display) -> Self {
        Self::Retryable(e.to_string())
    }
    pub fn fatal(e: impl std::fmt::Display) -> Self {
        Self::Fatal(e.to_string())
    }
}

/// A claimed job, handed to its handler.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// 1 on the first run.
    pub attempt: i32,
    pub max_attempts: i32,
    /// The lease owner running it (`<node>/<queue>/<worker>`).
    pub worker: Arc<str>,
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;
/// A job handler: an async function of the job.
pub type Handler = Arc<dyn Fn(Job) -> HandlerFuture + Send + Sync>;

/// Handlers by job kind.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Handler>,
}

impl HandlerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the handler of `kind` (replacing an earlier one).
    pub fn register<F, Fut>(&mut self, kind: &str, f: F) -> &mut Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        self.handlers.insert(kind.to_string(), Arc::new(move |job| Box::pin(f(job))));
        self
    }

    fn get(&self, kind: &str) -> Option<Handler> {
        self.handlers.get(kind).cloned()
    }
}

/// Settings of one claim loop.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queue: String,
    /// `<node id>/<queue>/<n>`; must start with the node id and a `/` for start-up reconciliation.
    pub owner: String,
    pub concurrency: usize,
    pub batch: i64,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub backoff: Backoff,
    pub shutdown_grace: Duration,
}

struct Outcome {
    id: String,
    attempt: i32,
    max_attempts: i32,
    result: Result<(), JobError>,
}

/// One claim loop (see the module docs).
pub struct Worker {
    /// Durable commits: completions.
    pool: PgPool,
    /// `synchronous_commit = off`: claims, heartbeats and releases (see [`lease_pool`]).
    leases: PgPool,
    opts: WorkerOptions,
    registry: Arc<HandlerRegistry>,
    wake: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
}

type ClaimedRow = (String, String, serde_json::Value, i32, i32);

/// Claims up to `limit` due jobs of `queue` for `owner` in one statement, unless the queue is
/// paused.
///
/// # Errors
/// Database errors.
pub async fn claim(
    pool: &PgPool,
    queue: &str,
    owner: &str,
    limit: i64,
    lease: Duration,
) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
    let rows = sqlx::query!(
        // The locked rows are addressed by ctid (a TID scan) rather than looked up again through
        // the primary key: a row locked by this statement cannot have moved.
        "update queue.jobs j
            set status = 'running', attempts = j.attempts + 1, lease_owner = $3,
                lease_expires_at = now() + $4, updated_at = now()
          where j.ctid = any(array(
                select ctid from queue.jobs
                 where queue = $1 and status = 'pending' and run_at <= now()
                   and not exists (select 1 from queue.queues q where q.name = $1 and q.paused)
                 order by run_at
                 limit $2
                 for update skip locked))
      returning j.id, j.kind, j.payload, j.attempts, j.max_attempts",
        queue,
        limit,
        owner,
        lease as chrono::Duration,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.kind, r.payload, r.attempts, r.max_attempts)).collect())
}

impl Worker {
    pub fn new(
        pool: PgPool,
        leases: PgPool,
        opts: WorkerOptions,
        registry: Arc<HandlerRegistry>,
        wake: Arc<Notify>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self { pool, leases, opts, registry, wake, shutdown }
    }

    /// Runs until the shutdown signal, then finishes or releases its jobs.
    pub async fn run(mut self) {
        let owner: Arc<str> = Arc::from(self.opts.owner.as_str());
        let concurrency = self.opts.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Outcome>();
        let (stop_completer, completer_stop) = watch::channel(false);
        let completer =
            tokio::spawn(complete_loop(self.pool.clone(), owner.clone(), self.opts.backoff, done_rx, completer_stop));
        let heartbeat = tokio::spawn(heartbeat_loop(self.leases.clone(), owner.clone(), self.opts.lease));

        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let free = slots.available_permits().min(usize::try_from(self.opts.batch).unwrap_or(1).max(1));
            if free == 0 {
                tokio::select! {
                    permit = slots.acquire() => drop(permit),
                    _ = self.shutdown.changed() => {}
                }
                continue;
            }
            match claim(&self.leases, &self.opts.queue, &owner, free as i64, self.opts.lease).await {
                Ok(jobs) => {
                    let full = jobs.len() == free;
                    for (id, kind, payload, attempt, max_attempts) in jobs {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            // Cannot happen (we asked for at most the free slots); release the job.
                            tracing::error!(job_id = %id, "no free slot for a claimed job");
                            continue;
                        };
                        let job = Job {
                            id,
                            queue: self.opts.queue.clone(),
                            kind,
                            payload,
                            attempt,
                            max_attempts,
                            worker: owner.clone(),
                        };
                        spawn_job(job, &self.registry, done_tx.clone(), permit);
                    }
                    if full {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %self.opts.queue, error = %e, "claiming jobs failed");
                }
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.opts.poll_interval) => {}
                _ = self.shutdown.changed() => {}
            }
        }

        // Shutdown: no more claims. Let running handlers finish within the grace period.
        let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
        let finished = tokio::time::timeout(self.opts.shutdown_grace, slots.acquire_many(all)).await.is_ok();
        drop(done_tx);
        if !finished {
            tracing::warn!(queue = %self.opts.queue, "jobs still running at the end of the shutdown grace period are released");
            // Abandoned handlers keep their senders: write what has arrived and stop listening, so
            // that a late completion cannot race the release below.
            let _ = stop_completer.send(true);
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), completer).await;
        heartbeat.abort();
        match release(&self.leases, &owner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(queue = %self.opts.queue, released = n, "released running jobs on shutdown"),
            Err(e) => tracing::warn!(error = %e, "releasing jobs on shutdown failed; their leases will expire"),
        }
    }
}

fn spawn_job(
    job: Job,
    registry: &HandlerRegistry,
    done: mpsc::UnboundedSender<Outcome>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (id, attempt, max_attempts) = (job.id.clone(), job.attempt, job.max_attempts);
    let handler = registry.get(&job.kind);
    tokio::spawn(async move {
        let result = match handler {
            None => Err(JobError::Fatal(format!("no handler for job kind '{}'", job.kind))),
            // Its own task, so that a panicking handler becomes a failure instead of a lost job.
            Some(h) => match tokio::spawn(h(job)).await {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err(JobError::Retryable("handler panicked".into())),
                Err(_) => Err(JobError::Retryable("handler was cancelled".into())),
            },
        };
        let _ = done.send(Outcome { id, attempt, max_attempts, result });
        drop(permit);
    });
}

/// Writes outcomes in batches until every sender is gone, or until `stop` (then it writes what
/// has already arrived and returns).
async fn complete_loop(
    pool: PgPool,
    owner: Arc<str>,
    backoff: Backoff,
    mut rx: mpsc::UnboundedReceiver<Outcome>,
    mut stop: watch::Receiver<bool>,
) {
    const MAX_BATCH: usize = 5000;
    let mut batch = Vec::with_capacity(64);
    let mut stopping = false;
    loop {
        if stopping {
            if let Ok(o) = rx.try_recv() {
                batch.push(o);
            } else {
                return;
            }
        } else {
            tokio::select! {
                o = rx.recv() => match o {
                    Some(o) => batch.push(o),
                    None => return,
                },
                _ = stop.changed() => {
                    stopping = true;
                    continue;
                }
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let mut tries = 0;
        loop {
            match write_outcomes(&pool, &owner, &backoff, &batch).await {
                Ok(()) => break,
                Err(e) if tries < 20 => {
                    tries += 1;
                    tracing::warn!(error = %e, jobs = batch.len(), "recording job outcomes failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(e) => {
                    // The leases expire and the jobs run again: at least once, never lost.
                    tracing::error!(error = %e, jobs = batch.len(), "giving up recording job outcomes");
                    break;
                }
            }
        }
        batch.clear();
    }
}

/// An error message fit for a text column: at most 2 000 characters, and no NUL (which Postgres
/// text refuses, and which would fail the whole batch every time it is retried).
fn truncate(s: &str) -> String {
    s.chars().filter(|c| *c != '\0').take(2000).collect()
}

async fn write_outcomes(pool: &PgPool, owner: &str, backoff: &Backoff, batch: &[Outcome]) -> Result<(), sqlx::Error> {
    // Every update matches the attempt that ran as well as the owner: after a lease expired and
    // the same worker claimed the job again, the first attempt's late outcome must not touch the
    // second attempt.
    let (mut done, mut done_attempts) = (Vec::new(), Vec::new());
    let (mut f_ids, mut f_attempts, mut f_status, mut f_delay, mut f_err) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for o in batch {
        let outcome = match &o.result {
            Ok(()) => "done",
            Err(JobError::Fatal(_)) => "failed",
            Err(JobError::Retryable(_)) if o.attempt >= o.max_attempts => "dead",
            Err(JobError::Retryable(_)) => "retry",
        };
        metrics::counter!(crate::http::metrics::JOB_OUTCOMES, "outcome" => outcome).increment(1);
        match &o.result {
            Ok(()) => {
                done.push(o.id.as_str());
                done_attempts.push(o.attempt);
            }
            Err(e) => {
                let (status, delay) = match e {
                    JobError::Fatal(_) => (JobStatus::Failed, 0),
                    JobError::Retryable(_) if o.attempt >= o.max_attempts => (JobStatus::Dead, 0),
                    JobError::Retryable(_) => (JobStatus::Pending, backoff.delay(o.attempt).as_millis() as i64),
                };
                f_ids.push(o.id.as_str());
                f_attempts.push(o.attempt);
                f_status.push(status);
                f_delay.push(delay);
                f_err.push(truncate(&e.to_string()));
            }
        }
    }
    if !done.is_empty() {
        sqlx::query!(
            "update queue.jobs j
                set status = 'done', finished_at = now(), updated_at = now(), lease_owner = null,
                    lease_expires_at = null
               from unnest($1::text[], $3::int4[]) as d(id, attempt)
              where j.id = d.id and j.attempts = d.attempt and j.lease_owner = $2 and j.status = 'running'",
            &done as &[&str],
            owner,
            &done_attempts,
        )
        .execute(pool)
        .await?;
    }
    if !f_ids.is_empty() {
        sqlx::query!(
            "update queue.jobs j
                set status = f.status, last_error = f.err, updated_at = now(),
                    run_at = case when f.status = 'pending' then now() + f.delay_ms * interval '1 millisecond'
                                  else j.run_at end,
                    finished_at = case when f.status = 'pending' then null else now() end,
                    lease_owner = null, lease_expires_at = null
               from unnest($1::text[], $2::text[], $3::int8[], $4::text[], $6::int4[]) as f(id, status, delay_ms, err, attempt)
              where j.id = f.id and j.attempts = f.attempt and j.lease_owner = $5 and j.status = 'running'",
            &f_ids as &[&str],
            &f_status as &[JobStatus],
            &f_delay,
            &f_err,
            owner,
            &f_attempts,
        )
        .execute(pool)
        .await?;
    }
    Ok(())
}

async fn heartbeat_loop(pool: PgPool, owner: Arc<str>, lease: Duration) {
    let every = (lease / 3).max(Duration::from_millis(100));
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = sqlx::query!(
            // Only leases still alive: a job whose lease ran out (this process lost the database
            // for longer than a lease, or gave up recording its outcome) belongs to the reaper
            // and runs again; extending it would keep it `running` for ever.
            "update queue.jobs set lease_expires_at = now() + $2
              where lease_owner = $1 and status = 'running' and lease_expires_at > now()",
            &*owner,
            lease as chrono::Duration,
        )
        .execute(&pool)
        .await
        {
            tracing::warn!(error = %e, "extending job leases failed");
        }
    }
}

/// Hands this owner's running jobs back without counting the interrupted attempt.
async fn release(pool: &PgPool, owner: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "with up as (
            update queue.jobs set status = 'pending', attempts = greatest(attempts - 1, 0), lease_owner = null,
                   lease_expires_at = null, updated_at = now()
             where lease_owner = $1 and status = 'running'
         returning queue
         )
         select pg_notify($2, q) from (select distinct queue as q from up) s",
        owner,
        super::NOTIFY_CHANNEL,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// A pool on the same database whose sessions commit with `synchronous_commit = off`, for lease
/// bookkeeping only: a claim, a heartbeat or a release that a database crash loses leaves the
/// job `pending` (or its lease shorter), so the job runs again; it is never lost. That is the
/// at-least-once promise the lease already makes, and it spares the wake-up path one WAL flush
/// (about half a millisecond here) between enqueue and handler start. Enqueues and
/// completions stay durable.
pub fn lease_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    let opts = (*pool.connect_options()).clone().options([("synchronous_commit", "off")]);
    crate::store::pool_options(max_connections).connect_lazy_with(opts)
}

/// The running workers of one process (see the module docs).
pub struct QueueRuntime {
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl QueueRuntime {
    /// Reconciles this node's leftovers, then starts `settings.workers` claim loops for each of
    /// `queues`, the wake-up listener and the reaper.
    ///
    /// # Errors
    /// Database errors during reconciliation or while reading queue settings.
    pub async fn start(
        pool: &PgPool,
        node_id: &str,
        queues: &[&str],
        registry: HandlerRegistry,
        settings: &QueueSettings,
    ) -> anyhow::Result<Self> {
        let reconciled = super::reconcile_node(pool, node_id).await?;
        if reconciled > 0 {
            tracing::info!(jobs = reconciled, "returned jobs left running by this node's previous run");
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let registry = Arc::new(registry);
        let workers_total = u32::try_from(queues.len() * settings.workers).unwrap_or(64);
        let leases = lease_pool(pool, workers_total + 2);
        let mut wakers: HashMap<String, Vec<Arc<Notify>>> = HashMap::new();
        let mut workers = Vec::new();
        for queue in queues {
            let concurrency = sqlx::query_scalar!("select concurrency from queue.queues where name = $1", queue)
                .fetch_optional(pool)
                .await?;
            let concurrency = usize::try_from(concurrency.unwrap_or(super::DEFAULT_CONCURRENCY)).unwrap_or(1);
            let per_worker = concurrency.div_ceil(settings.workers).max(1);
            for n in 0..settings.workers {
                let wake = Arc::new(Notify::new());
                wakers.entry((*queue).to_string()).or_default().push(wake.clone());
                let opts = WorkerOptions {
                    queue: (*queue).to_string(),
                    owner: format!("{node_id}/{queue}/{n}"),
                    concurrency: per_worker,
                    batch: settings.batch,
                    poll_interval: settings.poll_interval,
                    lease: settings.lease,
                    backoff: settings.backoff,
                    shutdown_grace: settings.shutdown_grace,
                };
                let worker =
                    Worker::new(pool.clone(), leases.clone(), opts, registry.clone(), wake, shutdown_rx.clone());
                workers.push(tokio::spawn(worker.run()));
            }
        }
        let background = vec![
            tokio::spawn(listen_loop(pool.clone(), wakers, shutdown_rx.clone())),
            tokio::spawn(reap_loop(pool.clone(), settings.lease, settings.poll_interval)),
        ];
        Ok(Self { shutdown, workers, background })
    }

    /// Stops claiming, waits for running jobs (up to the grace period) and releases the rest.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for w in self.workers {
            let _ = w.await;
        }
        for b in self.background {
            b.abort();
        }
    }
}

/// `LISTEN tessera_queue`: wakes the workers of the notified queue. After a (re)connection every
/// worker is woken, since notifications sent meanwhile are lost.
async fn listen_loop(pool: PgPool, wakers: HashMap<String, Vec<Arc<Notify>>>, mut shutdown: watch::Receiver<bool>) {
    let wake_all = || wakers.values().flatten().for_each(|w| w.notify_one());
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "queue listener cannot connect; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(super::NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; polling meanwhile");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        wake_all();
        loop {
            tokio::select! {
                n = listener.recv() => match n {
                    Ok(n) => {
                        if let Some(ws) = wakers.get(n.payload()) {
                            ws.iter().for_each(|w| w.notify_one());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "queue listener lost its connection");
                        break;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Stall recovery on a timer: expired leases of any owner go back to `pending`.
async fn reap_loop(pool: PgPool, lease: Duration, poll: Duration) {
    let every = (lease / 3).max(poll).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(every).await;
        match super::reclaim_expired(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "reclaimed jobs whose lease expired"),
            Err(e) => tracing::warn!(error = %e, "reclaiming expired leases failed"),
        }
    }
}
