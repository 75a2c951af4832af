//! Topic tails: stored messages from a start position in order, then new ones
//! as they are stored; a gap where retention removed the start; no
//! subscription, no leases.

use std::sync::Arc;

use courier_core::{Clock, Engine, Feature, Retention, StartPosition, TailEvent, TopicConfig};

use crate::helpers::*;
use crate::EngineFactory;

/// Tails `topic` from `start`, expecting the stored messages `stored` (by
/// body) first, then the messages published after the tail was opened.
async fn check_tail(engine: &Arc<dyn Engine>, start: StartPosition, stored: &[&str]) {
    let mut tail = engine
        .tail("t", start)
        .await
        .must(&format!("tail from {start}"));
    let first = tail_messages(&mut tail, stored.len()).await;
    assert_eq!(
        message_bodies(&first),
        stored,
        "stored messages of a tail from {start}"
    );
    publish(engine, "t", &["new 1", "new 2"]).await;
    let live = tail_messages(&mut tail, 2).await;
    assert_eq!(
        message_bodies(&live),
        vec!["new 1", "new 2"],
        "live messages of a tail from {start}"
    );
    let mut all = first;
    all.extend(live);
    let seqs = message_seqs(&all);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "tail sequences not consecutive: {seqs:?}"
    );
}

async fn with_tails(factory: &dyn EngineFactory, test: &str) -> Option<(Arc<dyn Engine>, Clock)> {
    let (engine, clock) = open(factory).await;
    if lacks(&engine, &[Feature::TopicTails], test) {
        return None;
    }
    create_topic(&engine, "t").await;
    Some((engine, clock))
}

pub async fn tail_from_earliest(factory: &dyn EngineFactory) {
    let Some((engine, _clock)) = with_tails(factory, "tail_from_earliest").await else {
        return;
    };
    publish(&engine, "t", &["1", "2", "3"]).await;
    check_tail(&engine, StartPosition::Earliest, &["1", "2", "3"]).await;
    done(engine).await;
}

pub async fn tail_from_seq(factory: &dyn EngineFactory) {
    let Some((engine, _clock)) = with_tails(factory, "tail_from_seq").await else {
        return;
    };
    publish(&engine, "t", &["1", "2", "3"]).await;
    check_tail(&engine, StartPosition::Seq(2), &["2", "3"]).await;
    done(engine).await;
}

pub async fn tail_from_time(factory: &dyn EngineFactory) {
    let Some((engine, clock)) = with_tails(factory, "tail_from_time").await else {
        return;
    };
    let stored = publish_a_second_apart(&engine, &clock, "t", &["1", "2"], &["3"]).await;
    let t3 = stored[2].published_at;
    check_tail(&engine, StartPosition::Time(t3), &["3"]).await;
    done(engine).await;
}

pub async fn tail_new_only(factory: &dyn EngineFactory) {
    let Some((engine, _clock)) = with_tails(factory, "tail_new_only").await else {
        return;
    };
    publish(&engine, "t", &["1", "2"]).await;
    check_tail(&engine, StartPosition::New, &[]).await;
    done(engine).await;
}

/// A tail from a sequence retention already removed starts with
/// `Gap { from, to }` (`to` the first retained), then the retained messages;
/// a tail from the earliest has no gap.
pub async fn tail_after_retention_starts_with_a_gap(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    let features = [Feature::TopicTails, Feature::RetentionMaxMessages];
    if lacks(&engine, &features, "tail_after_retention_starts_with_a_gap") {
        return;
    }
    let config = TopicConfig {
        retention: Retention {
            max_messages: Some(3),
            ..Retention::default()
        },
        ..TopicConfig::default()
    };
    engine.create_topic("t", config).await.must("create_topic");
    let bodies: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    publish(&engine, "t", &refs).await;
    factory.enforce_retention(&engine).await;
    let info = engine.topic("t").await.must("topic");
    assert_eq!(
        (info.first_seq, info.messages),
        (8, 3),
        "retention by count keeps the newest 3 of 10"
    );

    let mut tail = engine
        .tail("t", StartPosition::Seq(2))
        .await
        .must("tail from 2");
    assert_eq!(
        next_event(&mut tail).await,
        TailEvent::Gap { from: 2, to: 8 },
        "messages 2..8 were removed before the tail could read them"
    );
    let retained = tail_messages(&mut tail, 3).await;
    assert_eq!(message_seqs(&retained), vec![8, 9, 10]);

    let mut earliest = engine.tail("t", StartPosition::Earliest).await.must("tail");
    let from_earliest = tail_messages(&mut earliest, 3).await;
    assert_eq!(
        message_seqs(&from_earliest),
        vec![8, 9, 10],
        "earliest is the first retained"
    );

    publish(&engine, "t", &["11"]).await;
    assert_eq!(message_seqs(&tail_messages(&mut tail, 1).await), vec![11]);
    assert_eq!(
        message_seqs(&tail_messages(&mut earliest, 1).await),
        vec![11]
    );
    done(engine).await;
}

/// A tail is no subscription: none is listed or counted, and a
/// subscription's deliveries are untouched by it.
pub async fn tail_creates_no_subscription(factory: &dyn EngineFactory) {
    let Some((engine, _clock)) = with_tails(factory, "tail_creates_no_subscription").await else {
        return;
    };
    engine
        .create_subscription("s", sub_config("t"))
        .await
        .must("create_subscription");
    publish(&engine, "t", &["1", "2"]).await;
    let before = engine.list_subscriptions().await.must("list_subscriptions");
    let mut tail = engine.tail("t", StartPosition::Earliest).await.must("tail");
    assert_eq!(message_seqs(&tail_messages(&mut tail, 2).await), vec![1, 2]);

    let after = engine.list_subscriptions().await.must("list_subscriptions");
    assert_eq!(after, before, "a tail must not create a subscription");
    assert_eq!(engine.stats().await.must("stats").subscriptions, 1);
    let got = pull(&engine, "s", "c", 10).await;
    assert_eq!(
        bodies(&got),
        vec!["1", "2"],
        "the tail leased or acked nothing"
    );
    drop(tail);
    done(engine).await;
}
