//! Redelivery timing: the retry backoff after a nack or an expired lease, and
//! nacks with a chosen delay. Measured on the paused clock, jitter 0.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{Engine, Feature, Outcome, RetryPolicy, SubscriptionConfig};

use crate::helpers::*;
use crate::EngineFactory;

/// Asserts that `sub` redelivers nothing until `after` from now, then
/// exactly one message, as `attempt`; returns it.
async fn redelivered_after(
    engine: &Arc<dyn Engine>,
    sub: &str,
    after: Duration,
    attempt: u32,
) -> courier_core::Delivery {
    advance(after - MS).await;
    let early = pull(engine, sub, "c", 10).await;
    assert!(
        early.is_empty(),
        "attempt {attempt} redelivered 1 ms before {after:?} had passed"
    );
    advance(MS).await;
    let d = only(
        pull(engine, sub, "c", 10).await,
        &format!("redelivery {after:?} after the failure"),
    );
    assert_eq!(d.attempt, attempt, "attempt number of the redelivery");
    d
}

/// A nack without a delay redelivers after the initial backoff, not before.
pub async fn nack_redelivers_after_initial_backoff(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["m"]).await;
    let d = only(pull(&engine, "s", "c", 1).await, "first pull");
    assert_eq!(
        nack(&engine, "s", &[d.token], "failed").await,
        vec![Outcome::Ok]
    );
    let again = redelivered_after(&engine, "s", BACKOFF, 2).await;
    assert_eq!(again.message.seq, d.message.seq);
    ack_all(&engine, "s", &[again]).await;
    done(engine).await;
}

/// Each further failure multiplies the backoff: 1 s, then 2 s, then 4 s.
pub async fn backoff_grows_exponentially_per_attempt(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["m"]).await;
    let mut d = only(pull(&engine, "s", "c", 1).await, "first pull");
    for (attempt, backoff) in [(2, BACKOFF), (3, BACKOFF * 2), (4, BACKOFF * 4)] {
        assert_eq!(
            nack(&engine, "s", &[d.token], "failed").await,
            vec![Outcome::Ok]
        );
        d = redelivered_after(&engine, "s", backoff, attempt).await;
    }
    ack_all(&engine, "s", &[d]).await;
    done(engine).await;
}

/// The backoff never exceeds `max_backoff`.
pub async fn backoff_is_capped_at_max_backoff(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    let config = SubscriptionConfig {
        retry: RetryPolicy {
            max_backoff: BACKOFF * 3,
            ..retry_policy()
        },
        ..sub_config("t")
    };
    topic_and_sub(&engine, "t", "s", config).await;
    publish(&engine, "t", &["m"]).await;
    let mut d = only(pull(&engine, "s", "c", 1).await, "first pull");
    // 1 s, 2 s, then 4 s capped to 3 s, and 3 s again.
    let steps = [
        (2, BACKOFF),
        (3, BACKOFF * 2),
        (4, BACKOFF * 3),
        (5, BACKOFF * 3),
    ];
    for (attempt, backoff) in steps {
        assert_eq!(
            nack(&engine, "s", &[d.token], "failed").await,
            vec![Outcome::Ok]
        );
        d = redelivered_after(&engine, "s", backoff, attempt).await;
    }
    done(engine).await;
}

/// A nack with a delay redelivers after that delay instead of the backoff.
pub async fn nack_with_explicit_delay(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    if lacks(&engine, &[Feature::NackDelay], "nack_with_explicit_delay") {
        return;
    }
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["m"]).await;
    let d = only(pull(&engine, "s", "c", 1).await, "first pull");
    let delay = Duration::from_secs(7);
    let outcomes = engine
        .nack("s", &[d.token], Some(delay), Some("later".into()))
        .await
        .must("nack with delay");
    assert_eq!(outcomes, vec![Outcome::Ok]);
    redelivered_after(&engine, "s", delay, 2).await;
    done(engine).await;
}

/// A lease that expires counts as a failed attempt: the message is not
/// redelivered before the deadline, and is by the deadline plus the backoff,
/// as the next attempt.
pub async fn an_expired_lease_is_retried_as_the_next_attempt(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["m"]).await;
    let d = only(pull(&engine, "s", "a", 1).await, "first pull");
    advance(ACK_DEADLINE - MS).await;
    assert!(
        pull(&engine, "s", "b", 1).await.is_empty(),
        "redelivered before its lease expired"
    );
    advance(MS + BACKOFF).await;
    let again = only(
        pull(&engine, "s", "b", 1).await,
        "redelivery after the ack deadline and the backoff",
    );
    assert_eq!((again.message.seq, again.attempt), (d.message.seq, 2));
    done(engine).await;
}
