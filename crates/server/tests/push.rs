//! Push delivery end to end: a real server pushes to real HTTP services on
//! ephemeral ports that fail, hang, slow down, go away and come back.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::receiver::{Answer, Receiver};
use common::{eventually, TestServer};
use courier_client::push::PushVerifier;
use courier_client::wire::{InstanceRegistration, PublishMessage};
use courier_client::Publish;
use courier_core::{PushConfig, RetryPolicy, SubscriptionConfig, SubscriptionUpdate};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A server with topic `t` and service `svc` whose instances are `receivers`.
async fn server_pushing_to(receivers: &[&Receiver]) -> TestServer {
    let server = TestServer::start().await;
    server
        .client
        .create_topic("t", &Default::default())
        .await
        .unwrap();
    for (i, r) in receivers.iter().enumerate() {
        let reg = InstanceRegistration {
            url: r.url(),
            id: Some(format!("i{i}")),
            weight: None,
        };
        server.client.register_instance("svc", &reg).await.unwrap();
    }
    server
}

fn push(config: impl FnOnce(&mut PushConfig)) -> PushConfig {
    let mut p = PushConfig {
        service: "svc".into(),
        path: "/hook".into(),
        ..PushConfig::default()
    };
    config(&mut p);
    p
}

fn retry(max_attempts: u32, backoff_ms: u64) -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(backoff_ms),
        max_backoff: Duration::from_millis(backoff_ms),
        multiplier: 1.0,
        max_attempts,
        jitter: 0.0,
    }
}

async fn subscribe(server: &TestServer, name: &str, config: SubscriptionConfig) {
    server
        .client
        .create_subscription(name, &config)
        .await
        .unwrap();
}

fn sub(push: PushConfig) -> SubscriptionConfig {
    SubscriptionConfig {
        push: Some(push),
        ack_deadline: Duration::from_secs(30),
        retry: retry(5, 50),
        ..SubscriptionConfig::for_topic("t")
    }
}

async fn publish(server: &TestServer, bodies: impl IntoIterator<Item = String>) {
    for body in bodies {
        server
            .client
            .publish("t", body, &Publish::default())
            .await
            .unwrap();
    }
}

