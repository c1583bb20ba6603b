//! Rate limiting: fixed-window counters keyed by a string (`signin:<email>:<addr>`,
//! `grant:<id>`...).
//!
//! Tiers `local` and `standalone` count in process ([`memory::MemoryLimiter`]); tier
//! `federated` counts in Valkey so that replicas share one budget. The limiter is an enum rather
//! than a trait object because its methods are async and the set of back ends is closed.

pub mod memory;
pub mod valkey;

use std::time::Duration;

/// The outcome of a check or a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Under the limit; `remaining` more hits fit in this window.
    Allowed { remaining: u32 },
    /// Over the limit until the window ends.
    Denied { retry_after: Duration },
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// The back end could not be asked (for example Valkey is down). Callers fail closed.
#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct RateLimitError(pub String);

impl From<RateLimitError> for crate::http::error::ApiError {
    /// Fail closed: a request whose limit cannot be checked is refused with a 503 envelope (and
    /// `Retry-After`), never served without limits; the cause goes to the log.
    fn from(e: RateLimitError) -> Self {
        tracing::error!(error = %e, "rate limiter unavailable; refusing the request");
        Self::unavailable("Rate limiting is temporarily unavailable; retry later", 1)
    }
}

/// A rate limiter shared by all handlers (cheap to clone).
#[derive(Debug, Clone)]
pub enum RateLimiter {
    Memory(memory::MemoryLimiter),
    /// Shared by every replica; an outage is an error (fail closed), never an allowance.
    Valkey(valkey::ValkeyLimiter),
}

impl RateLimiter {
    pub fn in_memory() -> Self {
        Self::Memory(memory::MemoryLimiter::default())
    }

    /// Counters in Valkey, shared by every replica on it.
    pub fn valkey(valkey: crate::services::valkey::Valkey) -> Self {
        Self::Valkey(valkey::ValkeyLimiter::new(valkey))
    }

    /// `memory` or `valkey`, for logs and the doctor.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Valkey(_) => "valkey",
        }
    }

    /// Whether one more hit on `key` would be allowed, without counting it.
    ///
    /// # Errors
    /// The back end is unavailable.
    pub async fn check(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, RateLimitError> {
        match self {
            Self::Memory(m) => Ok(m.check(key, limit, window)),
            Self::Valkey(v) => v.check(key, limit, window).await,
        }
    }

    /// Counts one hit on `key` and says whether it was within `limit` per `window`.
    ///
    /// # Errors
    /// The back end is unavailable.
    pub async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, RateLimitError> {
        match self {
            Self::Memory(m) => Ok(m.hit(key, limit, window)),
            Self::Valkey(v) => v.hit(key, limit, window).await,
        }
    }
}
