//! Periodic jobs on the queue: the scheduler, and the queue's own clean-up.
//!
//! Owners register their periodic jobs with [`super::Registry::periodic`] (federation its
//! certificate renewal, the audit log its retention, ...). Every replica runs the same small
//! scheduler: on each tick it enqueues, for every periodic job, one job keyed by
//! `<kind>@<time slot>` (slot = whole periods since the epoch). The id is derived from that key,
//! so however many replicas tick, each slot becomes exactly one job, and the queue (leases,
//! retries, stall recovery) does the rest. Each job is due at a random moment within the first
//! tenth of its slot, so a fleet does not run in lock-step.
//!
//! A slot job only says "look now"; timing finer than a slot is the job's own business (the
//! certificate renewal waits for each certificate's moment within its short period). A job
//! waiting at shutdown holds the shutdown grace, so periods of such jobs stay short.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::watch;

use super::registry::{Periodic, Registry};
use super::worker::JobError;
use super::{NewJob, enqueue};

/// The queue periodic jobs run on.
pub const QUEUE: &str = "maintenance";
/// Deletes finished jobs and diagnostic runs past retention.
pub const CLEANUP: &str = "maintenance.cleanup";
/// Period of the clean-up jobs (this one and the owners' own).
pub const CLEANUP_PERIOD: Duration = Duration::from_secs(300);

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
pub async fn run_scheduler(pool: PgPool, tick: Duration, periodic: Vec<Periodic>, mut shutdown: watch::Receiver<bool>) {
    let shortest = periodic.iter().map(|p| p.period).min().unwrap_or(tick);
    let tick = tick.min(shortest);
    loop {
        for Periodic { kind, period } in &periodic {
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

/// Registers the queue's own clean-up ([`CLEANUP`]).
pub fn register(registry: &mut Registry, pool: PgPool) {
    registry.periodic(CLEANUP, CLEANUP_PERIOD, move |_job| {
        let pool = pool.clone();
        async move { cleanup(&pool).await.map_err(JobError::retryable) }
    });
}

/// One clean-up pass of the queue's own tables; each statement is independent.
///
/// # Errors
/// Database errors.
pub async fn cleanup(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "delete from queue.jobs where status in ('done', 'cancelled') and finished_at < now() - make_interval(days => $1)",
        RETENTION_DAYS
    )
    .execute(pool)
    .await?;
    sqlx::query!("delete from queue.diag_runs where started_at < now() - make_interval(days => $1)", RETENTION_DAYS)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_per_slot_due_early_in_the_slot() {
        let period = Duration::from_secs(30);
        let t = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let a = slot_job(CLEANUP, period, t);
        let b = slot_job(CLEANUP, period, t + chrono::Duration::seconds(10));
        let c = slot_job(CLEANUP, period, t + chrono::Duration::seconds(30));
        assert_eq!(a.id(), b.id(), "same slot, same job");
        assert_ne!(a.id(), c.id(), "next slot, next job");
        let due = a.run_at.unwrap();
        assert!(due >= t && due <= t + chrono::Duration::seconds(3), "{due}");
    }
}