async fn settled(server: &TestServer, name: &str) {
    eventually("the subscription's backlog is empty", || async {
        let info = server.client.subscription(name).await.unwrap();
        (info.backlog == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn each_message_goes_out_signed_as_a_cloud_event_and_a_2xx_acks_it() {
    let receiver = Receiver::start().await;
    let server = server_pushing_to(&[&receiver]).await;
    subscribe(
        &server,
        "s",
        sub(push(|p| {
            p.secret = Some(SECRET.into());
            p.bearer_token = Some("tkn".into());
        })),
    )
    .await;
    let publish_one = Publish {
        key: Some("post-1".into()),
        headers: [("trace".to_string(), "abc".to_string())].into(),
        ..Publish::default()
    };
    server
        .client
        .publish("t", "{\"like\":1}", &publish_one)
        .await
        .unwrap();
    settled(&server, "s").await;

    let log = receiver.log();
    assert_eq!(log.len(), 1, "one request, no retry");
    let r = &log[0];
    assert_eq!(r.body.as_ref(), b"{\"like\":1}", "the body is untouched");
    assert_eq!(r.header("ce-specversion"), Some("1.0"));
    assert_eq!(r.header("ce-source"), Some("/courier/topics/t"));
    assert!(r.header("ce-time").is_some());
    assert_eq!(r.header("courier-subscription"), Some("s"));
    assert_eq!(r.header("courier-seq"), Some("1"));
    assert_eq!(r.header("courier-attempt"), Some("1"));
    assert_eq!(r.header("courier-key"), Some("post-1"));
    assert_eq!(r.header("courier-header-trace"), Some("abc"));
    assert_eq!(r.header("authorization"), Some("Bearer tkn"));
    assert_eq!(r.header("webhook-id"), Some(r.id().as_str()));
    let verifier = PushVerifier::new(SECRET).unwrap();
    verifier
        .verify(&r.headers, &r.body)
        .expect("signed by Courier");
    assert!(verifier.verify(&r.headers, b"{\"like\":2}").is_err());

    // Secrets never come back in answers.
    let info = server.client.subscription("s").await.unwrap();
    let shown = info.config.push.unwrap();
    assert_ne!(shown.secret.as_deref(), Some(SECRET));
    assert_ne!(shown.bearer_token.as_deref(), Some("tkn"));
}

#[tokio::test]
async fn failures_follow_the_retry_policy_then_dead_letter() {
    let receiver = Receiver::with(|_, _| Answer::status(500).body("boom")).await;
    let server = server_pushing_to(&[&receiver]).await;
    let mut config = sub(push(|_| {}));
    config.retry = retry(3, 200);
    subscribe(&server, "s", config).await;
    publish(&server, ["x".to_string()]).await;
    settled(&server, "s").await;

    let log = receiver.log();
    let attempts: Vec<u32> = log.iter().map(|r| r.attempt()).collect();
    assert_eq!(
        attempts,
        [1, 2, 3],
        "exactly max_attempts tries, no stacked retries"
    );
    for pair in log.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(190), "backoff kept: {gap:?}");
    }
    let letters = server.client.dead_letters("s", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let error = letters[0]
        .headers
        .get("courier-dlq-last-error")
        .cloned()
        .unwrap_or_default();
    assert!(
        error.contains("HTTP 500") && error.contains("boom"),
        "{error}"
    );
}

#[tokio::test]
async fn retry_after_sets_the_next_attempt_and_the_dead_letter_answer_is_final() {
    let receiver = Receiver::with(|r, _| match (r.body.as_ref(), r.attempt()) {
        (b"later", 1) => Answer::status(503).header("retry-after", "1"),
        (b"poison", _) => Answer::status(422).header("courier-dead-letter", "no such post"),
        _ => Answer::ok(),
    })
    .await;
    let server = server_pushing_to(&[&receiver]).await;
    subscribe(&server, "s", sub(push(|_| {}))).await;
    publish(&server, ["later".to_string(), "poison".to_string()]).await;
    settled(&server, "s").await;

    let log = receiver.log();
    let later: Vec<_> = log.iter().filter(|r| r.body.as_ref() == b"later").collect();
    assert_eq!(later.len(), 2);
    let gap = later[1].at - later[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 honoured, got {gap:?}"
    );
    let poison = log.iter().filter(|r| r.body.as_ref() == b"poison").count();
    assert_eq!(
        poison, 1,
        "dead-lettered at the first answer, attempts left unused"
    );
    let letters = server.client.dead_letters("s", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].body.as_deref(), Some("poison"));
    assert_eq!(
        letters[0]
            .headers
            .get("courier-dlq-last-error")
            .map(String::as_str),
        Some("no such post")
    );
}

#[tokio::test]
async fn a_batch_push_settles_each_entry_by_its_result() {
    let receiver = Receiver::with(|r, _| {
        let batch: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let results: Vec<serde_json::Value> = batch["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| {
                let status = match (m["body"].as_str().unwrap(), m["attempt"].as_u64().unwrap()) {
                    ("retry", 1) => "retry",
                    ("dead", _) => "dead_letter",
                    ("missing", 1) => return None,
                    _ => "ack",
                };
                Some(serde_json::json!({"id": m["id"], "status": status, "error": "said so"}))
            })
            .collect();
        Answer::status(200).body(serde_json::json!({ "results": results }).to_string())
    })
    .await;
    let server = server_pushing_to(&[&receiver]).await;
    subscribe(&server, "s", sub(push(|p| p.batch_size = 10))).await;
    let messages = ["ok", "retry", "dead", "missing", "ok"]
        .iter()
        .map(|b| PublishMessage {
            body: Some(b.to_string()),
            ..PublishMessage::default()
        })
        .collect();
    server.client.publish_batch("t", messages).await.unwrap();
    settled(&server, "s").await;

    let log = receiver.log();
    assert_eq!(
        log[0].header("content-type"),
        Some("application/json"),
        "a batch is one JSON request"
    );
    let first: serde_json::Value = serde_json::from_slice(&log[0].body).unwrap();
    assert_eq!(
        first["messages"].as_array().unwrap().len(),
        5,
        "one request for the five"
    );
    // "retry" and "missing" came back once more, "dead" went to the dead letters.
    let redelivered: usize = log[1..]
        .iter()
        .map(|r| {
            let b: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            b["messages"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(redelivered, 2);
    let letters = server.client.dead_letters("s", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].body.as_deref(), Some("dead"));
}

#[tokio::test]
async fn ordering_keys_stay_in_order_across_instances() {
    // Slow answers keep several pushes in flight, over three instances.
    let slow = |_: &_, _: &[_]| Answer::ok().after(Duration::from_millis(2));
    let receivers = [
        Receiver::with(slow).await,
        Receiver::with(slow).await,
        Receiver::with(slow).await,
    ];
    let server = server_pushing_to(&receivers.iter().collect::<Vec<_>>()).await;
    let mut config = sub(push(|p| p.max_concurrent = 16));
    config.ordered = true;
    subscribe(&server, "s", config).await;
    let messages: Vec<PublishMessage> = (0..200)
        .map(|i| PublishMessage {
            key: Some(format!("k{}", i % 5)),
            body: Some(format!("{}:{}", i % 5, i / 5)),
            ..PublishMessage::default()
        })
        .collect();
    server.client.publish_batch("t", messages).await.unwrap();
    settled(&server, "s").await;

    let mut all: Vec<_> = receivers.iter().flat_map(|r| r.log()).collect();
    assert_eq!(all.len(), 200);
    all.sort_by_key(|r| r.at);
    let mut next: BTreeMap<String, u32> = BTreeMap::new();
    for r in &all {
        let body = std::str::from_utf8(&r.body).unwrap();
        let (key, n) = body.split_once(':').unwrap();
        let expected = next.entry(key.to_string()).or_default();
        assert_eq!(
            n.parse::<u32>().unwrap(),
            *expected,
            "key {key} out of order"
        );
        *expected += 1;
    }
    for r in &receivers {
        assert!(!r.log().is_empty(), "every instance took a share");
    }
}

#[tokio::test]
async fn a_consumer_down_for_a_while_gets_everything_once_it_returns() {
    // Idempotent by message id, as a real consumer should be.
    let mut receiver = Receiver::start().await;
    let server = server_pushing_to(&[&receiver]).await;
    let mut config = sub(push(|p| p.timeout = Duration::from_millis(500)));
    config.retry = retry(3, 100);
    subscribe(&server, "s", config).await;
    publish(&server, (0..20).map(|i| format!("before-{i}"))).await;
    settled(&server, "s").await;

    receiver.stop().await;
    // A steady publish while nothing listens.
    for i in 0..100 {
        publish(&server, [format!("during-{i}")]).await;
        if i % 10 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let receiver = receiver.restart().await;
    settled(&server, "s").await;

    let mut processed: HashMap<String, usize> = HashMap::new();
    for r in receiver.log() {
        *processed.entry(r.id()).or_default() += 1;
    }
    assert_eq!(processed.len(), 120, "every message reached the consumer");
    let letters = server.client.dead_letters("s", 10).await.unwrap();
    assert!(
        letters.is_empty(),
        "the outage dead-lettered nothing: {letters:?}"
    );
    let stats = server.client.push_stats("s").await.unwrap();
    assert_eq!(stats["delivered_total"], 120);
}

#[tokio::test]
async fn registered_instances_come_and_go() {
    let a = Receiver::start().await;
    let server = server_pushing_to(&[&a]).await;
    subscribe(&server, "s", sub(push(|_| {}))).await;
    publish(&server, ["one".to_string()]).await;
    settled(&server, "s").await;
    assert_eq!(a.log().len(), 1);

    server.client.heartbeat("svc", "i0").await.unwrap();
    server.client.deregister("svc", "i0").await.unwrap();
    let err = server.client.heartbeat("svc", "i0").await.unwrap_err();
    assert!(err.to_string().contains("instance_not_found"), "{err}");

    // Nobody to push to: the message waits, unleased, without spending attempts.
    publish(&server, ["two".to_string()]).await;
    let b = Receiver::start().await;
    let reg = InstanceRegistration {
        url: b.url(),
        id: None,
        weight: None,
    };
    let registered = server.client.register_instance("svc", &reg).await.unwrap();
    assert_eq!(registered.id, b.addr.to_string());
    assert!(registered.expires_in > 0);
    settled(&server, "s").await;
    let log = b.log();
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].attempt(),
        1,
        "waiting for an instance spent no attempt"
    );
    assert_eq!(a.log().len(), 1);

    let view = server.client.service("svc").await.unwrap();
    assert_eq!(view["name"], "svc");
}

#[tokio::test]
async fn shutdown_releases_pushes_in_flight_without_spending_attempts() {
    let hang = Receiver::with(|_, _| Answer::ok().after(Duration::from_secs(60))).await;
    let mut server = {
        let server =
            TestServer::start_with(|c| c.server.shutdown_timeout = Duration::from_millis(300))
                .await;
        server
            .client
            .create_topic("t", &Default::default())
            .await
            .unwrap();
        let reg = InstanceRegistration {
            url: hang.url(),
            id: Some("i0".into()),
            weight: None,
        };
        server.client.register_instance("svc", &reg).await.unwrap();
        server
    };
    let mut config = sub(push(|p| p.timeout = Duration::from_secs(20)));
    config.retry = retry(1, 10);
    subscribe(&server, "s", config).await;
    publish(&server, (0..5).map(|i| format!("m{i}"))).await;
    eventually("all five pushes are in flight", || async {
        (hang.log().len() == 5).then_some(())
    })
    .await;
    server.stop().await;

    // After the restart the instance answers at once (it registers again,
    // as a real one would at its next heartbeat).
    let ok = Receiver::start().await;
    let server = server.restart().await;
    let reg = InstanceRegistration {
        url: ok.url(),
        id: Some("i0".into()),
        weight: None,
    };
    server.client.register_instance("svc", &reg).await.unwrap();
    settled(&server, "s").await;
    let log = ok.log();
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|r| r.attempt() == 1), "released, not spent");
    assert!(server
        .client
        .dead_letters("s", 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn push_settings_change_and_go_on_a_live_subscription() {
    let a = Receiver::start().await;
    let server = server_pushing_to(&[&a]).await;
    subscribe(&server, "s", sub(push(|p| p.path = "/one".into()))).await;
    publish(&server, ["1".to_string()]).await;
    settled(&server, "s").await;
    let update = SubscriptionUpdate {
        push: Some(Some(push(|p| p.path = "/two".into()))),
        ..SubscriptionUpdate::default()
    };
    server
        .client
        .update_subscription("s", &update)
        .await
        .unwrap();
    publish(&server, ["2".to_string()]).await;
    settled(&server, "s").await;
    assert_eq!(a.log().len(), 2);

    // Push off: messages wait for pulls.
    let off = SubscriptionUpdate {
        push: Some(None),
        ..SubscriptionUpdate::default()
    };
    let info = server.client.update_subscription("s", &off).await.unwrap();
    assert!(info.config.push.is_none());
    publish(&server, ["3".to_string()]).await;
    let pulled = server
        .client
        .pull(
            "s",
            &courier_client::wire::PullBody {
                wait_ms: Some(2000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(pulled.len(), 1);
    assert_eq!(a.log().len(), 2);
    let err = server.client.push_stats("s").await.unwrap_err();
    assert!(err.to_string().contains("not_pushed"), "{err}");
}

#[tokio::test]
async fn push_shows_in_stats_and_metrics() {
    let receiver = Receiver::with(|r, _| match r.body.as_ref() {
        b"bad" => Answer::status(500),
        _ => Answer::ok(),
    })
    .await;
    let server = server_pushing_to(&[&receiver]).await;
    let mut config = sub(push(|_| {}));
    config.retry = retry(2, 10);
    subscribe(&server, "metered", config).await;
    publish(&server, ["good".to_string(), "bad".to_string()]).await;
    settled(&server, "metered").await;

    let stats = server.client.push_stats("metered").await.unwrap();
    assert_eq!(stats["service"], "svc");
    assert_eq!(stats["delivered_total"], 1);
    assert_eq!(stats["failed_total"], 2);
    assert_eq!(stats["backlog"], 0);
    assert!(stats["last_error"].as_str().unwrap().contains("HTTP 500"));
    let view = server.client.service("svc").await.unwrap();
    let instance = &view["stats"]["instances"][0];
    assert_eq!(instance["requests_total"], 3);
    assert_eq!(instance["failures_total"], 2);
    assert_eq!(instance["circuit"], "closed");

    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "courier_push_delivered_total{subscription=\"metered\"} 1",
        "courier_push_failures_total{subscription=\"metered\"} 2",
        "courier_push_requests_in_flight{subscription=\"metered\"} 0",
        "courier_push_oldest_unacked_age_milliseconds{subscription=\"metered\"} 0",
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
    assert!(metrics.contains("courier_upstream_requests_total{"));
}
