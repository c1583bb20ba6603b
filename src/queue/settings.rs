//! Tuning of the queue and outbox workers. The values come from the gateway's configuration
//! ([`crate::config`]: flags of `tessera serve`, their variables, the TOML file), which checks
//! them; this module only owns their meaning and defaults:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `TESSERA_QUEUE_POLL_MS` | 1000 | polling fallback when no NOTIFY arrives |
//! | `TESSERA_QUEUE_LEASE_SECS` | 30 | lease of a claimed job; the heartbeat renews it every third |
//! | `TESSERA_QUEUE_WORKERS` | 1 | claim loops per queue per process |
//! | `TESSERA_QUEUE_BATCH` | 256 | most jobs one claim statement takes |
//! | `TESSERA_QUEUE_BACKOFF_BASE_MS` | 1000 | first retry delay (doubles each attempt, full jitter) |
//! | `TESSERA_QUEUE_BACKOFF_CAP_MS` | 3600000 | longest retry delay |
//! | `TESSERA_QUEUE_SHUTDOWN_GRACE_MS` | 10000 | how long shutdown waits for running jobs before releasing them |
//! | `TESSERA_OUTBOX_BACKOFF_BASE_MS` | 1000 | first webhook retry delay |
//! | `TESSERA_OUTBOX_BACKOFF_CAP_MS` | 3600000 | longest webhook retry delay |
//! | `TESSERA_OUTBOX_MAX_ATTEMPTS` | 12 | webhook attempts before `dead` |
//! | `TESSERA_OUTBOX_TIMEOUT_MS` | 10000 | one webhook request |
//! | `TESSERA_SCHEDULE_TICK_MS` | 15000 | how often the scheduler enqueues due periodic jobs (at most the shortest period, 10 s) |

use std::time::Duration;

/// Exponential backoff with full jitter, capped.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The upper bound of the delay after `attempt` failed attempts (1-based): base·2^(n-1), capped.
    pub fn ceiling(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }

    /// A delay drawn from the top 40 % of [`Backoff::ceiling`] (60–100 %): jitter spreads
    /// retries of many jobs that failed together, and since the ceiling doubles, the shortest
    /// next delay (120 % of this ceiling) is still longer than the longest one now, so delays
    /// always grow until the cap.
    pub fn delay(&self, attempt: i32) -> Duration {
        use rand::RngExt;
        let ceiling = self.ceiling(attempt).as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(ceiling * 3 / 5..=ceiling))
    }
}

/// Queue and outbox tuning (see the module docs for the variables).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub poll_interval: Duration,
    pub lease: Duration,
    pub workers: usize,
    pub batch: i64,
    pub backoff: Backoff,
    pub shutdown_grace: Duration,
    pub outbox_backoff: Backoff,
    pub outbox_max_attempts: i32,
    pub outbox_timeout: Duration,
    pub schedule_tick: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            workers: 1,
            batch: 256,
            backoff: Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(3600) },
            shutdown_grace: Duration::from_secs(10),
            outbox_backoff: Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(3600) },
            outbox_max_attempts: 12,
            outbox_timeout: Duration::from_secs(10),
            schedule_tick: Duration::from_secs(15),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let b = Backoff { base: Duration::from_millis(100), cap: Duration::from_millis(1000) };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_millis(1000));
        assert_eq!(b.ceiling(500), Duration::from_millis(1000));
        for attempt in 1..8 {
            let d = b.delay(attempt);
            assert!(d <= b.ceiling(attempt) && d >= b.ceiling(attempt) * 3 / 5, "{attempt}: {d:?}");
        }
    }
}
