//! Errors: each failure has its stable code, whatever the engine.

use std::time::Duration;

use bytes::Bytes;
use courier_core::{
    Engine, NewMessage, PullRequest, Result, SeekTarget, StartPosition, SubscriptionUpdate,
    TopicConfig,
};

use crate::helpers::*;
use crate::EngineFactory;

/// With its backend unreachable, every call fails with
/// `engine_unavailable`, which is retryable.
pub async fn unreachable_backend_is_unavailable(factory: &dyn EngineFactory) {
    let Some(engine) = factory.unreachable().await else {
        eprintln!("skipping unreachable_backend_is_unavailable: the engine has no backend to lose");
        return;
    };
    let e: &dyn Engine = &*engine;
    let pull = PullRequest {
        consumer: "c".into(),
        max_messages: 1,
        wait: Duration::ZERO,
    };
    let token = [foreign_token()];
    let update = SubscriptionUpdate {
        ack_deadline: Some(ACK_DEADLINE),
        ..SubscriptionUpdate::default()
    };
    let tail = match e.tail("t", StartPosition::Earliest).await {
        Ok(mut tail) => {
            use futures_util::StreamExt;
            within("the unreachable engine's tail to fail", tail.next())
                .await
                .expect("the tail ended without an error")
                .map(|_| ())
        }
        Err(err) => Err(err),
    };
    let calls: Vec<(&str, Result<()>)> = vec![
        ("list_topics", unit(e.list_topics().await)),
        (
            "create_topic",
            unit(e.create_topic("t", TopicConfig::default()).await),
        ),
        ("topic", unit(e.topic("t").await)),
        ("publish", unit(e.publish("t", vec![msg("x")]).await)),
        ("read", unit(e.read("t", 1, 10).await)),
        ("tail", tail),
        (
            "create_subscription",
            unit(e.create_subscription("s", sub_config("t")).await),
        ),
        ("subscription", unit(e.subscription("s").await)),
        ("list_subscriptions", unit(e.list_subscriptions().await)),
        (
            "update_subscription",
            unit(e.update_subscription("s", update).await),
        ),
        ("pull", unit(e.pull("s", pull).await)),
        ("ack", unit(e.ack("s", &token).await)),
        ("nack", unit(e.nack("s", &token, None, None).await)),
        ("extend", unit(e.extend("s", &token, ACK_DEADLINE).await)),
        ("seek", e.seek("s", SeekTarget::Seq(1)).await),
        ("dead_letters", unit(e.dead_letters("s", 10).await)),
        (
            "replay_dead_letters",
            unit(e.replay_dead_letters("s", None).await),
        ),
        ("stats", unit(e.stats().await)),
        ("delete_subscription", e.delete_subscription("s").await),
        ("delete_topic", e.delete_topic("t").await),
    ];
    for (what, result) in calls {
        let err = expect_code(result, "engine_unavailable", what);
        assert!(
            err.is_retryable(),
            "{what}: engine_unavailable must be retryable"
        );
    }
}

/// Unknown topics and subscriptions are `topic_not_found` and
/// `subscription_not_found`, for every call that names one.
pub async fn unknown_topics_and_subscriptions_are_not_found(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    let topic = "topic_not_found";
    expect_code(engine.topic("nope").await, topic, "topic");
    expect_code(
        engine.publish("nope", vec![msg("x")]).await,
        topic,
        "publish",
    );
    expect_code(engine.read("nope", 1, 10).await, topic, "read");
    expect_code(engine.delete_topic("nope").await, topic, "delete_topic");
    expect_code(
        engine.create_subscription("s", sub_config("nope")).await,
        topic,
        "create_subscription on an unknown topic",
    );
    if let Err(e) = engine.tail("nope", StartPosition::Earliest).await {
        assert!(
            matches!(e.code(), "topic_not_found" | "unsupported_by_engine"),
            "tail of an unknown topic: {} ({e})",
            e.code()
        );
    } else {
        panic!("tail of an unknown topic must fail");
    }

    let sub = "subscription_not_found";
    let token = [foreign_token()];
    expect_code(engine.subscription("nope").await, sub, "subscription");
    expect_code(
        engine
            .pull(
                "nope",
                PullRequest {
                    consumer: "c".into(),
                    max_messages: 1,
                    wait: Duration::ZERO,
                },
            )
            .await,
        sub,
        "pull",
    );
    expect_code(engine.ack("nope", &token).await, sub, "ack");
    expect_code(engine.nack("nope", &token, None, None).await, sub, "nack");
    expect_code(
        engine.extend("nope", &token, ACK_DEADLINE).await,
        sub,
        "extend",
    );
    expect_code(engine.dead_letters("nope", 10).await, sub, "dead_letters");
    expect_code(
        engine.delete_subscription("nope").await,
        sub,
        "delete_subscription",
    );
    let update = SubscriptionUpdate {
        ack_deadline: Some(ACK_DEADLINE),
        ..SubscriptionUpdate::default()
    };
    let caps = engine.capabilities();
    if caps.supports(courier_core::Feature::SubscriptionUpdate) {
        expect_code(
            engine.update_subscription("nope", update).await,
            sub,
            "update_subscription",
        );
    }
    if caps.supports(courier_core::Feature::SeekBySeq) {
        expect_code(engine.seek("nope", SeekTarget::Seq(1)).await, sub, "seek");
    }
    if caps.supports(courier_core::Feature::DeadLetterReplay) {
        expect_code(
            engine.replay_dead_letters("nope", None).await,
            sub,
            "replay_dead_letters",
        );
    }
    done(engine).await;
}

