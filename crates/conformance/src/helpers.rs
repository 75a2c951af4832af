//! Shortcuts the behaviours share: opening engines, publishing, pulling,
//! settling, and waiting for what an engine does on its own.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_core::types::dlq_headers;
use courier_core::{
    Clock, Delivery, Engine, Error, Feature, LeaseToken, Message, NewMessage, Outcome,
    PublishReceipt, PullRequest, Result, RetryPolicy, Seq, StartPosition, SubscriptionConfig,
    SubscriptionInfo, Tail, TailEvent, TopicConfig,
};
use futures_util::StreamExt;

use crate::EngineFactory;

/// The ack deadline of [`sub_config`].
pub const ACK_DEADLINE: Duration = Duration::from_secs(10);
/// The first retry backoff of [`retry_policy`].
pub const BACKOFF: Duration = Duration::from_secs(1);
/// How long (in real time) to wait for something an engine does on its own.
pub const REAL_TIMEOUT: Duration = Duration::from_secs(20);
/// One millisecond: the engine clock's resolution.
pub const MS: Duration = Duration::from_millis(1);

/// A fresh engine on a clock that follows tokio's (paused) clock.
pub async fn open(factory: &dyn EngineFactory) -> (Arc<dyn Engine>, Clock) {
    let clock = Clock::tokio();
    (factory.open(clock.clone()).await, clock)
}

/// `Result::unwrap` that says which call failed and with what code.
pub trait Must<T> {
    fn must(self, what: &str) -> T;
}

impl<T> Must<T> for Result<T> {
    #[track_caller]
    fn must(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what} failed: {e} (code {})", e.code()),
        }
    }
}

/// Asserts that `result` is an error with `code`, and returns it.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T>, code: &str, what: &str) -> Error {
    match result {
        Err(e) if e.code() == code => e,
        Err(e) => panic!("{what}: expected error code {code}, got {} ({e})", e.code()),
        Ok(v) => panic!("{what}: expected error code {code}, got Ok({v:?})"),
    }
}

/// True (and a line on stderr) when the engine lacks one of `features`, so
/// `test` is skipped.
pub fn lacks(engine: &Arc<dyn Engine>, features: &[Feature], test: &str) -> bool {
    let caps = engine.capabilities();
    match features.iter().find(|f| !caps.supports(**f)) {
        Some(f) => {
            eprintln!(
                "skipping {test}: the {} engine does not support {}",
                caps.engine,
                f.describe()
            );
            true
        }
        None => false,
    }
}

/// Moves the paused tokio clock (and so the engine's clock) forward.
pub async fn advance(by: Duration) {
    tokio::time::advance(by).await;
}

pub fn msg(body: &str) -> NewMessage {
    NewMessage {
        body: Bytes::from(body.to_string()),
        ..NewMessage::default()
    }
}

pub fn keyed(key: &str, body: &str) -> NewMessage {
    NewMessage {
        key: Some(key.to_string()),
        ..msg(body)
    }
}

pub fn with_id(id: &str, body: &str) -> NewMessage {
    NewMessage {
        id: Some(id.to_string()),
        ..msg(body)
    }
}

pub fn delayed(body: &str, delay: Duration) -> NewMessage {
    NewMessage {
        delay: Some(delay),
        ..msg(body)
    }
}

/// Exponential backoff from [`BACKOFF`], doubling, no jitter, never dead-letters.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: BACKOFF,
        max_backoff: Duration::from_secs(60),
        multiplier: 2.0,
        max_attempts: 0,
        jitter: 0.0,
    }
}

/// From the earliest message, [`ACK_DEADLINE`], [`retry_policy`].
pub fn sub_config(topic: &str) -> SubscriptionConfig {
    SubscriptionConfig {
        start: StartPosition::Earliest,
        ack_deadline: ACK_DEADLINE,
        retry: retry_policy(),
        ..SubscriptionConfig::for_topic(topic)
    }
}

/// [`sub_config`] dead-lettering after `max_attempts`.
pub fn sub_config_attempts(topic: &str, max_attempts: u32) -> SubscriptionConfig {
    let mut config = sub_config(topic);
    config.retry.max_attempts = max_attempts;
    config
}

pub async fn create_topic(engine: &Arc<dyn Engine>, topic: &str) {
    engine
        .create_topic(topic, TopicConfig::default())
        .await
        .must(&format!("create_topic {topic}"));
}

/// Creates `topic` (default config) and subscription `sub` on it.
pub async fn topic_and_sub(
    engine: &Arc<dyn Engine>,
    topic: &str,
    sub: &str,
    config: SubscriptionConfig,
) {
    create_topic(engine, topic).await;
    engine
        .create_subscription(
            sub,
            SubscriptionConfig {
                topic: topic.to_string(),
                ..config
            },
        )
        .await
        .must(&format!("create_subscription {sub}"));
}

