//! The engine trait: everything a transport (HTTP, CLI, SSE…) may ask of a broker.
//!
//! The embedded engine implements it on its own log; NATS JetStream and Redis
//! Streams engines will implement it on theirs. Methods speak in sequences and
//! names only, so an engine is free in how it stores leases and cursors.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::types::*;

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Creates a topic. Creating one that exists with the same config is a no-op;
    /// with a different config it is `Error::TopicExists`.
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo>;
    /// Deletes a topic and its messages. Refused while subscriptions are attached.
    async fn delete_topic(&self, name: &str) -> Result<()>;
    async fn topic(&self, name: &str) -> Result<TopicInfo>;
    async fn list_topics(&self) -> Result<Vec<TopicInfo>>;

    /// Appends messages; returns once they are durable, one receipt per message in order.
    async fn publish(&self, topic: &str, messages: Vec<NewMessage>) -> Result<Vec<PublishReceipt>>;
    /// Reads stored messages from `from` on (for browsing and dead-letter listing).
    async fn read(&self, topic: &str, from: Seq, max: usize) -> Result<Vec<Message>>;

    async fn create_subscription(
        &self,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionInfo>;
    async fn delete_subscription(&self, name: &str) -> Result<()>;
    async fn subscription(&self, name: &str) -> Result<SubscriptionInfo>;
    async fn list_subscriptions(&self) -> Result<Vec<SubscriptionInfo>>;

    /// Leases up to `max_messages`, waiting up to `wait` for the first one.
    async fn pull(&self, subscription: &str, request: PullRequest) -> Result<Vec<Delivery>>;
    /// Settles messages. Acking a message that is already settled is a no-op.
    async fn ack(&self, subscription: &str, seqs: &[Seq]) -> Result<()>;
    /// Gives leased messages back: redelivered after `delay`, or after the
    /// subscription's backoff when `None`. `error` is kept for the dead letter.
    async fn nack(
        &self,
        subscription: &str,
        seqs: &[Seq],
        delay: Option<Duration>,
        error: Option<String>,
    ) -> Result<()>;
    /// Pushes the lease deadline of leased messages to now + `by`.
    async fn extend(&self, subscription: &str, seqs: &[Seq], by: Duration) -> Result<()>;
    /// Repositions the subscription: everything before the target counts as
    /// acked, everything from it on is delivered (again).
    async fn seek(&self, subscription: &str, target: SeekTarget) -> Result<()>;

    /// Dead letters of this subscription not yet replayed, oldest first.
    async fn dead_letters(&self, subscription: &str, max: usize) -> Result<Vec<Message>>;
    /// Puts dead letters back into the subscription with fresh attempts.
    /// `up_to` (a dead-letter topic sequence) limits the replay; returns how many were replayed.
    async fn replay_dead_letters(&self, subscription: &str, up_to: Option<Seq>) -> Result<u64>;

    async fn stats(&self) -> Result<Stats>;
    /// Flushes and fsyncs everything; later calls fail with `Error::ShuttingDown`.
    async fn shutdown(&self) -> Result<()>;
}
