//! `diag.probe`: a built-in diagnostic job kind, harmless by construction.
//!
//! It exists so that exactly-once delivery, retries and crash recovery of a running gateway can
//! be checked from outside the process: each handler start inserts one row into
//! `queue.diag_runs` (job id, attempt, worker, start time) and touches nothing else. Payload
//! fields, all optional: `sleepMs` (capped at 5 000) to keep the job running for a while,
//! `failFirst` (fail retryably while `attempt <= failFirst`), `fail` (`"retryable"` or
//! `"fatal"`: fail every time). Only admins (through the database or the admin API) can enqueue
//! jobs, and the job does no I/O beyond its one row.

use std::time::Duration;

use sqlx::PgPool;

use super::registry::Registry;
use super::worker::{Job, JobError};

/// The kind name.
pub const KIND: &str = "diag.probe";
/// The queue the gateway runs it on.
pub const QUEUE: &str = "diag";

/// Registers `diag.probe` on `registry`, run on [`QUEUE`].
pub fn register(registry: &mut Registry, pool: PgPool) {
    registry.handler(QUEUE, KIND, move |job: Job| {
        let pool = pool.clone();
        async move { probe(&pool, job).await }
    });
}

async fn probe(pool: &PgPool, job: Job) -> Result<(), JobError> {
    sqlx::query!(
        "insert into queue.diag_runs (job_id, attempt, worker) values ($1, $2, $3)",
        job.id,
        job.attempt,
        &*job.worker
    )
    .execute(pool)
    .await
    .map_err(JobError::retryable)?;
    let p = &job.payload;
    if let Some(ms) = p.get("sleepMs").and_then(serde_json::Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(ms.min(5_000))).await;
    }
    if let Some(n) = p.get("failFirst").and_then(serde_json::Value::as_i64)
        && i64::from(job.attempt) <= n
    {
        return Err(JobError::Retryable(format!("diag.probe: failing attempt {} of the first {n}", job.attempt)));
    }
    match p.get("fail").and_then(serde_json::Value::as_str) {
        Some("fatal") => Err(JobError::Fatal("diag.probe: asked to fail fatally".into())),
        Some(_) => Err(JobError::Retryable("diag.probe: asked to fail".into())),
        None => Ok(()),
    }
}
