//! Rate limiting: fixed-window counters keyed by a string (`signin:<email>:<addr>`,
//! `grant:<id>`...).
//!
//! Tiers `local` and `standalone` count in process ([`memory::MemoryLimiter`]); tier
//! `federated` counts in Valkey so that replicas share one budget. The limiter is an enum rather
//! than a trait object because its methods are async and the set of back ends is closed.
//!
//! To guard expensive work (a password hash), count first and decide on that count:
//! [`RateLimiter::reserve`] is one atomic hit, so N concurrent requests against a budget of B get
//! at most B allowances between them. A check followed later by a hit would let every request
//! that arrives before the first hit is recorded pass. A reservation whose work turned out not to
//! need counting can be handed back with [`RateLimiter::refund`].

pub mod memory;
pub mod valkey;

use std::time::{Duration, Instant};

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

/// One hit counted by [`RateLimiter::reserve`]: its decision, and what a refund needs.
#[derive(Debug)]
#[must_use = "a reservation decides whether the guarded work may run"]
pub struct Reservation {
    pub decision: Decision,
    key: String,
    /// When the window that counted the hit ends (exact in process, from `PTTL` in Valkey).
    window_ends: Instant,
}

/// A Valkey refund is skipped when less than this is left of the window, so that a slow
/// round trip can never land it in the next window (where it would be a gift, not a refund).
/// Longer than a command may take ([`crate::services::valkey::COMMAND_TIMEOUT`]).
const VALKEY_REFUND_MARGIN: Duration = Duration::from_secs(2);

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

    /// Counts one attempt on `key` *before* the work it guards, and decides on that count: the
    /// attempt goes ahead only when `decision` is allowed. Counted even when denied (so a
    /// refund after a denial cannot reopen the window).
    ///
    /// # Errors
    /// The back end is unavailable.
    pub async fn reserve(&self, key: &str, limit: u32, window: Duration) -> Result<Reservation, RateLimitError> {
        let (decision, window_ends) = match self {
            Self::Memory(m) => m.hit_window(key, limit, window),
            Self::Valkey(v) => v.hit_window(key, limit, window).await?,
        };
        Ok(Reservation { decision, key: key.to_string(), window_ends })
    }

    /// Hands back an allowed reservation: one hit, in the window that counted it, never below
    /// zero. A denied reservation gives nothing back. Best effort by design: a refund that cannot
    /// be made (Valkey down, the window nearly over) leaves the attempt counted, which is the
    /// safe direction, and is logged rather than failing the request that earned it.
    pub async fn refund(&self, reservation: Reservation) {
        if !reservation.decision.is_allowed() {
            return;
        }
        match self {
            Self::Memory(m) => m.refund(&reservation.key, reservation.window_ends),
            Self::Valkey(v) => {
                if reservation.window_ends.saturating_duration_since(Instant::now()) < VALKEY_REFUND_MARGIN {
                    return;
                }
                if let Err(e) = v.refund(&reservation.key).await {
                    tracing::warn!(error = %e, "rate limit refund not made; the attempt stays counted");
                }
            }
        }
    }
}
