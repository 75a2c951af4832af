//! The engine's clock: wall-clock milliseconds, one clock for every purpose.
//!
//! Every time an engine keeps is a wall-clock time (publish times, delivery
//! times, lease deadlines, retry times), because it is stored and must mean
//! the same after a restart and on another node, and every "is it due yet?"
//! compares one of those with [`Clock::now`] read fresh from the same clock.
//! Timers only decide when to look again ([`Clock::instant_at`] is recomputed
//! at each wake-up), so a step of the system clock (NTP, a VM resumed) moves
//! due times by the step and never leaves a stale anchor behind.
//!
//! Tests drive time with [`Clock::tokio`] (follows tokio's paused clock) or
//! [`Clock::manual`] (set by hand, to step it like a system clock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::types::Millis;

#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's real-time clock, read at every call.
    #[default]
    System,
    /// Wall time at creation plus tokio time elapsed since: for tests that
    /// pause and advance tokio's clock.
    Tokio {
        base_wall: Millis,
        base: tokio::time::Instant,
    },
    /// Whatever the test last set.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn system() -> Self {
        Clock::System
    }

    pub fn tokio() -> Self {
        Clock::Tokio {
            base_wall: wall_now(),
            base: tokio::time::Instant::now(),
        }
    }

    /// A clock at `start` that moves only when the returned handle is set.
    pub fn manual(start: Millis) -> (Self, Arc<AtomicU64>) {
        let at = Arc::new(AtomicU64::new(start));
        (Clock::Manual(at.clone()), at)
    }

    pub fn now(&self) -> Millis {
        match self {
            Clock::System => wall_now(),
            Clock::Tokio { base_wall, base } => *base_wall + base.elapsed().as_millis() as u64,
            Clock::Manual(at) => at.load(Ordering::Acquire),
        }
    }

    /// When to look again for `at`: the tokio instant that is `at - now` from
    /// now (now if it has passed). Valid only until the clock steps, so callers
    /// sleep until it and then compare [`now`](Self::now) again.
    pub fn instant_at(&self, at: Millis) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(self.now()))
    }
}

/// The system's wall clock, in milliseconds since the Unix epoch.
pub fn wall_now() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(clock.now(), t0 + 3000);
        let wake = clock.instant_at(t0 + 5000);
        assert_eq!(wake - tokio::time::Instant::now(), Duration::from_secs(2));
    }

    #[test]
    fn manual_clock_steps_both_ways() {
        let (clock, at) = Clock::manual(1_000_000);
        assert_eq!(clock.now(), 1_000_000);
        at.store(990_000, Ordering::Release);
        assert_eq!(clock.now(), 990_000);
    }

    #[test]
    fn system_clock_reads_the_wall() {
        let before = wall_now();
        let now = Clock::system().now();
        assert!(now >= before && now <= wall_now());
    }
}
