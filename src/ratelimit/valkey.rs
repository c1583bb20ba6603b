//! Fixed-window counters in Valkey, shared by every replica (tier `federated`).
//!
//! A hit is one pipelined round trip: `INCR key`, `PEXPIRE key <window> NX`, `PTTL key`. The
//! three are not a transaction, and need not be: `INCR` is atomic, so replicas never lose a hit;
//! `PEXPIRE ... NX` only sets an expiry when the key has none, so the first hit of a window
//! starts it and later hits cannot stretch it; and if a client dies between `INCR` and
//! `PEXPIRE`, the next hit's `PEXPIRE NX` repairs the key. `PTTL` gives `Retry-After`.
//!
//! A refund is one Lua script (`DECR` only while the key exists and is above zero), so it cannot
//! race a hit into a negative count or recreate an expired key without a TTL.
//!
//! Any error (Valkey down, reconnecting, timed out) is returned as a [`RateLimitError`]; callers
//! fail closed and never serve without limits.

use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, KeysInterface, LuaInterface, Value};
use fred::types::ExpireOptions;

use super::{Decision, RateLimitError};
use crate::services::valkey::Valkey;

/// Every key this limiter writes starts with this prefix.
const PREFIX: &str = "tessera:rl:";

/// Takes back one hit: never below zero, never on a key that has expired (its window is over).
const REFUND: &str = "local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then return redis.call('DECR', KEYS[1]) end
return n";

#[derive(Debug, Clone)]
pub struct ValkeyLimiter {
    valkey: Valkey,
}

