//! The whole life of a message over HTTP against the real server and engine.

mod common;

use std::time::Duration;

use courier_client::wire::{DeliveryView, NackBody, PublishMessage, PullBody, SettleResponse};
use courier_client::Publish;
use courier_core::{
    dlq_headers, LeaseToken, Outcome, RetryPolicy, SeekTarget, SubscriptionConfig, TopicConfig,
};

use common::{eventually, TestServer};

fn sub_config(topic: &str) -> SubscriptionConfig {
    SubscriptionConfig {
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_attempts: 2,
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..SubscriptionConfig::for_topic(topic)
    }
}

fn pull_body(max: u32) -> PullBody {
    PullBody {
        consumer: Some("tester".into()),
        max_messages: Some(max),
        wait_ms: Some(5_000),
    }
}

fn tokens(deliveries: &[DeliveryView]) -> Vec<LeaseToken> {
    deliveries.iter().map(|d| d.token.clone()).collect()
}

fn outcomes(answer: &SettleResponse) -> Vec<Outcome> {
    answer.results.iter().map(|r| r.outcome).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_lifecycle() {
    let mut server = TestServer::start().await;
    let c = &server.client;

    // Topics: created, identical again, different config.
    let created = c
        .create_topic("orders", &TopicConfig::default())
        .await
        .unwrap();
    assert!(created.created);
    assert_eq!(created.value.name, "orders");
    assert!(
        !c.create_topic("orders", &TopicConfig::default())
            .await
            .unwrap()
            .created
    );
    let different = TopicConfig {
        dedup_window: Duration::from_secs(1),
        ..TopicConfig::default()
    };
    let err = c.create_topic("orders", &different).await.unwrap_err();
    assert_eq!(err.code(), Some("topic_exists"));
    assert_eq!(err.status(), Some(409));
    assert!(c
        .list_topics()
        .await
        .unwrap()
        .iter()
        .any(|t| t.name == "orders"));

    let sub = c
        .create_subscription("work", &sub_config("orders"))
        .await
        .unwrap();
    assert!(sub.created);
    assert!(
        !c.create_subscription("work", &sub_config("orders"))
            .await
            .unwrap()
            .created
    );
    assert_eq!(c.subscription("work").await.unwrap().config.topic, "orders");

    // Publish one with metadata, then its retry, then a batch.
    let options = Publish {
        id: Some("m1".into()),
        key: Some("customer-7".into()),
        headers: [("trace".to_string(), "abc".to_string())].into(),
        content_type: Some("text/plain".into()),
        ..Publish::default()
    };
    let r1 = c.publish("orders", "hello", &options).await.unwrap();
    assert_eq!((r1.id.as_str(), r1.duplicate), ("m1", false));
    let again = c.publish("orders", "hello", &options).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.seq, r1.seq);

    let mut binary = PublishMessage::new(vec![0u8, 159, 146, 150]);
    binary.id = Some("m3".into());
    let receipts = c
        .publish_batch("orders", vec![PublishMessage::new("second"), binary])
        .await
        .unwrap();
    assert_eq!(receipts.len(), 2);
    assert_eq!(receipts[0].seq, r1.seq + 1);
    assert_eq!(receipts[1].seq, r1.seq + 2);

    // Browse without leasing.
    let stored = c.browse("orders", 0, 100).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(
        stored[0].headers.get("trace").map(String::as_str),
        Some("abc")
    );
    assert_eq!(
        stored[0].headers.get("content-type").map(String::as_str),
        Some("text/plain")
    );
    assert!(stored[2].body.is_none(), "non-UTF-8 travels as base64");
    assert_eq!(&stored[2].body_bytes().unwrap()[..], &[0u8, 159, 146, 150]);

    // Pull all three, first attempt.
    let got = c.pull("work", &pull_body(10)).await.unwrap();
    assert_eq!(
        got.iter().map(|d| d.message.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(got.iter().all(|d| d.attempt == 1));
    assert_eq!(got[0].message.key.as_deref(), Some("customer-7"));
    assert_eq!(got[0].message.body.as_deref(), Some("hello"));
    assert!(got[0].lease_deadline > got[0].message.published_at);

    let all = tokens(&got);
    assert!(
        all.iter().collect::<std::collections::HashSet<_>>().len() == 3,
        "each delivery has its own token: {all:?}"
    );

    // Extend a lease; a token of a message never published is not found.
    let extended = c
        .extend("work", &all[..1], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(extended.results[0].token, all[0]);
    assert_eq!(outcomes(&extended), [Outcome::Ok]);
    let missing = c
        .extend("work", &[LeaseToken::new("999-1")], Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(outcomes(&missing), [Outcome::NotFound]);

    let acked = c.ack("work", &all[1..]).await.unwrap();
    assert_eq!(outcomes(&acked), [Outcome::Ok, Outcome::Ok]);
    // Acking again: settled already.
    let again_acked = c.ack("work", &all[1..2]).await.unwrap();
    assert_eq!(outcomes(&again_acked), [Outcome::NotFound]);

    // Nack → redelivered as attempt 2, under a new token.
    let nack = |token: &LeaseToken, error: &str| NackBody {
        tokens: vec![token.clone()],
        delay_ms: Some(0),
        error: Some(error.into()),
    };
    let nacked = c
        .nack("work", &nack(&all[0], "first failure"))
        .await
        .unwrap();
    assert_eq!(outcomes(&nacked), [Outcome::Ok]);
    let retry = c.pull("work", &pull_body(10)).await.unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!((retry[0].message.seq, retry[0].attempt), (1, 2));
    assert_ne!(retry[0].token, all[0], "a new lease, a new token");
    // The first lease's token no longer settles anything.
    let stale = c.nack("work", &nack(&all[0], "stale")).await.unwrap();
    assert_eq!(outcomes(&stale), [Outcome::LeaseLost]);

    // The second failure is the last attempt: dead-lettered.
    let nacked = c
        .nack("work", &nack(&retry[0].token, "boom"))
        .await
        .unwrap();
    assert_eq!(outcomes(&nacked), [Outcome::Ok]);
    let dead = eventually("message 1 is dead-lettered", || async {
        let dl = c.dead_letters("work", 10).await.unwrap();
        (!dl.is_empty()).then_some(dl)
    })
    .await;
    assert_eq!(dead.len(), 1);
    let h = &dead[0].headers;
    assert_eq!(h.get(dlq_headers::ID).map(String::as_str), Some("m1"));
    assert_eq!(
        h.get(dlq_headers::LAST_ERROR).map(String::as_str),
        Some("boom")
    );
    assert_eq!(
        h.get(dlq_headers::SUBSCRIPTION).map(String::as_str),
        Some("work")
    );
    assert_eq!(dead[0].body.as_deref(), Some("hello"));
    let info = c.subscription("work").await.unwrap();
    assert_eq!(info.dead_lettered_total, 1);

    // Replay: back into the subscription with fresh attempts.
    assert_eq!(c.replay_dead_letters("work", None).await.unwrap(), 1);
    let replayed = c.pull("work", &pull_body(10)).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].message.id, "m1");
    assert_eq!(replayed[0].message.body.as_deref(), Some("hello"));
    let acked = c.ack("work", &tokens(&replayed)).await.unwrap();
    assert_eq!(outcomes(&acked), [Outcome::Ok]);
    assert!(c.dead_letters("work", 10).await.unwrap().is_empty());

    // Seek back to the start: everything is delivered again.
    c.seek("work", SeekTarget::Seq(1)).await.unwrap();
    let again = c.pull("work", &pull_body(10)).await.unwrap();
    assert_eq!(
        again.iter().map(|d| d.message.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let acked = c.ack("work", &tokens(&again)).await.unwrap();
    assert_eq!(acked.ok_count(), 3);

    let stats = c.stats().await.unwrap();
    assert!(stats.topics >= 1 && stats.subscriptions >= 1);
    assert!(stats.published_total >= 3);
    assert!(stats.acked_total >= 3);
    assert_eq!(stats.dead_lettered_total, 1);

    // Deleting: a topic in use is refused; afterwards both are gone.
    let err = c.delete_topic("orders").await.unwrap_err();
    assert_eq!(err.code(), Some("topic_in_use"));
    c.delete_subscription("work").await.unwrap();
    c.delete_topic("orders").await.unwrap();
    assert_eq!(
        c.topic("orders").await.unwrap_err().code(),
        Some("topic_not_found")
    );
    assert_eq!(
        c.subscription("work").await.unwrap_err().code(),
        Some("subscription_not_found")
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_delete_takes_the_topics_subscriptions_along() {
    let mut server = TestServer::start().await;
    let c = server.client.clone();
    for t in ["doomed", "other"] {
        c.create_topic(t, &TopicConfig::default()).await.unwrap();
    }
    for (s, t) in [("a", "doomed"), ("b", "doomed"), ("keep", "other")] {
        c.create_subscription(s, &SubscriptionConfig::for_topic(t))
            .await
            .unwrap();
    }
    c.publish("doomed", "x", &Publish::default()).await.unwrap();
    assert_eq!(
        c.delete_topic("doomed").await.unwrap_err().code(),
        Some("topic_in_use")
    );
    c.delete_topic_force("doomed").await.unwrap();
    for s in ["a", "b"] {
        assert_eq!(
            c.subscription(s).await.unwrap_err().code(),
            Some("subscription_not_found")
        );
    }
    // Only the doomed topic's subscriptions went.
    c.subscription("keep").await.unwrap();
    c.topic("other").await.unwrap();
    // Nothing to delete: 404, and nothing else touched.
    assert_eq!(
        c.delete_topic_force("doomed").await.unwrap_err().code(),
        Some("topic_not_found")
    );
    // The name is free again, with an empty log.
    c.create_topic("doomed", &TopicConfig::default())
        .await
        .unwrap();
    assert_eq!(c.topic("doomed").await.unwrap().next_seq, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data() {
    let server = TestServer::start().await;
    let c = server.client.clone();
    c.create_topic("events", &TopicConfig::default())
        .await
        .unwrap();
    c.create_subscription("reader", &SubscriptionConfig::for_topic("events"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = c
            .publish("events", format!("event {i}"), &Publish::default())
            .await
            .unwrap();
        ids.push(r.id);
    }
    // Settle the first five so the restart must also keep the subscription's position.
    let first = c.pull("reader", &pull_body(5)).await.unwrap();
    assert_eq!(first.len(), 5);
    let acked = c.ack("reader", &tokens(&first)).await.unwrap();
    assert_eq!(acked.ok_count(), 5);

    let server = server.restart().await;
    let c = &server.client;
    let topic = c.topic("events").await.unwrap();
    assert_eq!(topic.messages, 20);
    let stored = c.browse("events", 0, 100).await.unwrap();
    assert_eq!(stored.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), ids);
    let rest = c.pull("reader", &pull_body(100)).await.unwrap();
    assert_eq!(rest.first().map(|d| d.message.seq), Some(6));
    assert_eq!(rest.len(), 15);
    let acked = c.ack("reader", &tokens(&rest)).await.unwrap();
    assert_eq!(acked.ok_count(), 15);
    let mut server = server;
    server.stop().await;
}
