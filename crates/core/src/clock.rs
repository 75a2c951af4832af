//! Wall-clock milliseconds that follow tokio's clock.
//!
//! Lease deadlines and delivery times are stored, so they must be wall-clock
//! times. Tests must still be able to drive them with `tokio::time::pause()` and
//! `advance()`, so the clock is "wall time at creation + tokio time elapsed since".

use std::time::{SystemTime, UNIX_EPOCH};

use crate::types::Millis;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_wall: Millis,
    base: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            base_wall: wall_now(),
            base: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Millis {
        self.base_wall + self.base.elapsed().as_millis() as u64
    }

    /// The tokio instant at which `at` will be reached (now if it has passed).
    pub fn instant_at(&self, at: Millis) -> tokio::time::Instant {
        self.base + std::time::Duration::from_millis(at.saturating_sub(self.base_wall))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The system's wall clock, in milliseconds since the Unix epoch.
pub fn wall_now() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
