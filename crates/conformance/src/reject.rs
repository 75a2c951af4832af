//! Reject: a consumer says leased messages can never succeed. They are
//! dead-lettered at once, whatever attempts remain, with the consumer's error.

use std::slice::from_ref;
use std::sync::Arc;

use courier_core::types::dlq_headers;
use courier_core::{Engine, Feature, LeaseToken, Outcome};

use crate::helpers::*;
use crate::EngineFactory;

async fn rejecting(
    factory: &dyn EngineFactory,
    features: &[Feature],
    test: &str,
) -> Option<Arc<dyn Engine>> {
    let (engine, _clock) = open(factory).await;
    if lacks(&engine, features, test) {
        return None;
    }
    Some(engine)
}

async fn reject(
    engine: &Arc<dyn Engine>,
    sub: &str,
    tokens: &[LeaseToken],
    error: &str,
) -> Vec<Outcome> {
    let outcomes = engine
        .reject(sub, tokens, Some(error.to_string()))
        .await
        .must(&format!("reject on {sub}"));
    assert_eq!(
        outcomes.len(),
        tokens.len(),
        "reject must answer one outcome per token"
    );
    outcomes
}

/// A rejected message goes to the dead letters with the error and the
/// attempts made, though attempts remain, and even when the retry policy
/// never dead-letters (`max_attempts: 0`).
pub async fn reject_dead_letters_at_once_with_the_error(factory: &dyn EngineFactory) {
    let Some(engine) = rejecting(factory, &[Feature::Reject], "reject_dead_letters_at_once").await
    else {
        return;
    };
    for max_attempts in [5, 0] {
        let (t, s) = (format!("t{max_attempts}"), format!("s{max_attempts}"));
        topic_and_sub(&engine, &t, &s, sub_config_attempts(&t, max_attempts)).await;
        publish(&engine, &t, &["poison"]).await;
        let d = only(pull(&engine, &s, "c", 10).await, "first attempt");
        assert_eq!(
            nack(&engine, &s, from_ref(&d.token), "flaky").await,
            vec![Outcome::Ok]
        );
        advance(BACKOFF).await;
        let d = only(pull(&engine, &s, "c", 10).await, "second attempt");
        assert_eq!(d.attempt, 2);
        assert_eq!(
            reject(&engine, &s, from_ref(&d.token), "cannot parse").await,
            vec![Outcome::Ok],
            "reject with max_attempts {max_attempts}"
        );
        let letter = wait_dead_lettered(&engine, &s, d.message.seq).await;
        let h = header_map(&letter);
        assert_eq!(h.get(dlq_headers::ATTEMPTS), Some(&"2"), "{h:?}");
        assert_eq!(
            h.get(dlq_headers::LAST_ERROR),
            Some(&"cannot parse"),
            "the reject's error: {h:?}"
        );
        assert_eq!(h.get(dlq_headers::SUBSCRIPTION), Some(&s.as_str()), "{h:?}");
        assert_eq!(&letter.body[..], b"poison");
        let info = subscription(&engine, &s).await;
        assert_eq!(
            (info.dead_lettered_total, info.in_flight),
            (1, 0),
            "max_attempts {max_attempts}"
        );
        advance(ACK_DEADLINE * 10).await;
        assert!(
            pull(&engine, &s, "c", 10).await.is_empty(),
            "a rejected message is not redelivered"
        );
        assert_eq!(
            read_all(&engine, &format!("{s}.dlq")).await.len(),
            1,
            "dead-lettered once"
        );
    }
    done(engine).await;
}

/// A token whose lease expired rejects nothing: `LeaseLost`, nothing is
/// dead-lettered and the current lease is untouched.
pub async fn reject_of_a_stale_token_is_lease_lost(factory: &dyn EngineFactory) {
    let Some(engine) = rejecting(factory, &[Feature::Reject], "reject_of_a_stale_token").await
    else {
        return;
    };
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["m"]).await;
    let a = only(pull(&engine, "s", "a", 1).await, "first pull");
    advance(ACK_DEADLINE + MS).await;
    assert_eq!(
        reject(&engine, "s", from_ref(&a.token), "no").await,
        vec![Outcome::LeaseLost],
        "reject with an expired token"
    );
    advance(BACKOFF).await;
    let b = only(pull(&engine, "s", "b", 1).await, "redelivery");
    assert_eq!(
        reject(&engine, "s", from_ref(&a.token), "no").await,
        vec![Outcome::LeaseLost],
        "reject with the expired token while b holds the message"
    );
    assert_eq!(
        ack(&engine, "s", from_ref(&b.token)).await,
        vec![Outcome::Ok],
        "b's lease survives a stale reject"
    );
    let info = subscription(&engine, "s").await;
    assert_eq!((info.dead_lettered_total, info.acked_total), (0, 1));
    assert!(engine
        .dead_letters("s", 10)
        .await
        .must("dead_letters")
        .is_empty());
    done(engine).await;
}

/// A rejected message replayed from the dead letters is the original, with
/// fresh attempts.
pub async fn reject_then_replay_brings_the_message_back_with_fresh_attempts(
    factory: &dyn EngineFactory,
) {
    let Some(engine) = rejecting(
        factory,
        &[Feature::Reject, Feature::DeadLetterReplay],
        "reject_then_replay",
    )
    .await
    else {
        return;
    };
    topic_and_sub(&engine, "t", "s", sub_config_attempts("t", 3)).await;
    let receipt = publish(&engine, "t", &["m"]).await.remove(0);
    let d = only(pull(&engine, "s", "c", 1).await, "first pull");
    assert_eq!(
        nack(&engine, "s", from_ref(&d.token), "flaky").await,
        vec![Outcome::Ok]
    );
    advance(BACKOFF).await;
    let d = only(pull(&engine, "s", "c", 1).await, "second pull");
    assert_eq!(
        reject(&engine, "s", from_ref(&d.token), "bad").await,
        vec![Outcome::Ok]
    );
    wait_dead_lettered(&engine, "s", receipt.seq).await;
    assert_eq!(
        engine.replay_dead_letters("s", None).await.must("replay"),
        1
    );
    let again = only(pull(&engine, "s", "c", 1).await, "after the replay");
    assert_eq!(
        (again.message.seq, again.message.id.as_str(), again.attempt),
        (receipt.seq, receipt.id.as_str(), 1),
        "the original message, with fresh attempts"
    );
    assert_eq!(
        nack(&engine, "s", from_ref(&again.token), "flaky").await,
        vec![Outcome::Ok]
    );
    advance(BACKOFF).await;
    let retry = only(pull(&engine, "s", "c", 1).await, "a retry after the replay");
    assert_eq!(retry.attempt, 2, "a normal retry, not a dead letter");
    ack_all(&engine, "s", &[retry]).await;
    done(engine).await;
}
