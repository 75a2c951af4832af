//! Updating a live subscription: the new values apply from then on, while its
//! position, leases (with their deadlines), attempts and counters survive.

use std::slice::from_ref;
use std::sync::Arc;
use std::time::Duration;

use courier_core::{
    Clock, Engine, Feature, Outcome, RetryPolicy, SubscriptionConfig, SubscriptionUpdate,
};

use crate::helpers::*;
use crate::EngineFactory;

async fn updatable(
    factory: &dyn EngineFactory,
    test: &str,
    config: SubscriptionConfig,
) -> Option<(Arc<dyn Engine>, Clock)> {
    let (engine, clock) = open(factory).await;
    if lacks(&engine, &[Feature::SubscriptionUpdate], test) {
        return None;
    }
    topic_and_sub(&engine, "t", "s", config).await;
    Some((engine, clock))
}

async fn update(engine: &Arc<dyn Engine>, update: SubscriptionUpdate) -> SubscriptionConfig {
    let before = subscription(engine, "s").await;
    let info = engine
        .update_subscription("s", update.clone())
        .await
        .must("update_subscription");
    assert_eq!(
        info.config,
        update.applied_to(&before.config),
        "the answered config"
    );
    let after = subscription(engine, "s").await;
    assert_eq!(after.config, info.config, "the stored config");
    assert_eq!(
        (
            after.ack_floor,
            after.backlog,
            after.in_flight,
            after.delivered_total,
            after.acked_total
        ),
        (
            before.ack_floor,
            before.backlog,
            before.in_flight,
            before.delivered_total,
            before.acked_total
        ),
        "an update must keep the position, leases and counters"
    );
    info.config
}

/// A new ack deadline applies to new leases; a lease granted before keeps its deadline.
pub async fn update_ack_deadline(factory: &dyn EngineFactory) {
    let Some((engine, clock)) = updatable(factory, "update_ack_deadline", sub_config("t")).await
    else {
        return;
    };
    publish(&engine, "t", &["1", "2"]).await;
    let old = only(pull(&engine, "s", "a", 1).await, "lease before the update");
    let longer = Duration::from_secs(60);
    update(
        &engine,
        SubscriptionUpdate {
            ack_deadline: Some(longer),
            ..SubscriptionUpdate::default()
        },
    )
    .await;
    let new = only(pull(&engine, "s", "b", 1).await, "lease after the update");
    assert_eq!(
        new.lease_deadline,
        clock.now() + longer.as_millis() as u64,
        "a lease after the update uses the new ack deadline"
    );
    advance(ACK_DEADLINE + MS).await;
    assert_eq!(
        ack(&engine, "s", &[old.token.clone(), new.token.clone()]).await,
        vec![Outcome::LeaseLost, Outcome::Ok],
        "the earlier lease kept its {ACK_DEADLINE:?} deadline, the later one has {longer:?}"
    );
    done(engine).await;
}

/// Lowering `max_attempts` and changing the backoff apply to the next
/// failures; attempts already made count.
pub async fn update_retry_policy(factory: &dyn EngineFactory) {
    let config = sub_config_attempts("t", 5);
    let Some((engine, _clock)) = updatable(factory, "update_retry_policy", config).await else {
        return;
    };
    publish(&engine, "t", &["m1", "m2"]).await;
    let ds = pull(&engine, "s", "c", 2).await;
    assert_eq!(bodies(&ds), vec!["m1", "m2"]);
    assert_eq!(
        nack(&engine, "s", &[ds[0].token.clone()], "fail").await,
        vec![Outcome::Ok]
    );
    advance(BACKOFF).await;
    let m1 = only(pull(&engine, "s", "c", 1).await, "m1's second attempt");
    assert_eq!(m1.attempt, 2);

    let policy = RetryPolicy {
        initial_backoff: Duration::from_secs(5),
        max_attempts: 2,
        ..retry_policy()
    };
    update(
        &engine,
        SubscriptionUpdate {
            retry: Some(policy),
            ..SubscriptionUpdate::default()
        },
    )
    .await;
    // m2 fails its first attempt: the new 5 s backoff applies.
    assert_eq!(
        nack(&engine, "s", &[ds[1].token.clone()], "fail").await,
        vec![Outcome::Ok]
    );
    // m1 fails its second: with max_attempts now 2 it is dead.
    assert_eq!(
        nack(&engine, "s", from_ref(&m1.token), "fail").await,
        vec![Outcome::Ok]
    );
    let letter = wait_dead_lettered(&engine, "s", 1).await;
    assert_eq!(
        letter
            .headers
            .get("courier-dlq-attempts")
            .map(String::as_str),
        Some("2")
    );
    advance(Duration::from_secs(5) - MS).await;
    assert!(
        pull(&engine, "s", "c", 1).await.is_empty(),
        "m2 before the new backoff"
    );
    advance(MS).await;
    let m2 = only(pull(&engine, "s", "c", 1).await, "m2 after the new backoff");
    assert_eq!((body(&m2).as_str(), m2.attempt), ("m2", 2));
    done(engine).await;
}

