//! The embedded engine end to end: real files, real fsync, tokio's paused clock
//! for every time-dependent behaviour.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_core::{
    Clock, Delivery, Engine, LeaseToken, NewMessage, Outcome, PullRequest, RetryPolicy, SeekTarget,
    StartPosition, SubscriptionConfig, TopicConfig,
};
use courier_embedded::{EmbeddedConfig, EmbeddedEngine};
use tempfile::TempDir;

fn config(dir: &TempDir) -> EmbeddedConfig {
    EmbeddedConfig {
        data_dir: dir.path().to_path_buf(),
        segment_bytes: 64 * 1024,
        // No background timers: with a paused clock they would make time jump.
        tick_interval: Duration::ZERO,
        checkpoint_interval: Duration::ZERO,
        retention_interval: Duration::ZERO,
        ..EmbeddedConfig::default()
    }
}

async fn open(dir: &TempDir) -> Arc<EmbeddedEngine> {
    EmbeddedEngine::open_with_clock(config(dir), Clock::tokio())
        .await
        .unwrap()
}

/// Opens `dir` after an engine was dropped without `shutdown` (a crash, as far
/// as the files are concerned). Its tasks may still hold it for a moment while
/// they finish, so wait for the directory lock to be released.
async fn reopen_after_crash(dir: &TempDir) -> Arc<EmbeddedEngine> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match EmbeddedEngine::open_with_clock(config(dir), Clock::tokio()).await {
            Ok(e) => return e,
            Err(e) if e.to_string().contains("in use") && std::time::Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
}

fn msg(body: &str) -> NewMessage {
    NewMessage {
        body: Bytes::from(body.to_string()),
        ..NewMessage::default()
    }
}

fn sub_config(topic: &str) -> SubscriptionConfig {
    SubscriptionConfig {
        start: StartPosition::Earliest,
        ack_deadline: Duration::from_secs(10),
        retry: RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            max_attempts: 3,
            jitter: 0.0,
        },
        ..SubscriptionConfig::for_topic(topic)
    }
}

fn pull(max: usize) -> PullRequest {
    PullRequest {
        consumer: "c".into(),
        max_messages: max,
        wait: Duration::ZERO,
    }
}

fn tokens(d: &[Delivery]) -> Vec<LeaseToken> {
    d.iter().map(|d| d.token.clone()).collect()
}

/// The tokens of the deliveries of these sequences.
fn tok(d: &[Delivery], seqs: &[u64]) -> Vec<LeaseToken> {
    d.iter()
        .filter(|d| seqs.contains(&d.message.seq))
        .map(|d| d.token.clone())
        .collect()
}

