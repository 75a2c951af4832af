//! Release: a consumer gives leased messages back untried (it is shutting
//! down, or nothing could take them). They are deliverable again at once, in
//! their place, and the attempt their lease counted is not spent.

use std::slice::from_ref;
use std::sync::Arc;

use courier_core::{Engine, Feature, LeaseToken, Outcome, SubscriptionConfig};

use crate::helpers::*;
use crate::EngineFactory;

async fn releasing(factory: &dyn EngineFactory, test: &str) -> Option<Arc<dyn Engine>> {
    let (engine, _clock) = open(factory).await;
    if lacks(&engine, &[Feature::Release], test) {
        return None;
    }
    Some(engine)
}

async fn release(engine: &Arc<dyn Engine>, sub: &str, tokens: &[LeaseToken]) -> Vec<Outcome> {
    let outcomes = engine
        .release(sub, tokens)
        .await
        .must(&format!("release on {sub}"));
    assert_eq!(
        outcomes.len(),
        tokens.len(),
        "release must answer one outcome per token"
    );
    outcomes
}

/// A released message comes back at once (no backoff), before the messages
/// behind it, with the attempt number it had before the released lease.
pub async fn release_keeps_the_attempt_count_and_redelivers_at_once(factory: &dyn EngineFactory) {
    let Some(engine) = releasing(factory, "release_keeps_the_attempt_count").await else {
        return;
    };
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["1", "2", "3"]).await;
    let first = only(pull(&engine, "s", "a", 1).await, "first pull");
    assert_eq!(
        nack(&engine, "s", from_ref(&first.token), "boom").await,
        vec![Outcome::Ok]
    );
    advance(BACKOFF).await;
    let ds = pull(&engine, "s", "a", 2).await;
    assert_eq!(seqs(&ds), vec![1, 2]);
    assert_eq!(ds.iter().map(|d| d.attempt).collect::<Vec<_>>(), vec![2, 1]);

    assert_eq!(
        release(&engine, "s", &tokens(&ds)).await,
        vec![Outcome::Ok, Outcome::Ok]
    );
    let info = subscription(&engine, "s").await;
    assert_eq!(
        (info.in_flight, info.backlog, info.dead_lettered_total),
        (0, 3, 0),
        "released messages are waiting again"
    );
    // No time passes: released messages owe no backoff.
    let again = pull(&engine, "s", "b", 3).await;
    assert_eq!(
        seqs(&again),
        vec![1, 2, 3],
        "released messages come back in their place"
    );
    assert_eq!(
        again.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        vec![2, 1, 1],
        "a release spends no attempt"
    );
    assert!(again.iter().zip(&ds).all(|(a, d)| a.token != d.token));
    ack_all(&engine, "s", &again).await;
    done(engine).await;
}

/// Releasing a message on its last attempt neither dead-letters it nor
/// spends that attempt: it is delivered again as the same attempt.
pub async fn release_on_the_last_attempt_does_not_dead_letter(factory: &dyn EngineFactory) {
    let Some(engine) = releasing(factory, "release_on_the_last_attempt").await else {
        return;
    };
    topic_and_sub(&engine, "t", "s", sub_config_attempts("t", 2)).await;
    publish(&engine, "t", &["m"]).await;
    let d = only(pull(&engine, "s", "a", 1).await, "first attempt");
    assert_eq!(
        nack(&engine, "s", from_ref(&d.token), "boom").await,
        vec![Outcome::Ok]
    );
    advance(BACKOFF).await;
    let last = only(pull(&engine, "s", "a", 1).await, "last attempt");
    assert_eq!(last.attempt, 2);
    assert_eq!(
        release(&engine, "s", from_ref(&last.token)).await,
        vec![Outcome::Ok]
    );
    let again = only(pull(&engine, "s", "b", 1).await, "after the release");
    assert_eq!(
        (again.message.seq, again.attempt),
        (1, 2),
        "still the last attempt"
    );
    assert!(
        engine
            .dead_letters("s", 10)
            .await
            .must("dead_letters")
            .is_empty(),
        "a released message is not dead-lettered"
    );
    assert_eq!(subscription(&engine, "s").await.dead_lettered_total, 0);
    ack_all(&engine, "s", &[again]).await;
    done(engine).await;
}

/// A token whose lease expired, or that was given back already, releases
/// nothing: `LeaseLost`, and the current lease is untouched.
pub async fn release_of_a_stale_token_is_lease_lost(factory: &dyn EngineFactory) {
    let Some(engine) = releasing(factory, "release_of_a_stale_token").await else {
        return;
    };
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["m"]).await;
    let a = only(pull(&engine, "s", "a", 1).await, "first pull");
    advance(ACK_DEADLINE + MS).await;
    assert_eq!(
        release(&engine, "s", from_ref(&a.token)).await,
        vec![Outcome::LeaseLost],
        "release with an expired token"
    );
    advance(BACKOFF).await;
    let b = only(pull(&engine, "s", "b", 1).await, "redelivery");
    assert_eq!(b.attempt, 2, "the stale release gave nothing back");
    assert_eq!(
        release(&engine, "s", from_ref(&a.token)).await,
        vec![Outcome::LeaseLost],
        "release with the expired token while b holds the message"
    );
    assert!(
        pull(&engine, "s", "c", 1).await.is_empty(),
        "a stale release must not give b's lease back"
    );
    assert_eq!(subscription(&engine, "s").await.in_flight, 1);
    assert_eq!(
        release(&engine, "s", &[b.token.clone(), b.token.clone()]).await,
        vec![Outcome::Ok, Outcome::Ok],
        "the current token twice in one call acts once"
    );
    assert_eq!(
        release(&engine, "s", from_ref(&b.token)).await,
        vec![Outcome::LeaseLost],
        "a token given back already"
    );
    let c = only(pull(&engine, "s", "c", 1).await, "after the release");
    assert_eq!(c.attempt, 2, "released once, not twice");
    assert_eq!(
        ack(&engine, "s", from_ref(&b.token)).await,
        vec![Outcome::LeaseLost],
        "a released token settles nothing"
    );
    ack_all(&engine, "s", &[c]).await;
    done(engine).await;
}

/// A released message of an ordering key goes before the key's later
/// messages, which stay held until it is settled.
pub async fn release_respects_ordering_keys(factory: &dyn EngineFactory) {
    let Some(engine) = releasing(factory, "release_respects_ordering_keys").await else {
        return;
    };
    if lacks(
        &engine,
        &[Feature::OrderingKeys],
        "release_respects_ordering_keys",
    ) {
        return;
    }
    let config = SubscriptionConfig {
        ordered: true,
        ..sub_config("t")
    };
    topic_and_sub(&engine, "t", "s", config).await;
    publish_messages(
        &engine,
        "t",
        vec![keyed("a", "a1"), keyed("a", "a2"), keyed("b", "b1")],
    )
    .await;
    let first = pull(&engine, "s", "x", 10).await;
    assert_eq!(bodies(&first), vec!["a1", "b1"]);
    assert_eq!(
        release(&engine, "s", &[first[0].token.clone()]).await,
        vec![Outcome::Ok]
    );
    let again = pull(&engine, "s", "y", 10).await;
    assert_eq!(
        bodies(&again),
        vec!["a1"],
        "the released head of a comes back, a2 still waits behind it"
    );
    assert_eq!(again[0].attempt, 1);
    ack_all(&engine, "s", &again).await;
    let next = pull(&engine, "s", "y", 10).await;
    assert_eq!(bodies(&next), vec!["a2"]);
    ack_all(&engine, "s", &next).await;
    ack_all(&engine, "s", &first[1..]).await;
    done(engine).await;
}
