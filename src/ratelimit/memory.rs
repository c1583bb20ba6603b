//! In-process fixed-window counters for a single gateway process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Decision;

/// Windows older than this many seconds are swept on the next write.
const SWEEP_EVERY: usize = 1024;

#[derive(Debug, Default, Clone)]
pub struct MemoryLimiter {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    windows: HashMap<String, Window>,
    writes: usize,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    length: Duration,
    count: u32,
}

impl MemoryLimiter {
    pub fn check(&self, key: &str, limit: u32, window: Duration) -> Decision {
        let state = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match state.windows.get(key) {
            Some(w) if now < w.started + w.length => decide(w, limit, now),
            _ => Decision::Allowed { remaining: limit },
        }
        .min_window(window)
    }

    pub fn hit(&self, key: &str, limit: u32, window: Duration) -> Decision {
        self.hit_window(key, limit, window).0
    }

    /// [`Self::hit`], and when the window that counted it ends (the identity of that window).
    pub fn hit_window(&self, key: &str, limit: u32, window: Duration) -> (Decision, Instant) {
        let mut state = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        state.writes += 1;
        if state.writes.is_multiple_of(SWEEP_EVERY) {
            state.windows.retain(|_, w| now < w.started + w.length);
        }
        let w = state.windows.entry(key.to_string()).or_insert(Window { started: now, length: window, count: 0 });
        if now >= w.started + w.length {
            *w = Window { started: now, length: window, count: 0 };
        }
        w.count = w.count.saturating_add(1);
        let ends = w.started + w.length;
        let decision = if w.count > limit {
            Decision::Denied { retry_after: ends.saturating_duration_since(now) }
        } else {
            Decision::Allowed { remaining: limit - w.count }
        };
        (decision, ends)
    }

    /// Takes back one hit on `key`, but only from the window that ends at `window_ends` (the one
    /// that counted it) and never below zero: a refund can hand back what it took, nothing more.
    pub fn refund(&self, key: &str, window_ends: Instant) {
        let mut state = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = state.windows.get_mut(key)
            && w.started + w.length == window_ends
        {
            w.count = w.count.saturating_sub(1);
        }
    }
}

fn decide(w: &Window, limit: u32, now: Instant) -> Decision {
    if w.count >= limit {
        Decision::Denied { retry_after: (w.started + w.length).saturating_duration_since(now) }
    } else {
        Decision::Allowed { remaining: limit - w.count }
    }
}

trait MinWindow {
    fn min_window(self, window: Duration) -> Self;
}

impl MinWindow for Decision {
    /// A denial never asks to wait longer than one window.
    fn min_window(self, window: Duration) -> Self {
        match self {
            Decision::Denied { retry_after } => Decision::Denied { retry_after: retry_after.min(window) },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_up_to_the_limit_then_denies_until_the_window_ends() {
        let l = MemoryLimiter::default();
        let w = Duration::from_millis(200);
        for i in 0..3 {
            assert_eq!(l.hit("k", 3, w), Decision::Allowed { remaining: 2 - i });
        }
        assert!(!l.check("k", 3, w).is_allowed());
        assert!(matches!(l.hit("k", 3, w), Decision::Denied { retry_after } if retry_after <= w));
        assert!(l.check("other", 3, w).is_allowed(), "keys are independent");
        std::thread::sleep(w + Duration::from_millis(20));
        assert!(l.check("k", 3, w).is_allowed());
        assert!(l.hit("k", 3, w).is_allowed());
    }

    #[test]
    fn a_refund_gives_back_one_hit_of_its_own_window_only() {
        let l = MemoryLimiter::default();
        let w = Duration::from_millis(300);
        let (first, ends) = l.hit_window("k", 2, w);
        assert!(first.is_allowed());
        assert!(l.hit("k", 2, w).is_allowed());
        assert!(!l.check("k", 2, w).is_allowed(), "budget spent");
        l.refund("k", ends);
        assert_eq!(l.check("k", 2, w), Decision::Allowed { remaining: 1 }, "one slot back");
        // Hits over the limit are counted too, so a refund after them does not reopen the window.
        assert!(l.hit("k", 2, w).is_allowed());
        assert!(!l.hit("k", 2, w).is_allowed());
        l.refund("k", ends);
        assert!(!l.check("k", 2, w).is_allowed());
        // A refund for a window that has ended never lands in the next one.
        std::thread::sleep(w + Duration::from_millis(20));
        assert!(l.hit("k", 2, w).is_allowed());
        assert!(l.hit("k", 2, w).is_allowed());
        l.refund("k", ends);
        assert!(!l.check("k", 2, w).is_allowed());
        // Nor below zero, nor on a key never hit.
        l.refund("fresh", ends);
        assert_eq!(l.check("fresh", 2, w), Decision::Allowed { remaining: 2 });
    }
}