pub async fn publish(
    engine: &Arc<dyn Engine>,
    topic: &str,
    bodies: &[&str],
) -> Vec<PublishReceipt> {
    publish_messages(engine, topic, bodies.iter().map(|b| msg(b)).collect()).await
}

pub async fn publish_messages(
    engine: &Arc<dyn Engine>,
    topic: &str,
    messages: Vec<NewMessage>,
) -> Vec<PublishReceipt> {
    let n = messages.len();
    let receipts = engine
        .publish(topic, messages)
        .await
        .must(&format!("publish to {topic}"));
    assert_eq!(
        receipts.len(),
        n,
        "publish must answer one receipt per message"
    );
    receipts
}

/// Publishes `before`, lets one second pass on the engine's clock, publishes
/// `after`; checks that the publish times are the engine clock's (one second
/// apart) and returns every stored message.
pub async fn publish_a_second_apart(
    engine: &Arc<dyn Engine>,
    clock: &Clock,
    topic: &str,
    before: &[&str],
    after: &[&str],
) -> Vec<Message> {
    let t0 = clock.now();
    publish(engine, topic, before).await;
    advance(Duration::from_secs(1)).await;
    let t1 = clock.now();
    publish(engine, topic, after).await;
    let stored = read_all(engine, topic).await;
    let times: Vec<_> = stored.iter().map(|m| m.published_at).collect();
    let (first, second) = times.split_at(before.len());
    assert!(
        first.iter().all(|t| (t0..t1).contains(t)) && second.iter().all(|t| *t >= t1),
        "publish times must follow the engine clock: expected {t0} then (1 s later) {t1}, got {times:?}"
    );
    stored
}

/// Every stored message of `topic` (up to 10,000).
pub async fn read_all(engine: &Arc<dyn Engine>, topic: &str) -> Vec<Message> {
    engine
        .read(topic, 1, 10_000)
        .await
        .must(&format!("read {topic}"))
}

/// A pull that does not wait.
pub async fn pull(
    engine: &Arc<dyn Engine>,
    sub: &str,
    consumer: &str,
    max: usize,
) -> Vec<Delivery> {
    pull_wait(engine, sub, consumer, max, Duration::ZERO).await
}

pub async fn pull_wait(
    engine: &Arc<dyn Engine>,
    sub: &str,
    consumer: &str,
    max: usize,
    wait: Duration,
) -> Vec<Delivery> {
    let got = engine
        .pull(
            sub,
            PullRequest {
                consumer: consumer.to_string(),
                max_messages: max,
                wait,
            },
        )
        .await
        .must(&format!("pull from {sub} as {consumer}"));
    assert!(
        got.len() <= max,
        "pull returned {} messages, more than the {max} asked",
        got.len()
    );
    got
}

/// A pull that must return exactly one message.
#[track_caller]
pub fn only(got: Vec<Delivery>, what: &str) -> Delivery {
    assert_eq!(
        got.len(),
        1,
        "{what}: expected exactly one delivery, got {:?}",
        bodies(&got)
    );
    got.into_iter().next().unwrap()
}

pub fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.message.body).into_owned()
}

pub fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(body).collect()
}

pub fn seqs(ds: &[Delivery]) -> Vec<Seq> {
    ds.iter().map(|d| d.message.seq).collect()
}

pub fn message_seqs(ms: &[Message]) -> Vec<Seq> {
    ms.iter().map(|m| m.seq).collect()
}

