//! Fault knobs, changed at run time over `PUT /v1/faults`: they apply to the
//! routes that receive events (the push route and the sync `notify` route),
//! not to the notification list, so the demo page keeps working.
//!
//! - `latency_ms`: added before the event is handled;
//! - `error_rate` (0 to 1): that share of events is answered 500;
//! - `down`: every event is answered 503 with `Retry-After: 1`, as a service
//!   whose instances are all gone would behind a load balancer. Courier
//!   retries (and ejects the instance for a moment); a sync caller fails.

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultSettings {
    pub latency_ms: u64,
    pub error_rate: f64,
    pub down: bool,
}

/// A partial change: fields left out stay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultChange {
    pub latency_ms: Option<u64>,
    pub error_rate: Option<f64>,
    pub down: Option<bool>,
}

#[derive(Default)]
pub struct Faults(RwLock<FaultSettings>);

/// What an incoming event meets.
pub enum Verdict {
    Down,
    Fail,
    Pass,
}

impl Faults {
    pub fn get(&self) -> FaultSettings {
        *self.0.read()
    }

    pub fn apply(&self, change: &FaultChange) -> Result<FaultSettings, String> {
        if let Some(rate) = change.error_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("error_rate must be between 0 and 1, got {rate}"));
            }
        }
        if let Some(ms) = change.latency_ms {
            if ms > 60_000 {
                return Err(format!("latency_ms must be at most 60000, got {ms}"));
            }
        }
        let mut f = self.0.write();
        if let Some(ms) = change.latency_ms {
            f.latency_ms = ms;
        }
        if let Some(rate) = change.error_rate {
            f.error_rate = rate;
        }
        if let Some(down) = change.down {
            f.down = down;
        }
        Ok(*f)
    }

    /// Waits the added latency, then decides.
    pub async fn meet(&self) -> Verdict {
        let f = self.get();
        if f.down {
            return Verdict::Down;
        }
        if f.latency_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(f.latency_ms)).await;
        }
        if f.error_rate > 0.0 && rand::random::<f64>() < f.error_rate {
            return Verdict::Fail;
        }
        Verdict::Pass
    }
}
