//! Passive outlier detection: an instance whose calls fail
//! `consecutive_failures` times in a row is ejected (takes no calls) for
//! `ejection`; each further ejection doubles that, up to `max_ejection`. The
//! doubling is forgiven once the instance has been back, without being
//! ejected, for as long as its last ejection lasted.
//!
//! Unlike the breaker, which looks at a rate over a window, this reacts to a
//! run of failures: an instance that suddenly fails every call is out after
//! a handful of calls, even on a quiet service.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::OutlierDetection;

/// One instance's outlier state.
#[derive(Debug, Default)]
pub(crate) struct Outlier {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    /// When the instance was last readmitted and how long that ejection was.
    last: Option<(Instant, Duration)>,
}

impl Outlier {
    /// Until when the instance is ejected.
    pub(crate) fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Readmits an instance whose ejection is over; true when it did.
    pub(crate) fn refresh(&mut self, now: Instant) -> bool {
        match self.ejected_until {
            Some(until) if now >= until => {
                self.ejected_until = None;
                self.consecutive = 0;
                if let Some((back_at, _)) = &mut self.last {
                    *back_at = now;
                }
                true
            }
            _ => false,
        }
    }

    /// Records a call's outcome; returns the ejection's length when this
    /// outcome ejected the instance.
    pub(crate) fn record(
        &mut self,
        now: Instant,
        failed: bool,
        config: &OutlierDetection,
    ) -> Option<Duration> {
        if config.consecutive_failures == 0 || self.ejected_until.is_some() {
            return None;
        }
        if !failed {
            self.consecutive = 0;
            if let Some((back_at, length)) = self.last {
                if now.saturating_duration_since(back_at) >= length {
                    self.ejections = 0;
                    self.last = None;
                }
            }
            return None;
        }
        self.consecutive += 1;
        if self.consecutive < config.consecutive_failures {
            return None;
        }
        let factor = 1u32.checked_shl(self.ejections.min(31)).unwrap_or(u32::MAX);
        let length = config
            .ejection
            .saturating_mul(factor)
            .min(config.max_ejection.max(config.ejection));
        self.ejections += 1;
        self.consecutive = 0;
        self.ejected_until = Some(now + length);
        self.last = Some((now + length, length));
        Some(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_a_run_and_doubles_up_to_the_cap() {
        let cfg = OutlierDetection {
            consecutive_failures: 2,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
        };
        let mut o = Outlier::default();
        let mut now = Instant::now();
        assert_eq!(o.record(now, true, &cfg), None);
        assert_eq!(o.record(now, false, &cfg), None, "a success breaks the run");
        assert_eq!(o.record(now, true, &cfg), None);
        assert_eq!(o.record(now, true, &cfg), Some(Duration::from_secs(10)));
        assert!(!o.refresh(now + Duration::from_secs(9)));
        now += Duration::from_secs(10);
        assert!(o.refresh(now));
        o.record(now, true, &cfg);
        assert_eq!(o.record(now, true, &cfg), Some(Duration::from_secs(20)));
        now += Duration::from_secs(20);
        assert!(o.refresh(now));
        o.record(now, true, &cfg);
        assert_eq!(o.record(now, true, &cfg), Some(Duration::from_secs(25)));
        now += Duration::from_secs(25);
        assert!(o.refresh(now));
        // Healthy for as long as the last ejection: the doubling is forgiven.
        o.record(now + Duration::from_secs(25), false, &cfg);
        o.record(now + Duration::from_secs(25), true, &cfg);
        assert_eq!(
            o.record(now + Duration::from_secs(25), true, &cfg),
            Some(Duration::from_secs(10))
        );
    }
}
