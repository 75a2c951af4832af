//! Upper bounds on the times and durations clients may send.
//!
//! The engine keeps times as `u64` milliseconds since the epoch and adds
//! durations to the current time (lease deadlines, retry times, delayed
//! delivery). Unbounded inputs overflow that arithmetic: a debug build panics
//! in the middle of a request, a release build wraps to a time in the past
//! (a lease "extended" by `u64::MAX` ms expires at once). So the server refuses
//! them where they come in: timestamps must fall before the year 10000 (the
//! last one RFC 3339 can write, so both wire forms accept the same range),
//! durations at most 100 years. Both are far beyond any real use, and their sum
//! is far below `u64::MAX`.

use std::time::Duration;

use courier_core::{Millis, RetryPolicy, SubscriptionConfig, SubscriptionUpdate};

/// 9999-12-31T23:59:59.999Z.
pub const MAX_TIMESTAMP_MS: Millis = 253_402_300_799_999;

/// 100 years of 365 days.
pub const MAX_DURATION_MS: u64 = 100 * 365 * 24 * 60 * 60 * 1000;

/// `ms` if it is a timestamp the engine can compute with.
pub fn timestamp(ms: Millis) -> Result<Millis, String> {
    if ms > MAX_TIMESTAMP_MS {
        return Err(format!(
            "{ms} ms since the epoch is after the year 9999 (at most {MAX_TIMESTAMP_MS})"
        ));
    }
    Ok(ms)
}

/// `ms` if it is a duration the engine can add to the current time; `what` names it.
pub fn duration_ms(what: &str, ms: u64) -> Result<u64, String> {
    if ms > MAX_DURATION_MS {
        return Err(format!(
            "{what} = {ms} ms is more than 100 years (at most {MAX_DURATION_MS})"
        ));
    }
    Ok(ms)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The durations of a subscription: the lease and the retry backoffs.
pub fn subscription(config: &SubscriptionConfig) -> Result<(), String> {
    duration_ms("ack_deadline", millis(config.ack_deadline))?;
    retry(&config.retry)?;
    match &config.push {
        Some(p) => push(p),
        None => Ok(()),
    }
}

/// The durations an update of a subscription sets.
pub fn subscription_update(update: &SubscriptionUpdate) -> Result<(), String> {
    if let Some(d) = update.ack_deadline {
        duration_ms("ack_deadline", millis(d))?;
    }
    if let Some(r) = &update.retry {
        retry(r)?;
    }
    match &update.push {
        Some(Some(p)) => push(p),
        _ => Ok(()),
    }
}

/// What the engine cannot judge: the timeout's range and the secret's form.
fn push(p: &courier_core::PushConfig) -> Result<(), String> {
    duration_ms("push.timeout", millis(p.timeout))?;
    if let Some(secret) = &p.secret {
        courier_api::push::secret_key(secret).map_err(|_| {
            "push.secret must be whsec_ followed by base64 (e.g. whsec_ and 24 random bytes in base64)"
                .to_string()
        })?;
    }
    Ok(())
}

fn retry(r: &RetryPolicy) -> Result<(), String> {
    duration_ms("retry.initial_backoff", millis(r.initial_backoff))?;
    duration_ms("retry.max_backoff", millis(r.max_backoff))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_values_cannot_overflow_the_engine() {
        assert!(MAX_TIMESTAMP_MS.checked_add(MAX_DURATION_MS).is_some());
        let last = time::OffsetDateTime::parse(
            "9999-12-31T23:59:59.999Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(
            last.unix_timestamp_nanos() / 1_000_000,
            i128::from(MAX_TIMESTAMP_MS)
        );
    }

    #[test]
    fn limits() {
        assert_eq!(timestamp(0), Ok(0));
        assert_eq!(timestamp(MAX_TIMESTAMP_MS), Ok(MAX_TIMESTAMP_MS));
        assert!(timestamp(MAX_TIMESTAMP_MS + 1).is_err());
        assert_eq!(duration_ms("x", MAX_DURATION_MS), Ok(MAX_DURATION_MS));
        let err = duration_ms("by_ms", u64::MAX).unwrap_err();
        assert!(err.contains("by_ms"), "{err}");

        subscription(&SubscriptionConfig::for_topic("t")).unwrap();
        let mut c = SubscriptionConfig::for_topic("t");
        c.ack_deadline = Duration::from_millis(u64::MAX);
        assert!(subscription(&c).unwrap_err().contains("ack_deadline"));
        let mut c = SubscriptionConfig::for_topic("t");
        c.retry.max_backoff = Duration::MAX;
        assert!(subscription(&c).unwrap_err().contains("retry.max_backoff"));

        subscription_update(&SubscriptionUpdate::default()).unwrap();
        let u = SubscriptionUpdate {
            ack_deadline: Some(Duration::from_millis(MAX_DURATION_MS + 1)),
            ..SubscriptionUpdate::default()
        };
        assert!(subscription_update(&u)
            .unwrap_err()
            .contains("ack_deadline"));
        let u = SubscriptionUpdate {
            retry: Some(RetryPolicy {
                initial_backoff: Duration::MAX,
                ..RetryPolicy::default()
            }),
            ..SubscriptionUpdate::default()
        };
        assert!(subscription_update(&u)
            .unwrap_err()
            .contains("retry.initial_backoff"));
    }
}