/// Creating what exists is a no-op with the same config and a conflict with
/// another; a topic with subscriptions cannot be deleted.
pub async fn conflicting_definitions_are_refused(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    let info = engine
        .create_topic("t", TopicConfig::default())
        .await
        .must("creating an existing topic with the same config");
    assert_eq!(info.name, "t");
    let other = TopicConfig {
        dedup_window: Duration::from_secs(1),
        ..TopicConfig::default()
    };
    expect_code(
        engine.create_topic("t", other).await,
        "topic_exists",
        "another topic config",
    );
    engine
        .create_subscription("s", sub_config("t"))
        .await
        .must("creating an existing subscription with the same config");
    let mut other = sub_config("t");
    other.ack_deadline = ACK_DEADLINE * 2;
    expect_code(
        engine.create_subscription("s", other).await,
        "subscription_exists",
        "another subscription config",
    );
    expect_code(
        engine.delete_topic("t").await,
        "topic_in_use",
        "delete a topic in use",
    );

    engine
        .delete_subscription("s")
        .await
        .must("delete_subscription");
    engine.delete_topic("t").await.must("delete_topic");
    expect_code(
        engine.topic("t").await,
        "topic_not_found",
        "a deleted topic",
    );
    let topics = engine.list_topics().await.must("list_topics");
    assert!(
        topics.iter().all(|t| t.name != "t"),
        "deleted topic still listed"
    );
    done(engine).await;
}

/// Bad names and oversized messages are refused with their codes.
pub async fn invalid_requests_are_refused(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    for bad in ["", "a/b", "a b", ".x"] {
        expect_code(
            engine.create_topic(bad, TopicConfig::default()).await,
            "invalid_name",
            &format!("topic name {bad:?}"),
        );
    }
    create_topic(&engine, "t").await;
    expect_code(
        engine.create_subscription("a/b", sub_config("t")).await,
        "invalid_name",
        "subscription name \"a/b\"",
    );
    let limit = engine.capabilities().max_message_bytes;
    let huge = NewMessage {
        body: Bytes::from(vec![0u8; limit + 1]),
        ..NewMessage::default()
    };
    expect_code(
        engine.publish("t", vec![huge]).await,
        "message_too_large",
        &format!("a body of {} bytes (limit {limit})", limit + 1),
    );
    assert!(
        read_all(&engine, "t").await.is_empty(),
        "a refused publish stores nothing"
    );
    done(engine).await;
}

/// After shutdown, calls fail with `shutting_down`.
pub async fn calls_after_shutdown_are_refused(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    create_topic(&engine, "t").await;
    engine.shutdown().await.must("shutdown");
    expect_code(
        engine.list_topics().await,
        "shutting_down",
        "list_topics after shutdown",
    );
    expect_code(
        engine.publish("t", vec![msg("x")]).await,
        "shutting_down",
        "publish after shutdown",
    );
}

/// A call's result without its value.
fn unit<T>(r: Result<T>) -> Result<()> {
    r.map(|_| ())
}
