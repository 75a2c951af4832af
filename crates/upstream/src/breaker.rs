//! The per-instance circuit breaker.
//!
//! Closed: calls flow and their outcomes fill a sliding window of ten
//! buckets. When the window holds at least `min_requests` calls and the share
//! of failures reaches `failure_rate`, the breaker opens. Open: no call goes
//! through until `open_for` has passed; then it is half-open and lets at most
//! `half_open_probes` calls through. When all of them succeed it closes with an
//! empty window; the first failed probe opens it again.
//!
//! Outcomes are tagged with the breaker's epoch at admission (a [`Ticket`]),
//! so a slow call admitted while closed that finishes after the breaker opened
//! neither counts as a probe nor reopens a half-open breaker.
//!
//! This is tower-shaped state without being a tower layer: the breaker has to
//! be consulted by the balancer *before* an instance is chosen (an open
//! instance is skipped, not failed), which a layer wrapped around one
//! instance's service cannot do.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::BreakerConfig;

const BUCKETS: usize = 10;

/// The state of a circuit breaker, as reported in stats and the
/// `courier_upstream_circuit_state` gauge (0, 1, 2).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls flow; failures are counted.
    Closed,
    /// Probing: a limited number of calls flow.
    HalfOpen,
    /// No call flows until the open period has passed.
    Open,
}

impl CircuitState {
    /// The value of the `courier_upstream_circuit_state` gauge.
    pub(crate) fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { issued: u32, succeeded: u32 },
}

/// What one admission was: which epoch, and whether it used a probe slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    epoch: u64,
    probe: bool,
}

/// One instance's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    phase: Phase,
    epoch: u64,
    window: Window,
}

impl Breaker {
    pub(crate) fn new(now: Instant) -> Self {
        Breaker {
            phase: Phase::Closed,
            epoch: 0,
            window: Window::new(now, Duration::from_secs(10)),
        }
    }

    /// The state as of the last [`refresh`](Self::refresh).
    pub(crate) fn state(&self) -> CircuitState {
        match self.phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// When an open breaker turns half-open.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        match self.phase {
            Phase::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Moves an open breaker whose time is up to half-open; returns the new
    /// state when it changed.
    pub(crate) fn refresh(&mut self, now: Instant) -> Option<CircuitState> {
        match self.phase {
            Phase::Open { until } if now >= until => {
                self.enter(Phase::HalfOpen {
                    issued: 0,
                    succeeded: 0,
                });
                Some(CircuitState::HalfOpen)
            }
            _ => None,
        }
    }

    /// Whether a call may go through now.
    pub(crate) fn admits(&self, config: &BreakerConfig) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Open { .. } => false,
            Phase::HalfOpen { issued, .. } => issued < config.half_open_probes.max(1),
        }
    }

    /// Admits a call (the caller checked [`admits`](Self::admits)).
    pub(crate) fn admit(&mut self) -> Ticket {
        let probe = match &mut self.phase {
            Phase::HalfOpen { issued, .. } => {
                *issued += 1;
                true
            }
            _ => false,
        };
        Ticket {
            epoch: self.epoch,
            probe,
        }
    }

    /// Gives back the probe slot of a call that ended without an outcome
    /// (its caller went away).
    pub(crate) fn cancel(&mut self, ticket: Ticket) {
        if let (true, Phase::HalfOpen { issued, .. }) =
            (ticket.probe && ticket.epoch == self.epoch, &mut self.phase)
        {
            *issued = issued.saturating_sub(1);
        }
    }

    /// Records a call's outcome; returns the new state when it changed.
    pub(crate) fn record(
        &mut self,
        now: Instant,
        ticket: Ticket,
        failed: bool,
        config: &BreakerConfig,
    ) -> Option<CircuitState> {
        if ticket.epoch != self.epoch {
            return None;
        }
        match &mut self.phase {
            Phase::Closed => {
                if self.window.length != config.window {
                    self.window = Window::new(now, config.window);
                }
                let (total, failures) = self.window.record(now, failed);
                let rate = f64::from(failures) / f64::from(total.max(1));
                if total >= config.min_requests && failed && rate >= config.failure_rate {
                    self.open(now, config);
                    return Some(CircuitState::Open);
                }
                None
            }
            Phase::Open { .. } => None,
            Phase::HalfOpen { succeeded, .. } => {
                if failed {
                    self.open(now, config);
                    return Some(CircuitState::Open);
                }
                *succeeded += 1;
                if *succeeded >= config.half_open_probes.max(1) {
                    self.enter(Phase::Closed);
                    self.window = Window::new(now, config.window);
                    return Some(CircuitState::Closed);
                }
                None
            }
        }
    }

    fn open(&mut self, now: Instant, config: &BreakerConfig) {
        self.enter(Phase::Open {
            until: now + config.open_for,
        });
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.epoch += 1;
    }
}