/// Raising and lowering `max_in_flight` changes how much more may be leased;
/// existing leases stay valid.
pub async fn update_max_in_flight(factory: &dyn EngineFactory) {
    let config = SubscriptionConfig {
        max_in_flight: 2,
        ..sub_config("t")
    };
    let Some((engine, _clock)) = updatable(factory, "update_max_in_flight", config).await else {
        return;
    };
    publish(&engine, "t", &["1", "2", "3", "4", "5", "6"]).await;
    let first = pull(&engine, "s", "c", 10).await;
    assert_eq!(seqs(&first), vec![1, 2], "limited to 2");
    let raise = SubscriptionUpdate {
        max_in_flight: Some(4),
        ..SubscriptionUpdate::default()
    };
    update(&engine, raise).await;
    let more = pull(&engine, "s", "c", 10).await;
    assert_eq!(
        seqs(&more),
        vec![3, 4],
        "2 more after raising the limit to 4"
    );

    let lower = SubscriptionUpdate {
        max_in_flight: Some(1),
        ..SubscriptionUpdate::default()
    };
    update(&engine, lower).await;
    assert!(
        pull(&engine, "s", "c", 10).await.is_empty(),
        "4 in flight, limit 1"
    );
    ack_all(&engine, "s", &first).await;
    ack_all(&engine, "s", &more[..1]).await;
    assert!(
        pull(&engine, "s", "c", 10).await.is_empty(),
        "still 1 in flight, limit 1"
    );
    ack_all(&engine, "s", &more[1..]).await;
    assert_eq!(
        seqs(&pull(&engine, "s", "c", 10).await),
        vec![5],
        "room for exactly 1"
    );
    done(engine).await;
}

/// A new dead-letter topic receives the letters from then on, and
/// `dead_letters` reads them from there.
pub async fn update_dead_letter_topic(factory: &dyn EngineFactory) {
    let config = sub_config_attempts("t", 1);
    let Some((engine, _clock)) = updatable(factory, "update_dead_letter_topic", config).await
    else {
        return;
    };
    create_topic(&engine, "graveyard").await;
    publish(&engine, "t", &["dies", "lives"]).await;
    let ds = pull(&engine, "s", "c", 2).await;
    assert_eq!(bodies(&ds), vec!["dies", "lives"]);
    update(
        &engine,
        SubscriptionUpdate {
            dead_letter_topic: Some("graveyard".into()),
            ..SubscriptionUpdate::default()
        },
    )
    .await;
    assert_eq!(
        nack(&engine, "s", &[ds[0].token.clone()], "no").await,
        vec![Outcome::Ok]
    );
    let letter = wait_dead_lettered(&engine, "s", 1).await;
    assert_eq!(
        read_all(&engine, "graveyard").await,
        vec![letter],
        "stored in the new topic"
    );
    assert!(
        stored_count(&engine, "s.dlq").await == 0,
        "nothing went to the old default"
    );
    ack_all(&engine, "s", &ds[1..]).await;
    done(engine).await;
}
