//! Publish deduplication: a client-supplied id published again within the
//! topic's dedup window gets the original receipt and appends nothing.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{Clock, Engine, Feature, TopicConfig};

use crate::helpers::*;
use crate::EngineFactory;

const WINDOW: Duration = Duration::from_secs(10);

async fn with_dedup(factory: &dyn EngineFactory, test: &str) -> Option<(Arc<dyn Engine>, Clock)> {
    let (engine, clock) = open(factory).await;
    if lacks(&engine, &[Feature::Dedup], test) {
        return None;
    }
    let config = TopicConfig {
        dedup_window: WINDOW,
        ..TopicConfig::default()
    };
    engine.create_topic("t", config).await.must("create_topic");
    Some((engine, clock))
}

/// Within the window a repeated id answers `duplicate` with the original
/// sequence and id, and stores nothing; new ids in the same call are stored.
pub async fn same_id_within_window_returns_original_receipt(factory: &dyn EngineFactory) {
    let Some((engine, _clock)) = with_dedup(factory, "same_id_within_window").await else {
        return;
    };
    let first = publish_messages(&engine, "t", vec![with_id("order-1", "original")]).await;
    assert_eq!(
        (first[0].seq, first[0].id.as_str(), first[0].duplicate),
        (1, "order-1", false)
    );

    let again = publish_messages(
        &engine,
        "t",
        vec![with_id("order-1", "retry"), with_id("order-2", "other")],
    )
    .await;
    let got: Vec<_> = again
        .iter()
        .map(|r| (r.seq, r.id.as_str(), r.duplicate))
        .collect();
    assert_eq!(got, vec![(1, "order-1", true), (2, "order-2", false)]);

    advance(WINDOW - MS).await;
    let late = publish_messages(&engine, "t", vec![with_id("order-1", "late")]).await;
    assert_eq!(
        (late[0].seq, late[0].duplicate),
        (1, true),
        "still within the window 1 ms before it ends"
    );
    let stored = read_all(&engine, "t").await;
    assert_eq!(
        message_bodies(&stored),
        vec!["original", "other"],
        "duplicates store nothing"
    );
    done(engine).await;
}

/// Once the window has passed, the same id is a new message with a new sequence.
pub async fn same_id_after_window_is_a_new_message(factory: &dyn EngineFactory) {
    let Some((engine, _clock)) = with_dedup(factory, "same_id_after_window").await else {
        return;
    };
    let first = publish_messages(&engine, "t", vec![with_id("order-1", "x")]).await;
    assert_eq!(first[0].seq, 1);
    advance(WINDOW + MS).await;
    let again = publish_messages(&engine, "t", vec![with_id("order-1", "x")]).await;
    assert_eq!(
        (again[0].seq, again[0].duplicate),
        (2, false),
        "after the window the id is new again"
    );
    done(engine).await;
}

/// The ids of the window survive a reopen.
pub async fn dedup_survives_reopen(factory: &dyn EngineFactory) {
    let Some((engine, clock)) = with_dedup(factory, "dedup_survives_reopen").await else {
        return;
    };
    publish_messages(&engine, "t", vec![with_id("order-1", "x")]).await;
    publish(&engine, "t", &["plain"]).await;
    let Some(engine) = factory.reopen(engine, clock.clone()).await else {
        eprintln!("skipping dedup_survives_reopen: the engine cannot reopen");
        return;
    };
    let again = publish_messages(&engine, "t", vec![with_id("order-1", "x")]).await;
    assert_eq!(
        (again[0].seq, again[0].duplicate),
        (1, true),
        "an id published before a reopen is still a duplicate after it"
    );
    done(engine).await;
}
