//! Ordered subscriptions: one message per ordering key in flight, in order;
//! a key waiting on its head never blocks other keys.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{Engine, Feature, Outcome, SubscriptionConfig};

use crate::helpers::*;
use crate::EngineFactory;

async fn ordered(factory: &dyn EngineFactory, test: &str) -> Option<Arc<dyn Engine>> {
    let (engine, _clock) = open(factory).await;
    if lacks(&engine, &[Feature::OrderingKeys], test) {
        return None;
    }
    let config = SubscriptionConfig {
        ordered: true,
        ..sub_config("t")
    };
    topic_and_sub(&engine, "t", "s", config).await;
    Some(engine)
}

/// Each key has at most one message leased, and its messages come in publish
/// order; acking a key's head releases its next message only.
pub async fn one_message_per_key_in_flight_in_order(factory: &dyn EngineFactory) {
    let Some(engine) = ordered(factory, "one_message_per_key_in_flight_in_order").await else {
        return;
    };
    let batch = vec![
        keyed("a", "a1"),
        keyed("a", "a2"),
        keyed("b", "b1"),
        keyed("a", "a3"),
        keyed("b", "b2"),
    ];
    publish_messages(&engine, "t", batch).await;

    let first = pull(&engine, "s", "x", 10).await;
    assert_eq!(bodies(&first), vec!["a1", "b1"], "one head per key");
    assert!(
        pull(&engine, "s", "y", 10).await.is_empty(),
        "another consumer gets nothing while both keys are in flight"
    );
    // Acking b's head releases b2 while a1 is still leased.
    ack_all(&engine, "s", &first[1..]).await;
    let b2 = pull(&engine, "s", "y", 10).await;
    assert_eq!(bodies(&b2), vec!["b2"], "key b goes on while a is held");
    ack_all(&engine, "s", &first[..1]).await;
    let a2 = pull(&engine, "s", "y", 10).await;
    assert_eq!(bodies(&a2), vec!["a2"], "a's next message, alone");
    ack_all(&engine, "s", &a2).await;
    let a3 = pull(&engine, "s", "y", 10).await;
    assert_eq!(bodies(&a3), vec!["a3"]);
    ack_all(&engine, "s", &a3).await;
    ack_all(&engine, "s", &b2).await;
    assert!(pull(&engine, "s", "y", 10).await.is_empty());
    done(engine).await;
}

/// A nacked head keeps its key blocked through its backoff: the key's next
/// message never overtakes it.
pub async fn a_failed_message_blocks_its_key_until_redelivered(factory: &dyn EngineFactory) {
    let Some(engine) = ordered(factory, "a_failed_message_blocks_its_key").await else {
        return;
    };
    publish_messages(
        &engine,
        "t",
        vec![keyed("a", "a1"), keyed("a", "a2"), keyed("b", "b1")],
    )
    .await;
    let first = pull(&engine, "s", "x", 10).await;
    assert_eq!(bodies(&first), vec!["a1", "b1"]);
    assert_eq!(
        nack(&engine, "s", &[first[0].token.clone()], "no").await,
        vec![Outcome::Ok]
    );
    ack_all(&engine, "s", &first[1..]).await;
    assert!(
        pull(&engine, "s", "x", 10).await.is_empty(),
        "a2 must not overtake a1 while a1 waits for its retry"
    );
    advance(BACKOFF).await;
    let retry = pull(&engine, "s", "x", 10).await;
    assert_eq!(bodies(&retry), vec!["a1"], "a1 again, alone");
    assert_eq!(retry[0].attempt, 2);
    ack_all(&engine, "s", &retry).await;
    assert_eq!(bodies(&pull(&engine, "s", "x", 10).await), vec!["a2"]);
    done(engine).await;
}

/// 500 messages of key a behind a leased head do not hide one message of key
/// b published after them: one short pull returns it.
pub async fn key_blocked_backlog_does_not_hide_other_keys(factory: &dyn EngineFactory) {
    let Some(engine) = ordered(factory, "key_blocked_backlog_does_not_hide_other_keys").await
    else {
        return;
    };
    for chunk in 0..5 {
        let batch = (0..100)
            .map(|i| keyed("a", &format!("a{}", chunk * 100 + i)))
            .collect();
        publish_messages(&engine, "t", batch).await;
    }
    let head = only(pull(&engine, "s", "x", 1).await, "the head of key a");
    assert_eq!(body(&head), "a0");
    publish_messages(&engine, "t", vec![keyed("b", "b1")]).await;

    let got = pull_wait(&engine, "s", "y", 10, Duration::from_millis(100)).await;
    assert_eq!(
        bodies(&got),
        vec!["b1"],
        "key b's message must be found behind 499 blocked messages of key a"
    );
    done(engine).await;
}