fn bodies(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| String::from_utf8(d.message.body.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn publish_pull_ack_and_fan_out() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("a", sub_config("t")).await.unwrap();
    e.create_subscription("b", sub_config("t")).await.unwrap();
    let receipts = e
        .publish("t", vec![msg("1"), msg("2"), msg("3")])
        .await
        .unwrap();
    assert_eq!(
        receipts.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        receipts[0].id < receipts[1].id,
        "generated ids sort by time and sequence"
    );

    let mut a_tokens = Vec::new();
    for sub in ["a", "b"] {
        let got = e.pull(sub, pull(10)).await.unwrap();
        assert_eq!(bodies(&got), vec!["1", "2", "3"]);
        assert!(got.iter().all(|d| d.attempt == 1));
        assert_eq!(got[0].message.id, receipts[0].id);
        if sub == "a" {
            a_tokens = tokens(&got);
        }
    }
    let outcomes = e.ack("a", &a_tokens).await.unwrap();
    assert_eq!(outcomes, vec![Outcome::Ok; 3]);
    let a = e.subscription("a").await.unwrap();
    assert_eq!((a.ack_floor, a.backlog, a.in_flight), (4, 0, 0));
    let b = e.subscription("b").await.unwrap();
    assert_eq!((b.ack_floor, b.in_flight), (1, 3));
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn competing_consumers_share_the_queue() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("q", sub_config("t")).await.unwrap();
    let batch: Vec<_> = (0..100).map(|i| msg(&i.to_string())).collect();
    e.publish("t", batch).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for consumer in ["x", "y", "z", "x", "y", "z", "x"] {
        let got = e
            .pull(
                "q",
                PullRequest {
                    consumer: consumer.into(),
                    max_messages: 15,
                    wait: Duration::ZERO,
                },
            )
            .await
            .unwrap();
        for d in &got {
            assert!(
                seen.insert(d.message.seq),
                "delivered twice: {}",
                d.message.seq
            );
        }
        e.ack("q", &tokens(&got)).await.unwrap();
    }
    assert_eq!(seen.len(), 100);
    e.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn lease_expiry_and_backoff_then_dead_letter_and_replay() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("s", sub_config("t")).await.unwrap();
    e.publish("t", vec![msg("poison")]).await.unwrap();

    let first = e.pull("s", pull(1)).await.unwrap();
    assert_eq!(first[0].attempt, 1);
    // Not redelivered before the ack deadline.
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert!(e.pull("s", pull(1)).await.unwrap().is_empty());
    // Expires at 10 s, then waits out the first backoff (1 s).
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(e.pull("s", pull(1)).await.unwrap().is_empty());
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let second = e.pull("s", pull(1)).await.unwrap();
    assert_eq!(second[0].attempt, 2);

    // A nack uses the second backoff (2 s).
    e.nack("s", &tokens(&second), None, Some("handler failed".into()))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(1_999)).await;
    assert!(e.pull("s", pull(1)).await.unwrap().is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    let third = e.pull("s", pull(1)).await.unwrap();
    assert_eq!(third[0].attempt, 3);

    // Third failure: max_attempts reached, the message goes to s.dlq.
    e.nack("s", &tokens(&third), None, Some("still failing".into()))
        .await
        .unwrap();
    let letters = wait_for_dead_letters(&e, "s", 1).await;
    wait_until(|| async { e.subscription("s").await.unwrap().ack_floor == 2 }).await;
    let h = &letters[0].headers;
    assert_eq!(h["courier-dlq-attempts"], "3");
    assert_eq!(h["courier-dlq-last-error"], "still failing");
    assert_eq!(h["courier-dlq-seq"], "1");
    assert_eq!(letters[0].body, Bytes::from("poison"));

    // Replay puts it back with fresh attempts, and empties the listing.
    assert_eq!(e.replay_dead_letters("s", None).await.unwrap(), 1);
    assert!(e.dead_letters("s", 10).await.unwrap().is_empty());
    let again = e.pull("s", pull(1)).await.unwrap();
    assert_eq!((again[0].message.seq, again[0].attempt), (1, 1));
    e.ack("s", &tokens(&again)).await.unwrap();
    e.shutdown().await.unwrap();
}

/// Yields until `check` holds: the dead-letter worker runs on its own task.
async fn wait_until<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..10_000 {
        if check().await {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

async fn wait_for_dead_letters(
    e: &EmbeddedEngine,
    sub: &str,
    n: usize,
) -> Vec<courier_core::Message> {
    // The dead-letter worker runs on its own task; yield until it has moved them.
    for _ in 0..10_000 {
        let letters = e.dead_letters(sub, 100).await.unwrap();
        if letters.len() >= n {
            return letters;
        }
        tokio::task::yield_now().await;
    }
    panic!("dead letters never arrived");
}

#[tokio::test(start_paused = true)]
async fn extend_keeps_the_lease() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("s", sub_config("t")).await.unwrap();
    e.publish("t", vec![msg("slow")]).await.unwrap();
    let leased = tokens(&e.pull("s", pull(1)).await.unwrap());
    tokio::time::advance(Duration::from_secs(9)).await;
    let outcomes = e
        .extend("s", &leased, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(outcomes, vec![Outcome::Ok]);
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(e.pull("s", pull(1)).await.unwrap().is_empty());
    assert_eq!(e.subscription("s").await.unwrap().in_flight, 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    let outcomes = e
        .extend("s", &leased, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(outcomes, vec![Outcome::LeaseLost]);
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn ordering_keys_under_parallel_consumers() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    let mut cfg = sub_config("t");
    cfg.ordered = true;
    e.create_subscription("s", cfg).await.unwrap();
    let keys = ["a", "b", "c", "d"];
    let batch: Vec<_> = (0..400)
        .map(|i| NewMessage {
            key: Some(keys[i % 4].to_string()),
            body: Bytes::from(format!("{}", i / 4)),
            ..NewMessage::default()
        })
        .collect();
    e.publish("t", batch).await.unwrap();
    let seen = Arc::new(parking_lot::Mutex::new(std::collections::HashMap::<
        String,
        Vec<u32>,
    >::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let e = e.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let give_up = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let total: usize = seen.lock().values().map(Vec::len).sum();
                if total >= 400 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < give_up,
                    "ordered delivery stalled"
                );
                let got = e
                    .pull(
                        "s",
                        PullRequest {
                            consumer: format!("w{w}"),
                            max_messages: 3,
                            wait: Duration::from_millis(20),
                        },
                    )
                    .await
                    .unwrap();
                if got.is_empty() {
                    continue;
                }
                {
                    let mut seen = seen.lock();
                    let mut keys_now = std::collections::HashSet::new();
                    for d in &got {
                        let key = d.message.key.clone().unwrap();
                        assert!(keys_now.insert(key.clone()), "two of one key in flight");
                        let n: u32 = std::str::from_utf8(&d.message.body)
                            .unwrap()
                            .parse()
                            .unwrap();
                        seen.entry(key).or_default().push(n);
                    }
                }
                tokio::task::yield_now().await;
                e.ack("s", &tokens(&got)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().clone();
    for key in keys {
        let order = &seen[key];
        assert_eq!(
            order,
            &(0..100).collect::<Vec<u32>>(),
            "key {key} out of order"
        );
    }
    e.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn delayed_delivery_survives_restart() {
    let dir = TempDir::new().unwrap();
    // The engine's clock follows tokio's (paused) clock from the wall time at open.
    let at = courier_core::clock::wall_now() + 60_000;
    {
        let e = open(&dir).await;
        e.create_topic("t", TopicConfig::default()).await.unwrap();
        e.create_subscription("s", sub_config("t")).await.unwrap();
        let later = NewMessage {
            deliver_at: Some(at),
            ..msg("later")
        };
        e.publish("t", vec![later, msg("now")]).await.unwrap();
        let got = e.pull("s", pull(10)).await.unwrap();
        assert_eq!(bodies(&got), vec!["now"]);
        e.ack("s", &tok(&got, &[2])).await.unwrap();
        e.shutdown().await.unwrap();
    }
    let e = open(&dir).await;
    let start = tokio::time::Instant::now();
    assert!(e.pull("s", pull(10)).await.unwrap().is_empty());
    // A waiting pull returns when the delivery time comes, not before.
    let wait = PullRequest {
        wait: Duration::from_secs(120),
        ..pull(10)
    };
    let got = e.pull("s", wait).await.unwrap();
    assert_eq!(bodies(&got), vec!["later"]);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(59),
        "delivered early, after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(61),
        "delivered late, after {waited:?}"
    );
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_keeps_acks_leases_and_attempts() {
    let dir = TempDir::new().unwrap();
    {
        let e = open(&dir).await;
        e.create_topic("t", TopicConfig::default()).await.unwrap();
        e.create_subscription("s", sub_config("t")).await.unwrap();
        let batch: Vec<_> = (0..10).map(|i| msg(&i.to_string())).collect();
        e.publish("t", batch).await.unwrap();
        let got = e.pull("s", pull(4)).await.unwrap();
        assert_eq!(got.len(), 4);
        e.ack("s", &tok(&got, &[1, 3])).await.unwrap();
        e.nack("s", &tok(&got, &[2]), Some(Duration::ZERO), None)
            .await
            .unwrap();
        // No clean shutdown: the journal alone must carry the state.
        drop(e);
    }
    let e = reopen_after_crash(&dir).await;
    let info = e.subscription("s").await.unwrap();
    assert_eq!(info.ack_floor, 2);
    assert_eq!(info.in_flight, 1, "the lease on 4 survives the restart");
    let got = e.pull("s", pull(10)).await.unwrap();
    let seqs: Vec<_> = got.iter().map(|d| (d.message.seq, d.attempt)).collect();
    assert_eq!(
        seqs,
        vec![(2, 2), (5, 1), (6, 1), (7, 1), (8, 1), (9, 1), (10, 1)]
    );
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn idempotent_publish_within_and_after_the_window() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic(
        "t",
        TopicConfig {
            dedup_window: Duration::from_millis(300),
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    let with_id = |id: &str| NewMessage {
        id: Some(id.into()),
        ..msg("x")
    };
    let first = e.publish("t", vec![with_id("order-1")]).await.unwrap();
    let again = e
        .publish("t", vec![with_id("order-1"), with_id("order-2")])
        .await
        .unwrap();
    assert_eq!((again[0].seq, again[0].duplicate), (first[0].seq, true));
    assert_eq!((again[1].seq, again[1].duplicate), (2, false));
    // Concurrent retries of one id append it once.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move { e.publish("t", vec![with_id("order-3")]).await.unwrap() })
        })
        .collect();
    let mut seqs = std::collections::BTreeSet::new();
    for t in tasks {
        seqs.insert(t.await.unwrap()[0].seq);
    }
    assert_eq!(seqs.len(), 1);
    e.shutdown().await.unwrap();
    // Still deduplicated after a restart, within the window.
    let e = open(&dir).await;
    let r = e.publish("t", vec![with_id("order-1")]).await.unwrap();
    assert!(r[0].duplicate && r[0].seq == 1);
    // After the window the id is new again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = e.publish("t", vec![with_id("order-2")]).await.unwrap();
        if !r[0].duplicate {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "window never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn seek_by_sequence_and_time() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("s", sub_config("t")).await.unwrap();
    e.publish("t", vec![msg("1"), msg("2")]).await.unwrap();
    let mid = courier_core::clock::wall_now() + 1;
    while courier_core::clock::wall_now() <= mid {
        tokio::task::yield_now().await;
    }
    e.publish("t", vec![msg("3"), msg("4")]).await.unwrap();
    let got = e.pull("s", pull(10)).await.unwrap();
    e.ack("s", &tokens(&got)).await.unwrap();
    e.seek("s", SeekTarget::Seq(2)).await.unwrap();
    assert_eq!(
        bodies(&e.pull("s", pull(10)).await.unwrap()),
        vec!["2", "3", "4"]
    );
    e.seek("s", SeekTarget::Time(mid)).await.unwrap();
    assert_eq!(
        bodies(&e.pull("s", pull(10)).await.unwrap()),
        vec!["3", "4"]
    );
    // Seeking to the end skips everything.
    e.seek("s", SeekTarget::Seq(u64::MAX)).await.unwrap();
    assert!(e.pull("s", pull(10)).await.unwrap().is_empty());
    assert_eq!(e.subscription("s").await.unwrap().backlog, 0);
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn retention_by_count_frees_space_and_moves_subscriptions() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic(
        "t",
        TopicConfig {
            retention: courier_core::Retention {
                max_messages: Some(100),
                ..Default::default()
            },
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    e.create_subscription("s", sub_config("t")).await.unwrap();
    let body = "x".repeat(1000);
    for _ in 0..10 {
        let batch: Vec<_> = (0..100).map(|_| msg(&body)).collect();
        e.publish("t", batch).await.unwrap();
    }
    let before = e.topic("t").await.unwrap();
    e.enforce_retention().unwrap();
    let after = e.topic("t").await.unwrap();
    assert_eq!(after.first_seq, 901);
    assert!(
        after.bytes < before.bytes / 2,
        "{} -> {}",
        before.bytes,
        after.bytes
    );
    let got = e.pull("s", pull(1)).await.unwrap();
    assert_eq!(got[0].message.seq, 901);
    assert_eq!(e.subscription("s").await.unwrap().backlog, 100);
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_have_stable_codes() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    let code = |r: courier_core::Result<_>| r.map(|_: ()| ()).unwrap_err().code();
    assert_eq!(
        code(e.publish("nope", vec![msg("x")]).await.map(|_| ())),
        "topic_not_found"
    );
    assert_eq!(
        code(
            e.create_topic("bad/name", TopicConfig::default())
                .await
                .map(|_| ())
        ),
        "invalid_name"
    );
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    let other = TopicConfig {
        dedup_window: Duration::from_secs(1),
        ..TopicConfig::default()
    };
    assert_eq!(
        code(e.create_topic("t", other).await.map(|_| ())),
        "topic_exists"
    );
    e.create_subscription("s", sub_config("t")).await.unwrap();
    assert_eq!(code(e.delete_topic("t").await), "topic_in_use");
    assert_eq!(
        code(e.pull("nope", pull(1)).await.map(|_| ())),
        "subscription_not_found"
    );
    let huge = NewMessage {
        body: Bytes::from(vec![0u8; 9 << 20]),
        ..NewMessage::default()
    };
    assert_eq!(
        code(e.publish("t", vec![huge]).await.map(|_| ())),
        "message_too_large"
    );
    let too_many: Vec<_> = (0..10_001).map(|_| msg("x")).collect();
    assert_eq!(
        code(e.publish("t", too_many).await.map(|_| ())),
        "invalid_argument"
    );
    assert_eq!(
        code(e.publish("t", vec![]).await.map(|_| ())),
        "invalid_argument"
    );
    e.delete_subscription("s").await.unwrap();
    e.delete_topic("t").await.unwrap();
    assert!(!dir.path().join("topics/t").exists());
    e.shutdown().await.unwrap();
    assert_eq!(code(e.list_topics().await.map(|_| ())), "shutting_down");
}

#[tokio::test]
async fn a_waiting_pull_returns_as_soon_as_a_message_arrives() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("s", sub_config("t")).await.unwrap();
    let started = std::time::Instant::now();
    let waiting = {
        let e = e.clone();
        tokio::spawn(async move {
            e.pull(
                "s",
                PullRequest {
                    wait: Duration::from_secs(60),
                    ..pull(10)
                },
            )
            .await
            .unwrap()
        })
    };
    // Publish only once the pull is parked, which the in-flight gauge cannot
    // show, so yield a few times: either order must work anyway.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    e.publish("t", vec![msg("wake up")]).await.unwrap();
    let got = waiting.await.unwrap();
    assert_eq!(bodies(&got), vec!["wake up"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the pull waited for its deadline"
    );
    e.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_empty_pull_waits_until_its_deadline_then_returns_empty() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("s", sub_config("t")).await.unwrap();
    let start = tokio::time::Instant::now();
    let got = e
        .pull(
            "s",
            PullRequest {
                wait: Duration::from_secs(5),
                ..pull(1)
            },
        )
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(start.elapsed() >= Duration::from_secs(5));
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn flow_control_caps_in_flight_per_subscription_and_consumer() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    let cfg = SubscriptionConfig {
        max_in_flight: 5,
        max_in_flight_per_consumer: 3,
        ..sub_config("t")
    };
    e.create_subscription("s", cfg).await.unwrap();
    e.publish("t", (0..20).map(|i| msg(&i.to_string())).collect())
        .await
        .unwrap();
    let as_consumer = |c: &str| PullRequest {
        consumer: c.into(),
        ..pull(100)
    };
    let a = e.pull("s", as_consumer("a")).await.unwrap();
    let b = e.pull("s", as_consumer("b")).await.unwrap();
    let c = e.pull("s", as_consumer("c")).await.unwrap();
    assert_eq!((a.len(), b.len(), c.len()), (3, 2, 0));
    e.ack("s", &[a[0].token.clone()]).await.unwrap();
    assert_eq!(e.pull("s", as_consumer("c")).await.unwrap().len(), 1);
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn dead_letters_survive_a_crash_and_replay_after_restart() {
    let dir = TempDir::new().unwrap();
    {
        let e = open(&dir).await;
        e.create_topic("t", TopicConfig::default()).await.unwrap();
        let cfg = SubscriptionConfig {
            retry: RetryPolicy {
                max_attempts: 1,
                ..sub_config("t").retry
            },
            ..sub_config("t")
        };
        e.create_subscription("s", cfg).await.unwrap();
        e.publish("t", vec![msg("a"), msg("b")]).await.unwrap();
        let got = e.pull("s", pull(10)).await.unwrap();
        e.nack("s", &tokens(&got), None, Some("no".into()))
            .await
            .unwrap();
        wait_until(|| async { e.subscription("s").await.unwrap().ack_floor == 3 }).await;
        drop(e);
    }
    let e = reopen_after_crash(&dir).await;
    // Dead-lettering is at least once: a crash between storing the letter and
    // settling the message stores it again after the restart.
    wait_until(|| async { e.subscription("s").await.unwrap().backlog == 0 }).await;
    let letters = e.dead_letters("s", 10).await.unwrap();
    let seqs: std::collections::BTreeSet<_> = letters
        .iter()
        .map(|m| m.headers["courier-dlq-seq"].clone())
        .collect();
    assert_eq!(seqs.into_iter().collect::<Vec<_>>(), vec!["1", "2"]);
    assert_eq!(
        e.replay_dead_letters("s", None).await.unwrap(),
        letters.len() as u64
    );
    assert_eq!(
        bodies(&e.pull("s", pull(10)).await.unwrap()),
        vec!["a", "b"]
    );
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_data_dir_is_opened_by_one_engine_at_a_time() {
    let dir = TempDir::new().unwrap();
    let first = open(&dir).await;
    let err = EmbeddedEngine::open(config(&dir)).await.err().unwrap();
    assert!(err.to_string().contains("in use"), "{err}");
    first.shutdown().await.unwrap();
    open(&dir).await.shutdown().await.unwrap();
}

#[tokio::test]
async fn start_positions() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.publish("t", vec![msg("1"), msg("2")]).await.unwrap();
    let mid = courier_core::clock::wall_now() + 1;
    while courier_core::clock::wall_now() <= mid {
        tokio::task::yield_now().await;
    }
    e.publish("t", vec![msg("3")]).await.unwrap();
    let starts = [
        ("new", StartPosition::New),
        ("earliest", StartPosition::Earliest),
        ("seq", StartPosition::Seq(2)),
        ("time", StartPosition::Time(mid)),
    ];
    for (name, start) in starts {
        let cfg = SubscriptionConfig {
            start,
            ..sub_config("t")
        };
        e.create_subscription(name, cfg).await.unwrap();
    }
    e.publish("t", vec![msg("4")]).await.unwrap();
    let expect = [
        ("new", vec!["4"]),
        ("earliest", vec!["1", "2", "3", "4"]),
        ("seq", vec!["2", "3", "4"]),
        ("time", vec!["3", "4"]),
    ];
    for (name, want) in expect {
        assert_eq!(
            bodies(&e.pull(name, pull(10)).await.unwrap()),
            want,
            "{name}"
        );
    }
    e.shutdown().await.unwrap();
}

#[tokio::test]
async fn dedup_after_a_crash_uses_the_checkpoint_and_the_log_after_it() {
    let dir = TempDir::new().unwrap();
    let with_id = |id: &str| NewMessage {
        id: Some(id.into()),
        ..msg("x")
    };
    {
        let e = open(&dir).await;
        e.create_topic("t", TopicConfig::default()).await.unwrap();
        e.publish("t", vec![with_id("before")]).await.unwrap();
        e.publish("t", (0..100).map(|_| msg("plain")).collect())
            .await
            .unwrap();
        e.checkpoint().await.unwrap();
        e.publish("t", vec![with_id("after")]).await.unwrap();
        drop(e);
    }
    let e = reopen_after_crash(&dir).await;
    let r = e
        .publish(
            "t",
            vec![with_id("before"), with_id("after"), with_id("new")],
        )
        .await
        .unwrap();
    let got: Vec<_> = r.iter().map(|r| (r.seq, r.duplicate)).collect();
    assert_eq!(got, vec![(1, true), (102, true), (103, false)]);
    e.shutdown().await.unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

async fn open_at(dir: &std::path::Path, clock: Clock) -> Arc<EmbeddedEngine> {
    let config = EmbeddedConfig {
        data_dir: dir.to_path_buf(),
        tick_interval: Duration::ZERO,
        checkpoint_interval: Duration::ZERO,
        retention_interval: Duration::ZERO,
        ..EmbeddedConfig::default()
    };
    EmbeddedEngine::open_with_clock(config, clock)
        .await
        .unwrap()
}

/// The crash window of dead-lettering, rebuilt exactly: the letters are in
/// the dead-letter topic's log, but the subscription state that settles them
/// is not. The restarted engine stores them again under the same ids, and the
/// dead-letter topic keeps one copy of each, even after a downtime longer
/// than its dedup window.
#[tokio::test]
async fn dead_lettering_redone_after_a_crash_stores_each_letter_once() {
    let dir = TempDir::new().unwrap();
    let live = dir.path().join("live");
    let before = dir.path().join("before");
    let (clock, at) = Clock::manual(courier_core::clock::wall_now());
    let cfg = SubscriptionConfig {
        ack_deadline: Duration::from_secs(1),
        retry: RetryPolicy {
            max_attempts: 1,
            ..sub_config("t").retry
        },
        ..sub_config("t")
    };
    {
        let e = open_at(&live, clock.clone()).await;
        e.create_topic("t", TopicConfig::default()).await.unwrap();
        e.create_subscription("s", cfg).await.unwrap();
        e.publish("t", (0..300).map(|i| msg(&i.to_string())).collect())
            .await
            .unwrap();
        assert_eq!(e.pull("s", pull(300)).await.unwrap().len(), 300);
        e.shutdown().await.unwrap();
    }
    // The leases are durable and nothing is dead-lettered yet.
    copy_dir(&live, &before);
    at.fetch_add(5_000, std::sync::atomic::Ordering::AcqRel);
    {
        let e = open_at(&live, clock.clone()).await;
        // The expired leases were the last attempts: all 300 die.
        assert!(e.pull("s", pull(1)).await.unwrap().is_empty());
        wait_until(|| async { e.subscription("s").await.unwrap().dead_lettered_total == 300 })
            .await;
        e.shutdown().await.unwrap();
    }
    // The crash image: subscription state from before, the dead-letter log from after.
    let crashed = dir.path().join("crashed");
    copy_dir(&before, &crashed);
    copy_dir(
        &live.join("topics").join("s.dlq"),
        &crashed.join("topics").join("s.dlq"),
    );
    // Ten minutes later: far past the dead-letter topic's dedup window.
    at.fetch_add(600_000, std::sync::atomic::Ordering::AcqRel);
    let e = open_at(&crashed, clock.clone()).await;
    assert!(e.pull("s", pull(1)).await.unwrap().is_empty());
    wait_until(|| async { e.subscription("s").await.unwrap().dead_lettered_total == 300 }).await;
    let dlq = e.topic("s.dlq").await.unwrap();
    assert_eq!(dlq.messages, 300, "each letter stored once");
    assert_eq!(e.dead_letters("s", 1000).await.unwrap().len(), 300);
    assert_eq!(e.replay_dead_letters("s", None).await.unwrap(), 300);
    e.shutdown().await.unwrap();
}

/// One clock, read fresh: a wall-clock step forward makes a delayed message
/// due at once (a waiting pull notices within a tick); a step back holds it
/// longer; lease deadlines are reported on the same clock.
#[tokio::test]
async fn delays_and_deadlines_follow_the_wall_clock_through_steps() {
    let dir = TempDir::new().unwrap();
    let start = courier_core::clock::wall_now();
    let (clock, at) = Clock::manual(start);
    let config = EmbeddedConfig {
        data_dir: dir.path().to_path_buf(),
        tick_interval: Duration::from_millis(10),
        checkpoint_interval: Duration::ZERO,
        retention_interval: Duration::ZERO,
        ..EmbeddedConfig::default()
    };
    let e = EmbeddedEngine::open_with_clock(config, clock)
        .await
        .unwrap();
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("s", sub_config("t")).await.unwrap();
    let delayed = NewMessage {
        delay: Some(Duration::from_secs(3)),
        ..msg("later")
    };
    e.publish("t", vec![delayed]).await.unwrap();
    // Stepped back 10 s: not due, however long we wait in real time.
    at.store(start - 10_000, std::sync::atomic::Ordering::Release);
    assert!(e.pull("s", pull(1)).await.unwrap().is_empty());
    // Stepped forward past the delivery time: a long pull returns promptly.
    let waiting = {
        let e = e.clone();
        tokio::spawn(async move {
            let request = PullRequest {
                wait: Duration::from_secs(30),
                ..pull(1)
            };
            e.pull("s", request).await.unwrap()
        })
    };
    tokio::task::yield_now().await;
    at.store(start + 3_000, std::sync::atomic::Ordering::Release);
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the step was noticed within a tick")
        .unwrap();
    assert_eq!(bodies(&got), vec!["later"]);
    assert_eq!(got[0].lease_deadline, start + 3_000 + 10_000);
    e.shutdown().await.unwrap();
}

/// Generated ids are stored facts: the same after a restart, and pinned to
/// their derivation (publish time, sequence, the topic's stored salt).
#[tokio::test]
async fn generated_ids_never_change_across_restarts() {
    let dir = TempDir::new().unwrap();
    let receipts = {
        let e = open(&dir).await;
        e.create_topic("t", TopicConfig::default()).await.unwrap();
        let r = e.publish("t", vec![msg("a"), msg("b")]).await.unwrap();
        e.shutdown().await.unwrap();
        r
    };
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("meta.json")).unwrap()).unwrap();
    let salt = meta["topic_salts"]["t"]
        .as_u64()
        .expect("the salt is stored");
    for _ in 0..2 {
        let e = open(&dir).await;
        let read = e.read("t", 1, 10).await.unwrap();
        assert_eq!(
            read.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
            receipts.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
        );
        let expected = ulid::Ulid::from_parts(read[0].published_at, (u128::from(salt) << 64) | 1);
        assert_eq!(read[0].id, expected.to_string());
        e.shutdown().await.unwrap();
    }
}

/// A lost log tail never makes a sequence come back: a subscription that
/// read past the new end lifts the log to where it was.
#[tokio::test]
async fn sequences_are_never_reused_after_a_lost_tail() {
    let dir = TempDir::new().unwrap();
    {
        let e = open(&dir).await;
        e.create_topic("t", TopicConfig::default()).await.unwrap();
        e.create_subscription("s", sub_config("t")).await.unwrap();
        e.publish("t", (1..=5).map(|i| msg(&i.to_string())).collect())
            .await
            .unwrap();
        let got = e.pull("s", pull(10)).await.unwrap();
        e.ack("s", &tokens(&got)).await.unwrap();
        e.shutdown().await.unwrap();
    }
    // Lose record 5 (and the log's own high-water mark) while stopped.
    let topic_dir = dir.path().join("topics").join("t");
    let _ = std::fs::remove_file(topic_dir.join("next_seq"));
    let segment = std::fs::read_dir(&topic_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len((end - 10) as u64)
        .unwrap();
    let e = open(&dir).await;
    let r = e.publish("t", vec![msg("6")]).await.unwrap();
    assert_eq!(
        r[0].seq, 6,
        "seq 5 was given out once: it is never given again"
    );
    let got = e.pull("s", pull(10)).await.unwrap();
    assert_eq!(bodies(&got), vec!["6"]);
    e.shutdown().await.unwrap();
}

/// A thousand delayed messages ahead of a ready one do not hide it, and
/// (unordered subscriptions) they wait in the delay index, not in memory.
#[tokio::test(start_paused = true)]
async fn delayed_messages_never_hide_a_ready_one() {
    let dir = TempDir::new().unwrap();
    let e = open(&dir).await;
    e.create_topic("t", TopicConfig::default()).await.unwrap();
    e.create_subscription("s", sub_config("t")).await.unwrap();
    let delayed: Vec<_> = (0..1000)
        .map(|i| NewMessage {
            delay: Some(Duration::from_secs(600)),
            ..msg(&format!("d{i}"))
        })
        .collect();
    e.publish("t", delayed).await.unwrap();
    e.publish("t", vec![msg("ready")]).await.unwrap();
    let got = e.pull("s", pull(1)).await.unwrap();
    assert_eq!(bodies(&got), vec!["ready"]);
    let info = e.subscription("s").await.unwrap();
    assert_eq!(
        info.waiting, 0,
        "delayed messages are not tracked in memory"
    );
    e.ack("s", &tokens(&got)).await.unwrap();
    assert_eq!(
        e.subscription("s").await.unwrap().backlog,
        1000,
        "but they count in the backlog"
    );
    tokio::time::advance(Duration::from_secs(600)).await;
    let got = e.pull("s", pull(1000)).await.unwrap();
    assert_eq!(got.len(), 1000);
    assert_eq!(e.subscription("s").await.unwrap().backlog, 1000);
    e.ack("s", &tokens(&got)).await.unwrap();
    assert_eq!(e.subscription("s").await.unwrap().backlog, 0);
    e.shutdown().await.unwrap();
}

/// Subscription state written in an older encoding is refused by name, never
/// misread; a directory with topics only is taken over.
#[tokio::test]
async fn an_older_state_format_is_refused_clearly() {
    let dir = TempDir::new().unwrap();
    {
        let e = open(&dir).await;
        e.create_topic("t", TopicConfig::default()).await.unwrap();
        e.create_subscription("s", sub_config("t")).await.unwrap();
        e.shutdown().await.unwrap();
    }
    let path = dir.path().join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(meta["state_format"], 2);
    meta.as_object_mut().unwrap().remove("state_format");
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let err = EmbeddedEngine::open_with_clock(config(&dir), Clock::tokio())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("format 0"), "{err}");

    meta["subscriptions"] = serde_json::json!({});
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let e = open(&dir).await;
    assert_eq!(e.topic("t").await.unwrap().name, "t");
    e.shutdown().await.unwrap();
}
