//! Periodic jobs on the queue: client-certificate renewal and clean-up of expired state.
//!
//! Every replica runs the same small scheduler: on each tick it enqueues, for every periodic job,
//! one job keyed by `<kind>@<time slot>` (slot = whole periods since the epoch). The id is
//! derived from that key, so however many replicas tick, each slot becomes exactly one job, and
//! the queue (leases, retries, stall recovery) does the rest. Each job is due at a random moment
//! within the first tenth of its slot, so a fleet does not renew in lock-step.
//!
//! A slot job only says "look now"; timing finer than a slot is the job's own business. The
//! renewal job renews every certificate due within its period and waits for each one's moment
//! (see [`crate::federation::client::renew_due`]), so a 90 s certificate renews at about 60 s
//! rather than at the next slot boundary. Its period is short (10 s) so that a pass never sleeps
//! long: a job waiting at shutdown holds the shutdown grace.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::watch;

use super::worker::{HandlerRegistry, JobError};
use super::{NewJob, enqueue};
use crate::sealing::SealingKey;

/// The queue periodic jobs run on.
pub const QUEUE: &str = "maintenance";
/// Renews client certificates of peers this gateway calls at two thirds of their own life.
pub const RENEW_CERTS: &str = "federation.renew_certs";
/// Deletes expired enrollment tokens and sessions, and finished jobs and deliveries past retention.
pub const CLEANUP: &str = "maintenance.cleanup";
/// Creates the audit log's day partitions ahead and drops the days past retention.
pub const AUDIT_RETENTION: &str = "federation.audit_retention";

/// The periodic jobs and their periods.
pub const PERIODIC: &[(&str, Duration)] = &[
    (RENEW_CERTS, RENEW_PERIOD),
    (CLEANUP, Duration::from_secs(300)),
    (AUDIT_RETENTION, Duration::from_secs(3600)),
    (crate::federation::embeddings::EMBED_INSIGHTS, crate::federation::embeddings::EMBED_PERIOD),
];

/// Period of the renewal job; each pass renews what falls due within it.
pub const RENEW_PERIOD: Duration = Duration::from_secs(10);

/// How long finished jobs and delivered webhooks are kept for inspection.
pub const RETENTION_DAYS: i32 = 7;

/// The job for `kind`'s slot containing `now`.
pub fn slot_job(kind: &str, period: Duration, now: DateTime<Utc>) -> NewJob {
    use rand::RngExt;
    let period_ms = period.as_millis().max(1) as i64;
    let slot = now.timestamp_millis().div_euclid(period_ms);
    let jitter = rand::rng().random_range(0..=period_ms / 10);
    let due = DateTime::<Utc>::from_timestamp_millis(slot * period_ms + jitter).unwrap_or(now);
    NewJob::new(QUEUE, kind, serde_json::json!({"slot": slot}))
        .key(format!("{kind}@{slot}"))
        .run_at(due)
        .max_attempts(3)
}

/// Enqueues the current slot of every periodic job on every tick until shutdown. The tick is
/// never longer than the shortest period, or whole slots would be skipped.
pub async fn run_scheduler(pool: PgPool, tick: Duration, mut shutdown: watch::Receiver<bool>) {
    let shortest = PERIODIC.iter().map(|(_, period)| *period).min().unwrap_or(tick);
    let tick = tick.min(shortest);
    loop {
        for (kind, period) in PERIODIC {
            if let Err(e) = enqueue(&pool, &slot_job(kind, *period, Utc::now())).await {
                tracing::warn!(kind, error = %e, "scheduling a periodic job failed");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Registers the handlers of the periodic jobs.
pub fn register(registry: &mut HandlerRegistry, pool: PgPool, sealing: SealingKey, audit_retention_days: u32) {
    {
        let pool = pool.clone();
        registry.register(RENEW_CERTS, move |_job| {
            let (pool, sealing) = (pool.clone(), sealing.clone());
            async move {
                // Failures are recorded per peer (status, retry with backoff, outbox event), not
                // by failing the job: a retry of the job would not be a retry of one peer.
                crate::federation::client::renew_due(&pool, &sealing, RENEW_PERIOD).await;
                Ok(())
            }
        });
    }
    {
        let pool = pool.clone();
        registry.register(AUDIT_RETENTION, move |_job| {
            let pool = pool.clone();
            async move {
                crate::federation::audit::maintain(&pool, audit_retention_days)
                    .await
                    .map(|_| ())
                    .map_err(JobError::retryable)
            }
        });
    }
    registry.register(CLEANUP, move |_job| {
        let pool = pool.clone();
        async move { cleanup(&pool).await.map_err(JobError::retryable) }
    });
}

/// One clean-up pass; each statement is independent.
///
/// # Errors
/// Database errors.
pub async fn cleanup(pool: &PgPool) -> Result<(), sqlx::Error> {
    let statements: [&'static str; 5] = [
        // A day after expiry a token answers 404 instead of 410; nothing else depends on it.
        "delete from federation_enrollment_tokens where expires_at < now() - interval '1 day'",
        "delete from sessions where expires_at < now() - interval '1 day' or revoked_at < now() - interval '1 day'",
        "delete from queue.jobs where status in ('done', 'cancelled') and finished_at < now() - make_interval(days => $1)",
        "delete from outbox.deliveries where status = 'done' and delivered_at < now() - make_interval(days => $1)",
        "delete from queue.diag_runs where started_at < now() - make_interval(days => $1)",
    ];
    for sql in statements {
        let q = sqlx::query(sql);
        let q = if sql.contains("$1") { q.bind(RETENTION_DAYS) } else { q };
        q.execute(pool).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_per_slot_due_early_in_the_slot() {
        let period = Duration::from_secs(30);
        let t = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let a = slot_job(RENEW_CERTS, period, t);
        let b = slot_job(RENEW_CERTS, period, t + chrono::Duration::seconds(10));
        let c = slot_job(RENEW_CERTS, period, t + chrono::Duration::seconds(30));
        assert_eq!(a.id(), b.id(), "same slot, same job");
        assert_ne!(a.id(), c.id(), "next slot, next job");
        let due = a.run_at.unwrap();
        assert!(due >= t && due <= t + chrono::Duration::seconds(3), "{due}");
    }
}
