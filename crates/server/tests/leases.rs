//! Lease tokens over HTTP: what ack, nack and extend answer for current,
//! stale, never-leased and unknown tokens; changing a live subscription;
//! the engine's capabilities.

mod common;

use std::time::Duration;

use courier_client::wire::{NackBody, PublishMessage, PullBody, SettleResponse};
use courier_client::Publish;
use courier_core::{
    Feature, LeaseToken, Outcome, RetryPolicy, StartPosition, SubscriptionConfig,
    SubscriptionUpdate, TopicConfig,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::{eventually, TestServer};

fn pull(consumer: &str, max: u32) -> PullBody {
    PullBody {
        consumer: Some(consumer.into()),
        max_messages: Some(max),
        wait_ms: Some(5_000),
    }
}

fn outcomes(answer: &SettleResponse) -> Vec<Outcome> {
    answer.results.iter().map(|r| r.outcome).collect()
}

fn wall_ms() -> u64 {
    courier_core::clock::wall_now()
}

async fn post(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    request(server, Method::POST, path, Some(body)).await
}

/// Sends a JSON request and returns the status and the JSON answer.
async fn request(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", server.url));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// A consumer whose lease ran out cannot settle the message another consumer
/// has leased since: its ack answers `lease_lost` and the message stays with
/// the new consumer until that one acks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_is_lease_lost_and_settles_nothing() {
    let mut server = TestServer::start().await;
    let c = &server.client;
    c.create_topic("t", &TopicConfig::default()).await.unwrap();
    let config = SubscriptionConfig {
        ack_deadline: Duration::from_millis(200),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            jitter: 0.0,
            max_attempts: 0,
            ..RetryPolicy::default()
        },
        ..SubscriptionConfig::for_topic("t")
    };
    c.create_subscription("s", &config).await.unwrap();
    c.publish("t", "job", &Publish::default()).await.unwrap();

    let first = c.pull("s", &pull("slow", 1)).await.unwrap();
    assert_eq!((first.len(), first[0].attempt), (1, 1));
    let stale = first[0].token.clone();
    // Leases from now on last long enough for the checks below; the one just
    // granted keeps its 200 ms.
    let longer = SubscriptionUpdate {
        ack_deadline: Some(Duration::from_secs(60)),
        ..SubscriptionUpdate::default()
    };
    c.update_subscription("s", &longer).await.unwrap();

    // The lease expires unacked; another consumer gets the message again.
    let second = eventually("the message is redelivered to another consumer", || async {
        let got = c.pull("s", &pull("fast", 1)).await.unwrap();
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(second[0].message.seq, first[0].message.seq);
    assert_eq!(second[0].attempt, 2);
    assert_ne!(second[0].token, stale);

    // The slow consumer finishes and acks with its old token: refused, 200.
    let (status, answer) = post(
        &server,
        "/v1/subscriptions/s/ack",
        json!({ "tokens": [stale.as_str()] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({ "results": [{ "token": stale.as_str(), "outcome": "lease_lost" }] })
    );
    // Nor may it nack or extend what it no longer holds.
    let nacked = c
        .nack(
            "s",
            &NackBody {
                tokens: vec![stale.clone()],
                ..NackBody::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(outcomes(&nacked), [Outcome::LeaseLost]);
    let extended = c
        .extend("s", std::slice::from_ref(&stale), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(outcomes(&extended), [Outcome::LeaseLost]);

    // The message is still the fast consumer's: leased, not settled.
    let info = c.subscription("s").await.unwrap();
    assert_eq!((info.in_flight, info.acked_total), (1, 0));
    let acked = c.ack("s", &[second[0].token.clone()]).await.unwrap();
    assert_eq!(outcomes(&acked), [Outcome::Ok]);
    let info = c.subscription("s").await.unwrap();
    assert_eq!((info.in_flight, info.acked_total, info.backlog), (0, 1, 0));
    server.stop().await;
}

/// Outcomes come one per token, in request order, and only `ok` takes effect:
/// a made-up token of a message read but never leased is `not_leased`; one of
/// a message never published, or not in this engine's form, is `not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_and_unknown_tokens() {
    let mut server = TestServer::start().await;
    let c = &server.client;
    c.create_topic("t", &TopicConfig::default()).await.unwrap();
    let ordered = SubscriptionConfig {
        ordered: true,
        start: StartPosition::Earliest,
        ..SubscriptionConfig::for_topic("t")
    };
    c.create_subscription("s", &ordered).await.unwrap();
    // Two of one key: the second waits behind the first, read but not leased.
    let keyed = |body: &str| PublishMessage {
        key: Some("k".into()),
        ..PublishMessage::new(body.to_owned())
    };
    c.publish_batch("t", vec![keyed("one"), keyed("two")])
        .await
        .unwrap();
    let got = c.pull("s", &pull("c", 10)).await.unwrap();
    assert_eq!(got.len(), 1, "one in flight per key");
    assert_eq!(got[0].message.seq, 1);
    let held = got[0].token.clone();

    let (status, answer) = post(
        &server,
        "/v1/subscriptions/s/ack",
        json!({ "tokens": ["2-1", "999-1", "garbage", held.as_str()] }),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a valid request is 200 whatever the outcomes"
    );
    assert_eq!(
        answer,
        json!({ "results": [
            { "token": "2-1", "outcome": "not_leased" },
            { "token": "999-1", "outcome": "not_found" },
            { "token": "garbage", "outcome": "not_found" },
            { "token": held.as_str(), "outcome": "ok" },
        ] })
    );
    // Only the held message was settled; the second is deliverable now.
    let info = c.subscription("s").await.unwrap();
    assert_eq!((info.acked_total, info.backlog), (1, 1));
    let next = c.pull("s", &pull("c", 10)).await.unwrap();
    assert_eq!((next.len(), next[0].message.seq), (1, 2));
    // A made-up token of a leased message is lease_lost: the lease is someone else's.
    let wrong = c.ack("s", &[LeaseToken::new("2-0")]).await.unwrap();
    assert_eq!(outcomes(&wrong), [Outcome::LeaseLost]);
    assert_eq!(c.subscription("s").await.unwrap().in_flight, 1);

    // An unknown subscription is still an error, not an outcome.
    let (status, problem) = post(
        &server,
        "/v1/subscriptions/nope/ack",
        json!({ "tokens": ["1-1"] }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["code"], "subscription_not_found");
    server.stop().await;
}

/// PATCH changes a subscription with messages in flight: its leases and
/// counters stay, and the next lease uses the new ack deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_the_ack_deadline_of_the_next_lease() {
    let mut server = TestServer::start().await;
    let c = &server.client;
    c.create_topic("t", &TopicConfig::default()).await.unwrap();
    c.create_subscription("s", &SubscriptionConfig::for_topic("t"))
        .await
        .unwrap();
    c.publish_batch(
        "t",
        vec![PublishMessage::new("a"), PublishMessage::new("b")],
    )
    .await
    .unwrap();
    let before = wall_ms();
    let first = c.pull("s", &pull("c", 1)).await.unwrap();
    assert!(
        first[0].lease_deadline >= before + 30_000,
        "the default deadline"
    );

    let (status, info) = request(
        &server,
        Method::PATCH,
        "/v1/subscriptions/s",
        Some(json!({ "ack_deadline": 5000, "max_in_flight": 50 })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["config"]["ack_deadline"], 5000);
    assert_eq!(info["config"]["max_in_flight"], 50);
    assert_eq!(info["config"]["topic"], "t", "the rest stays");
    assert_eq!(info["config"]["max_in_flight_per_consumer"], 1000);
    assert_eq!(info["in_flight"], 1, "the lease survived the update");
    assert_eq!(info["delivered_total"], 1);

    let t0 = wall_ms();
    let second = c.pull("s", &pull("c", 1)).await.unwrap();
    let t1 = wall_ms();
    let deadline = second[0].lease_deadline;
    assert!(
        (t0 + 5_000..=t1 + 5_000).contains(&deadline),
        "lease deadline {deadline} is 5 s after the pull ({t0}..{t1})"
    );
    // The earlier lease kept its token (and its deadline): it still acks.
    let acked = c
        .ack("s", &[first[0].token.clone(), second[0].token.clone()])
        .await
        .unwrap();
    assert_eq!(outcomes(&acked), [Outcome::Ok, Outcome::Ok]);

    // The typed client, and a partial retry policy (the rest takes its defaults).
    let update = SubscriptionUpdate {
        retry: Some(RetryPolicy {
            max_attempts: 9,
            ..RetryPolicy::default()
        }),
        ..SubscriptionUpdate::default()
    };
    let info = c.update_subscription("s", &update).await.unwrap();
    assert_eq!(info.config.retry.max_attempts, 9);
    assert_eq!(info.config.ack_deadline, Duration::from_secs(5));
    // An empty update changes nothing.
    let same = c
        .update_subscription("s", &SubscriptionUpdate::default())
        .await
        .unwrap();
    assert_eq!(same.config, info.config);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_refusals() {
    let mut server = TestServer::start().await;
    let c = &server.client;
    c.create_topic("t", &TopicConfig::default()).await.unwrap();
    c.create_subscription("s", &SubscriptionConfig::for_topic("t"))
        .await
        .unwrap();
    let max = u64::MAX;
    for (body, status, code) in [
        (json!({ "ack_deadline": 0 }), 400, "invalid_argument"),
        (json!({ "ack_deadline": max }), 400, "invalid_argument"),
        (json!({ "max_in_flight": 0 }), 400, "invalid_argument"),
        (
            json!({ "retry": { "initial_backoff": 10, "max_backoff": 1 } }),
            400,
            "invalid_argument",
        ),
        (json!({ "dead_letter_topic": "t" }), 400, "invalid_argument"),
        (json!({ "dead_letter_topic": "a b" }), 400, "invalid_name"),
        (json!({ "ordered": true }), 422, "unknown_field"),
        (json!({ "topic": "other" }), 422, "unknown_field"),
        (json!({ "ack_deadline": "5s" }), 422, "invalid_field"),
    ] {
        let (got, problem) = request(
            &server,
            Method::PATCH,
            "/v1/subscriptions/s",
            Some(body.clone()),
        )
        .await;
        assert_eq!(got.as_u16(), status, "{body}: {problem}");
        assert_eq!(problem["code"], code, "{body}");
    }
    let (got, problem) = request(
        &server,
        Method::PATCH,
        "/v1/subscriptions/nope",
        Some(json!({ "ack_deadline": 1000 })),
    )
    .await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    assert_eq!(problem["code"], "subscription_not_found");
    // Nothing above changed the subscription.
    assert_eq!(
        c.subscription("s").await.unwrap().config,
        SubscriptionConfig::for_topic("t")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_list_the_engines_features() {
    let mut server = TestServer::start().await;
    let (status, raw) = request(&server, Method::GET, "/v1/capabilities", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(raw["engine"], "embedded");
    let listed: Vec<&str> = raw["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for name in [
        "ordering_keys",
        "lease_extension",
        "subscription_update",
        "release",
        "reject",
    ] {
        assert!(listed.contains(&name), "{name} in {listed:?}");
    }
    let caps = server.client.capabilities().await.unwrap();
    assert_eq!(
        caps.features.len(),
        Feature::ALL.len(),
        "embedded has them all"
    );
    assert!(caps.max_message_bytes > 0);
    server.stop().await;
}
