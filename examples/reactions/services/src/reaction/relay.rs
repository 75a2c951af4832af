//! The outbox relay: publishes pending outbox rows to Courier, then marks
//! them sent.
//!
//! The guarantee comes from the order of the steps and from the id:
//! 1. the reaction and its outbox row committed together (no event without a
//!    reaction, no reaction without an event);
//! 2. the relay publishes each pending row with the row's id as the Courier
//!    message id (`Publish { id }`), in a batch that Courier fsyncs once;
//! 3. only then does it stamp the rows `sent_at`.
//!
//! A crash before 2 leaves the rows pending: the relay publishes them at the
//! next start. A crash between 2 and 3 makes the relay publish them again;
//! Courier answers `duplicate` for ids it saw within the topic's dedup
//! window (an hour here), and past that the notification service's unique
//! `event_id` still stores each notification once.

use std::sync::Arc;
use std::time::Duration;

use courier_client::wire::PublishMessage;
use courier_client::Client;
use tokio_util::sync::CancellationToken;

use super::{store, State, FAULT_ENV};
use crate::event::{REACTIONS_TOPIC, REACTION_CREATED};

/// Rows per Courier batch.
const BATCH: i64 = 256;

pub(crate) async fn run(
    state: Arc<State>,
    courier: Client,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let fault = std::env::var(FAULT_ENV).ok();
    ensure_topic(&courier, &shutdown).await;
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match relay_once(&state, &courier, fault.as_deref()).await {
            Ok(0) => {
                backoff = Duration::from_millis(100);
                tokio::select! {
                    _ = state.outbox_written.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Ok(_) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay: publish failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publishes one batch of pending rows; how many.
async fn relay_once(state: &State, courier: &Client, fault: Option<&str>) -> anyhow::Result<usize> {
    let rows = store::pending(&state.db, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    if fault == Some("before_publish") {
        tracing::error!(
            pending = rows.len(),
            "fault hook: exiting before publishing the outbox"
        );
        std::process::exit(86);
    }
    // One topic today; grouping keeps the relay right if the outbox gets more.
    let mut by_topic: std::collections::BTreeMap<&str, Vec<&store::Pending>> = Default::default();
    for row in &rows {
        by_topic.entry(row.topic.as_str()).or_default().push(row);
    }
    for (topic, rows) in by_topic {
        let messages = rows
            .iter()
            .map(|row| PublishMessage {
                id: Some(row.id.clone()),
                key: row.key.clone(),
                headers: [
                    ("ce-type".to_string(), REACTION_CREATED.to_string()),
                    ("content-type".to_string(), "application/json".to_string()),
                ]
                .into(),
                body: Some(row.payload.clone()),
                ..PublishMessage::default()
            })
            .collect();
        courier.publish_batch(topic, messages).await?;
    }
    if fault == Some("after_publish") {
        tracing::error!(
            pending = rows.len(),
            "fault hook: exiting after publishing, before marking sent"
        );
        std::process::exit(87);
    }
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    store::mark_sent(&state.db, &ids).await?;
    Ok(rows.len())
}

/// Creates the `reactions` topic with a one-hour dedup window (an existing
/// topic is left as it is). Retries until Courier answers.
async fn ensure_topic(courier: &Client, shutdown: &CancellationToken) {
    let config = courier_core::TopicConfig {
        dedup_window: Duration::from_secs(3600),
        ..Default::default()
    };
    loop {
        match courier.create_topic(REACTIONS_TOPIC, &config).await {
            Ok(_) => return,
            Err(e) => tracing::warn!(error = %e, "cannot create the reactions topic yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
