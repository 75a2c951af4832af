//! Workloads against an engine in this process, through the `Engine` trait
//! (what every transport calls), so they measure the engine and nothing around it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bytes::Bytes;
use courier_core::{
    Engine, LeaseToken, NewMessage, PullRequest, StartPosition, SubscriptionConfig, TopicConfig,
};
use courier_embedded::{EmbeddedConfig, EmbeddedEngine};

use crate::load::{self, Outcome};

/// Opens the embedded engine on `dir` with its defaults (fsync on unless `fsync` is false).
pub async fn open(dir: &Path, fsync: bool) -> Result<Arc<EmbeddedEngine>> {
    open_with(dir, fsync, EmbeddedConfig::default().preallocate_bytes).await
}

/// Like [`open`], with `preallocate_bytes` set to `preallocate`.
pub async fn open_with(dir: &Path, fsync: bool, preallocate: u64) -> Result<Arc<EmbeddedEngine>> {
    let config = EmbeddedConfig {
        data_dir: dir.to_path_buf(),
        fsync,
        preallocate_bytes: preallocate,
        ..EmbeddedConfig::default()
    };
    Ok(EmbeddedEngine::open(config).await?)
}

/// Creates `topic` with the default config.
pub async fn create_topic(engine: &dyn Engine, topic: &str) -> Result<()> {
    engine.create_topic(topic, TopicConfig::default()).await?;
    Ok(())
}

/// Creates a subscription on `topic` that starts at its oldest message.
pub async fn create_subscription(engine: &dyn Engine, name: &str, topic: &str) -> Result<()> {
    let config = SubscriptionConfig {
        start: StartPosition::Earliest,
        ..SubscriptionConfig::for_topic(topic)
    };
    engine.create_subscription(name, config).await?;
    Ok(())
}

fn messages(body: &Bytes, n: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|_| NewMessage {
            body: body.clone(),
            ..NewMessage::default()
        })
        .collect()
}

/// `publishers` publishers, each publishing `batch` messages per call and
/// waiting for the receipts before the next call, for `time`.
pub async fn publish(
    engine: Arc<dyn Engine>,
    topic: &str,
    publishers: usize,
    body: Bytes,
    batch: usize,
    time: Duration,
) -> Result<Outcome> {
    load::run(publishers, time, |mut w| {
        let (engine, topic, body) = (engine.clone(), topic.to_string(), body.clone());
        async move {
            while w.running() {
                let batch = messages(&body, batch);
                let t = Instant::now();
                let receipts = engine.publish(&topic, batch).await?;
                w.record(t, receipts.len() as u64);
            }
            Ok(w)
        }
    })
    .await
}

/// Publishes `count` messages as fast as possible (batches of 1000, a few
/// publishers at once); returns how long it took.
pub async fn prefill(
    engine: Arc<dyn Engine>,
    topic: &str,
    count: u64,
    body: Bytes,
) -> Result<Duration> {
    const BATCH: u64 = 1000;
    const PUBLISHERS: usize = 4;
    let started = Instant::now();
    let claimed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (engine, topic, body, claimed) = (
                engine.clone(),
                topic.to_string(),
                body.clone(),
                claimed.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let from = claimed.fetch_add(BATCH, Ordering::Relaxed);
                    if from >= count {
                        return anyhow::Ok(());
                    }
                    let n = BATCH.min(count - from) as usize;
                    engine.publish(&topic, messages(&body, n)).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

/// For each subscription, `consumers` consumers that pull up to `max`
/// messages (without waiting) and ack them all, until `time` is up or the
/// subscription has nothing left. Latency is one pull plus its ack.
pub async fn pull_ack(
    engine: Arc<dyn Engine>,
    subscriptions: &[String],
    consumers: usize,
    max: usize,
    time: Duration,
) -> Result<Outcome> {
    let subscriptions = subscriptions.to_vec();
    load::run(subscriptions.len() * consumers, time, |mut w| {
        let engine = engine.clone();
        let subscription = subscriptions[w.index % subscriptions.len()].clone();
        async move {
            let request = PullRequest {
                consumer: format!("consumer-{}", w.index),
                max_messages: max,
                wait: Duration::ZERO,
            };
            while w.running() {
                let t = Instant::now();
                let deliveries = engine.pull(&subscription, request.clone()).await?;
                if deliveries.is_empty() {
                    break;
                }
                let tokens: Vec<_> = deliveries.into_iter().map(|d| d.token).collect();
                let outcomes = engine.ack(&subscription, &tokens).await?;
                ensure!(
                    outcomes.iter().all(|o| o.is_ok()),
                    "an ack of fresh leases did not take effect: {outcomes:?}"
                );
                w.record(t, tokens.len() as u64);
            }
            Ok(w)
        }
    })
    .await
}

/// Checks that the first pull of `subscription` gets message 1 with `body`;
/// returns the lease token of that delivery.
pub async fn first_message(
    engine: &dyn Engine,
    subscription: &str,
    body: &Bytes,
) -> Result<LeaseToken> {
    let request = PullRequest {
        consumer: "restart-probe".into(),
        max_messages: 1,
        wait: Duration::from_secs(30),
    };
    let got = engine.pull(subscription, request).await?;
    ensure!(
        got.len() == 1,
        "the first pull after a restart got {} messages",
        got.len()
    );
    ensure!(
        got[0].message.seq == 1,
        "the first pull got seq {}",
        got[0].message.seq
    );
    ensure!(
        got[0].message.body == body,
        "the first message's body differs"
    );
    Ok(got[0].token.clone())
}