pub fn message_bodies(ms: &[Message]) -> Vec<String> {
    ms.iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

pub fn tokens(ds: &[Delivery]) -> Vec<LeaseToken> {
    ds.iter().map(|d| d.token.clone()).collect()
}

/// A token no engine hands out.
pub fn foreign_token() -> LeaseToken {
    LeaseToken::new("not-a-token-of-this-engine")
}

pub async fn ack(engine: &Arc<dyn Engine>, sub: &str, tokens: &[LeaseToken]) -> Vec<Outcome> {
    let outcomes = engine.ack(sub, tokens).await.must(&format!("ack on {sub}"));
    assert_eq!(
        outcomes.len(),
        tokens.len(),
        "ack must answer one outcome per token"
    );
    outcomes
}

pub async fn nack(
    engine: &Arc<dyn Engine>,
    sub: &str,
    tokens: &[LeaseToken],
    error: &str,
) -> Vec<Outcome> {
    let outcomes = engine
        .nack(sub, tokens, None, Some(error.to_string()))
        .await
        .must(&format!("nack on {sub}"));
    assert_eq!(
        outcomes.len(),
        tokens.len(),
        "nack must answer one outcome per token"
    );
    outcomes
}

/// Acks `ds`, each of which must still be leased.
pub async fn ack_all(engine: &Arc<dyn Engine>, sub: &str, ds: &[Delivery]) {
    let outcomes = ack(engine, sub, &tokens(ds)).await;
    assert!(
        outcomes.iter().all(|o| o.is_ok()),
        "acking {:?} with current tokens: {outcomes:?}",
        seqs(ds)
    );
}

/// Ack, nack or extend: the three calls that take lease tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ack,
    Nack,
    /// Extends by the ack deadline (which needs no `LeaseExtension`).
    Extend,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Ack, Op::Nack, Op::Extend];

    pub fn name(self) -> &'static str {
        match self {
            Op::Ack => "ack",
            Op::Nack => "nack",
            Op::Extend => "extend",
        }
    }

    pub async fn apply(
        self,
        engine: &Arc<dyn Engine>,
        sub: &str,
        tokens: &[LeaseToken],
    ) -> Vec<Outcome> {
        let result = match self {
            Op::Ack => engine.ack(sub, tokens).await,
            Op::Nack => engine.nack(sub, tokens, None, None).await,
            Op::Extend => engine.extend(sub, tokens, ACK_DEADLINE).await,
        };
        let outcomes = result.must(self.name());
        assert_eq!(
            outcomes.len(),
            tokens.len(),
            "{} must answer one outcome per token",
            self.name()
        );
        outcomes
    }
}

pub async fn subscription(engine: &Arc<dyn Engine>, sub: &str) -> SubscriptionInfo {
    engine
        .subscription(sub)
        .await
        .must(&format!("subscription {sub}"))
}

/// Awaits `fut`, failing the test after [`REAL_TIMEOUT`] of real time. The
/// deadline is a thread, not a tokio timer, so it never makes a paused clock
/// jump.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    let (fire, fired) = tokio::sync::oneshot::channel::<()>();
    let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = cancelled.recv_timeout(REAL_TIMEOUT) {
            let _ = fire.send(());
        }
    });
    let out = tokio::select! {
        biased;
        v = fut => v,
        Ok(()) = fired => panic!("timed out after {REAL_TIMEOUT:?} (real time) waiting for {what}"),
    };
    drop(cancel);
    out
}

/// Polls `check` (yielding in between, never sleeping) until it returns
/// `Some`, failing the test after [`REAL_TIMEOUT`] of real time.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + REAL_TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {REAL_TIMEOUT:?} (real time) waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

/// Waits until the dead letters of `sub` include `seq` (of its topic) and the
/// subscription has settled it; returns that letter.
pub async fn wait_dead_lettered(engine: &Arc<dyn Engine>, sub: &str, seq: Seq) -> Message {
    let letter = wait_for(
        &format!("message {seq} of {sub} to be dead-lettered"),
        || async move {
            let letters = engine
                .dead_letters(sub, 1000)
                .await
                .must(&format!("dead_letters {sub}"));
            letters
                .into_iter()
                .find(|m| m.headers.get(dlq_headers::SEQ) == Some(&seq.to_string()))
        },
    )
    .await;
    wait_for(
        &format!("{sub} to settle dead-lettered message {seq}"),
        || async move { (subscription(engine, sub).await.ack_floor > seq).then_some(()) },
    )
    .await;
    letter
}

/// The next event of a tail.
pub async fn next_event(tail: &mut Tail) -> TailEvent {
    within("a tail event", tail.next())
        .await
        .expect("the tail ended")
        .must("tail event")
}

/// Reads tail events until at least `n` messages came; a gap fails the test.
pub async fn tail_messages(tail: &mut Tail, n: usize) -> Vec<Message> {
    let mut out = Vec::new();
    while out.len() < n {
        match next_event(tail).await {
            TailEvent::Messages(batch) => out.extend(batch.iter().cloned()),
            gap @ TailEvent::Gap { .. } => {
                panic!("unexpected {gap:?} after {:?}", message_seqs(&out))
            }
        }
    }
    out
}

/// How many messages `topic` holds; 0 when it does not exist.
pub async fn stored_count(engine: &Arc<dyn Engine>, topic: &str) -> u64 {
    match engine.topic(topic).await {
        Ok(info) => info.messages,
        Err(e) if e.code() == "topic_not_found" => 0,
        Err(e) => panic!("topic {topic} failed: {e} (code {})", e.code()),
    }
}

/// Headers as `(name, value)` pairs, for readable assertion messages.
pub fn header_map(m: &Message) -> BTreeMap<&str, &str> {
    m.headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Closes the engine; every behaviour ends with it.
pub async fn done(engine: Arc<dyn Engine>) {
    engine.shutdown().await.must("shutdown");
}