/// A sliding window of call outcomes in [`BUCKETS`] buckets, each covering a
/// tenth of the window: memory stays fixed however many calls are made.
#[derive(Debug)]
struct Window {
    origin: Instant,
    length: Duration,
    bucket_nanos: u128,
    /// (bucket number since `origin`, calls, failures)
    buckets: [(u128, u32, u32); BUCKETS],
}

impl Window {
    fn new(now: Instant, length: Duration) -> Self {
        Window {
            origin: now,
            length,
            bucket_nanos: (length.as_nanos() / BUCKETS as u128).max(1),
            buckets: [(u128::MAX, 0, 0); BUCKETS],
        }
    }

    /// Adds one outcome; returns (calls, failures) within the window.
    fn record(&mut self, now: Instant, failed: bool) -> (u32, u32) {
        let current = now.saturating_duration_since(self.origin).as_nanos() / self.bucket_nanos;
        let slot = &mut self.buckets[(current % BUCKETS as u128) as usize];
        if slot.0 != current {
            *slot = (current, 0, 0);
        }
        slot.1 += 1;
        slot.2 += u32::from(failed);
        self.buckets
            .iter()
            .filter(|(number, _, _)| *number <= current && current - number < BUCKETS as u128)
            .fold((0, 0), |(calls, failures), (_, c, f)| {
                (calls + c, failures + f)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_requests: 4,
            failure_rate: 0.5,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    #[test]
    fn opens_on_failure_rate_then_probes_and_closes() {
        let now = Instant::now();
        let cfg = config();
        let mut b = Breaker::new(now);
        for failed in [false, true, false] {
            let t = b.admit();
            assert_eq!(b.record(now, t, failed, &cfg), None);
        }
        let t = b.admit();
        assert_eq!(b.record(now, t, true, &cfg), Some(CircuitState::Open));
        assert!(!b.admits(&cfg));
        assert_eq!(b.refresh(now + Duration::from_secs(4)), None);
        assert_eq!(
            b.refresh(now + Duration::from_secs(5)),
            Some(CircuitState::HalfOpen)
        );
        let (p1, p2) = (b.admit(), b.admit());
        assert!(!b.admits(&cfg), "only two probes");
        assert_eq!(b.record(now, p1, false, &cfg), None);
        assert_eq!(b.record(now, p2, false, &cfg), Some(CircuitState::Closed));
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let now = Instant::now();
        let cfg = config();
        let mut b = Breaker::new(now);
        for _ in 0..3 {
            let t = b.admit();
            b.record(now, t, true, &cfg);
        }
        // Eleven seconds later the three failures are out of the window.
        let later = now + Duration::from_secs(11);
        let t = b.admit();
        assert_eq!(b.record(later, t, true, &cfg), None);
    }

    #[test]
    fn stale_outcome_does_not_count_after_a_transition() {
        let now = Instant::now();
        let cfg = config();
        let mut b = Breaker::new(now);
        let slow = b.admit();
        for _ in 0..4 {
            let t = b.admit();
            b.record(now, t, true, &cfg);
        }
        b.refresh(now + Duration::from_secs(5));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.record(now, slow, true, &cfg), None);
        assert_eq!(b.state(), CircuitState::HalfOpen);
    }
}