impl ValkeyLimiter {
    pub fn new(valkey: Valkey) -> Self {
        Self { valkey }
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> RateLimitError {
        RateLimitError(self.valkey.failed(reason).to_string())
    }

    /// # Errors
    /// Valkey is unavailable.
    pub async fn check(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, RateLimitError> {
        self.valkey.ensure_connected().map_err(|e| RateLimitError(e.to_string()))?;
        let key = format!("{PREFIX}{key}");
        let pipeline = self.valkey.client().pipeline();
        let _: Value = pipeline.get(&key).await.map_err(|e| self.unavailable(e))?;
        let _: Value = pipeline.pttl(&key).await.map_err(|e| self.unavailable(e))?;
        let (count, pttl): (Option<i64>, i64) = pipeline.all().await.map_err(|e| self.unavailable(e))?;
        let count = count.unwrap_or(0);
        Ok(decide(count, u64::from(limit), pttl, window, false))
    }

    /// # Errors
    /// Valkey is unavailable.
    pub async fn hit(&self, key: &str, limit: u32, window: Duration) -> Result<Decision, RateLimitError> {
        Ok(self.hit_window(key, limit, window).await?.0)
    }

    /// [`Self::hit`], and when its window ends (from `PTTL`, so an estimate within a round trip).
    ///
    /// # Errors
    /// Valkey is unavailable.
    pub async fn hit_window(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<(Decision, Instant), RateLimitError> {
        let sent = Instant::now();
        self.valkey.ensure_connected().map_err(|e| RateLimitError(e.to_string()))?;
        let key = format!("{PREFIX}{key}");
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
        let pipeline = self.valkey.client().pipeline();
        let _: Value = pipeline.incr(&key).await.map_err(|e| self.unavailable(e))?;
        let _: Value =
            pipeline.pexpire(&key, window_ms, Some(ExpireOptions::NX)).await.map_err(|e| self.unavailable(e))?;
        let _: Value = pipeline.pttl(&key).await.map_err(|e| self.unavailable(e))?;
        let (count, _set, pttl): (i64, i64, i64) = pipeline.all().await.map_err(|e| self.unavailable(e))?;
        // Measured from before the round trip, so the estimate errs early, never late.
        let ends = sent + u64::try_from(pttl).map(Duration::from_millis).unwrap_or(window).min(window);
        Ok((decide(count, u64::from(limit), pttl, window, true), ends))
    }

    /// Takes back one hit on `key` (see [`REFUND`]). The caller makes sure the window that
    /// counted the hit is still the current one.
    ///
    /// # Errors
    /// Valkey is unavailable.
    pub async fn refund(&self, key: &str) -> Result<(), RateLimitError> {
        self.valkey.ensure_connected().map_err(|e| RateLimitError(e.to_string()))?;
        let key = format!("{PREFIX}{key}");
        let _: i64 = self.valkey.client().eval(REFUND, key, ()).await.map_err(|e| self.unavailable(e))?;
        Ok(())
    }

    /// Whether the client is connected right now (no round trip).
    pub fn is_connected(&self) -> bool {
        self.valkey.client().is_connected()
    }
}

/// `counted`: the count includes this hit (so `count == limit` is still allowed).
fn decide(count: i64, limit: u64, pttl_ms: i64, window: Duration, counted: bool) -> Decision {
    let count = u64::try_from(count).unwrap_or(0);
    let over = if counted { count > limit } else { count >= limit };
    if over {
        // PTTL is -1 (no expiry) or -2 (gone) only in a race with expiry: wait one window at most.
        let retry_after = u64::try_from(pttl_ms).map(Duration::from_millis).unwrap_or(window).min(window);
        Decision::Denied { retry_after }
    } else {
        let remaining = limit.saturating_sub(count);
        Decision::Allowed { remaining: u32::try_from(remaining).unwrap_or(u32::MAX) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_follow_the_count_and_the_ttl() {
        let w = Duration::from_secs(60);
        assert_eq!(decide(3, 3, 1000, w, true), Decision::Allowed { remaining: 0 });
        assert_eq!(decide(4, 3, 1500, w, true), Decision::Denied { retry_after: Duration::from_millis(1500) });
        assert_eq!(decide(3, 3, -1, w, false), Decision::Denied { retry_after: w });
        assert_eq!(decide(0, 3, -2, w, false), Decision::Allowed { remaining: 3 });
    }

    #[tokio::test]
    async fn replicas_share_one_budget_and_an_outage_fails_closed() {
        let Some(_) = crate::services::bundle::valkey_server() else {
            panic!("valkey-server bundle missing: run `make bundles`");
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let mut server =
            crate::services::valkey::EmbeddedValkey::start(port, None, dir.path().to_path_buf()).await.unwrap();
        let url = crate::config::SecretUrl::new(server.url());
        // Two clients stand for two replicas.
        let a = ValkeyLimiter::new(Valkey::connect(&url).await.unwrap());
        let b = ValkeyLimiter::new(Valkey::connect(&url).await.unwrap());
        let w = Duration::from_secs(30);
        let mut allowed = 0;
        for i in 0..10 {
            let l = if i % 2 == 0 { &a } else { &b };
            if l.hit("k", 6, w).await.unwrap().is_allowed() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 6);
        match b.check("k", 6, w).await.unwrap() {
            Decision::Denied { retry_after } => assert!(retry_after <= w && retry_after > Duration::from_secs(25)),
            other => panic!("{other:?}"),
        }
        assert!(a.check("other", 6, w).await.unwrap().is_allowed());

        // A refund hands back one hit and never more: not below zero, not on a missing key.
        let (d, ends) = a.hit_window("r", 2, w).await.unwrap();
        assert!(d.is_allowed() && ends > std::time::Instant::now() + Duration::from_secs(25));
        assert!(a.hit("r", 2, w).await.unwrap().is_allowed());
        assert!(!b.check("r", 2, w).await.unwrap().is_allowed());
        b.refund("r").await.unwrap();
        assert!(a.check("r", 2, w).await.unwrap().is_allowed(), "one slot back, seen by the other replica");
        for _ in 0..3 {
            a.refund("r").await.unwrap();
        }
        assert_eq!(a.check("r", 2, w).await.unwrap(), Decision::Allowed { remaining: 2 });
        a.refund("never-hit").await.unwrap();
        assert_eq!(a.check("never-hit", 2, w).await.unwrap(), Decision::Allowed { remaining: 2 });
        let ttl: i64 = a.valkey.client().pttl(format!("{PREFIX}r")).await.unwrap();
        assert!(ttl > 25_000, "a refund keeps the window's expiry ({ttl} ms)");
        let missing: i64 = a.valkey.client().pttl(format!("{PREFIX}never-hit")).await.unwrap();
        assert_eq!(missing, -2, "a refund never creates a key");

        server.kill();
        let started = std::time::Instant::now();
        assert!(a.hit("k2", 6, w).await.is_err(), "an outage is an error, never an allowance");
        assert!(started.elapsed() < Duration::from_secs(3));
        server.restart().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(d) = a.hit("k3", 6, w).await {
                assert!(d.is_allowed());
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no reconnect after Valkey came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
