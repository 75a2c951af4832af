//! Exponential backoff with jitter between delivery attempts.

use std::time::Duration;

use crate::types::RetryPolicy;

impl RetryPolicy {
    /// Delay before the attempt after `attempts` failed ones.
    ///
    /// `unit` is a uniform random number in `[0, 1)`; passing it in keeps this
    /// pure, so the state machine stays deterministic and testable.
    pub fn backoff(&self, attempts: u32, unit: f64) -> Duration {
        let exp = attempts.saturating_sub(1).min(64) as i32;
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
        Duration::from_secs_f64((capped * (1.0 - jitter)).max(0.0))
    }

    /// Whether a message that failed `attempts` times goes to the dead-letter topic.
    pub fn exhausted(&self, attempts: u32) -> bool {
        self.max_attempts > 0 && attempts >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            max_attempts: 3,
            jitter: 0.5,
        }
    }

    #[test]
    fn grows_exponentially_and_caps() {
        let p = policy();
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 0.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 0.0), Duration::from_millis(400));
        assert_eq!(p.backoff(10, 0.0), Duration::from_secs(1));
        assert_eq!(p.backoff(u32::MAX, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let p = policy();
        let d = p.backoff(2, 0.999);
        assert!(d <= Duration::from_millis(200) && d >= Duration::from_millis(100));
    }

    #[test]
    fn exhaustion() {
        let p = policy();
        assert!(!p.exhausted(2));
        assert!(p.exhausted(3));
        let never = RetryPolicy {
            max_attempts: 0,
            ..p
        };
        assert!(!never.exhausted(1_000));
    }
}
