//! The engine contract: everything a transport (HTTP, CLI, SSE, WebSocket,
//! push delivery) may ask of a broker, and what every engine must keep.
//!
//! The embedded engine keeps it on its own log; NATS JetStream and Redis
//! Streams engines keep it on theirs (docs/engines.md says how, method by
//! method). The conformance suite (`crates/conformance`) is the executable
//! definition of these semantics: every engine runs the same functions.
//!
//! Leases are fenced: every [`Delivery`] carries a [`LeaseToken`] naming that
//! one lease, and only the current lease's token settles or extends the
//! message. Features an engine lacks are refused with
//! [`Error::Unsupported`](crate::Error::Unsupported) (see [`Capabilities`]).

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;

use crate::capabilities::{Capabilities, Feature};
use crate::error::{Error, Result};
use crate::types::*;

/// A topic tail: messages as they are stored, and gaps where retention was faster.
pub type Tail = Pin<Box<dyn Stream<Item = Result<TailEvent>> + Send>>;

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// What this engine supports; constant for its life.
    fn capabilities(&self) -> Capabilities;

    /// Creates a topic. Creating one that exists with the same config is a no-op;
    /// with a different config it is `Error::TopicExists`.
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo>;
    /// Deletes a topic and its messages. Refused while subscriptions are attached.
    async fn delete_topic(&self, name: &str) -> Result<()>;
    async fn topic(&self, name: &str) -> Result<TopicInfo>;
    async fn list_topics(&self) -> Result<Vec<TopicInfo>>;

    /// Appends messages; returns once they are durable, one receipt per
    /// message in order. Sequences only grow and are never reused, whatever
    /// happens to the storage.
    async fn publish(&self, topic: &str, messages: Vec<NewMessage>) -> Result<Vec<PublishReceipt>>;
    /// Reads stored messages from `from` on (for browsing and dead-letter listing).
    async fn read(&self, topic: &str, from: Seq, max: usize) -> Result<Vec<Message>>;
    /// Follows a topic from `from` without a subscription: stored messages
    /// in order, then new ones as they are stored. When `from` was already
    /// removed by retention the tail starts with a [`TailEvent::Gap`]. Nothing
    /// is leased or acked; dropping the stream is the only clean-up.
    async fn tail(&self, topic: &str, from: StartPosition) -> Result<Tail>;

    async fn create_subscription(
        &self,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionInfo>;
    /// Changes a live subscription's settings, keeping its position, leases
    /// and counters. Leases already granted keep their deadlines.
    async fn update_subscription(
        &self,
        name: &str,
        update: SubscriptionUpdate,
    ) -> Result<SubscriptionInfo>;
    async fn delete_subscription(&self, name: &str) -> Result<()>;
    async fn subscription(&self, name: &str) -> Result<SubscriptionInfo>;
    async fn list_subscriptions(&self) -> Result<Vec<SubscriptionInfo>>;

    /// Leases up to `max_messages`, waiting up to `wait` for the first one.
    /// A message that is not deliverable yet (delayed, or behind another of
    /// its ordering key) never hides one that is. Cancel-safe: a pull dropped
    /// before it returns has leased nothing (push delivery and waiting HTTP
    /// pulls drop theirs at shutdown).
    async fn pull(&self, subscription: &str, request: PullRequest) -> Result<Vec<Delivery>>;
    /// Settles leased messages; one outcome per token, in order. Returns once
    /// the settled ones are durable.
    async fn ack(&self, subscription: &str, tokens: &[LeaseToken]) -> Result<Vec<Outcome>>;
    /// Gives leased messages back: redelivered after `delay`, or after the
    /// subscription's backoff when `None`. `error` is kept for the dead letter.
    async fn nack(
        &self,
        subscription: &str,
        tokens: &[LeaseToken],
        delay: Option<Duration>,
        error: Option<String>,
    ) -> Result<Vec<Outcome>>;
    /// Pushes the lease deadline of leased messages to now + `by`; the tokens stay valid.
    async fn extend(
        &self,
        subscription: &str,
        tokens: &[LeaseToken],
        by: Duration,
    ) -> Result<Vec<Outcome>>;
    /// Gives leased messages back without spending an attempt: the consumer
    /// never tried them (it is shutting down, or nothing could take them).
    /// They are deliverable again at once, in their place (ordering keys
    /// included), with the attempt count they had before this lease.
    async fn release(&self, subscription: &str, tokens: &[LeaseToken]) -> Result<Vec<Outcome>> {
        let _ = (subscription, tokens);
        Err(Error::Unsupported {
            engine: self.capabilities().engine,
            feature: Feature::Release,
        })
    }
    /// Dead-letters leased messages at once, whatever attempts remain (the
    /// consumer says they can never succeed). `error` is kept for the dead
    /// letter, as for the last failed attempt.
    async fn reject(
        &self,
        subscription: &str,
        tokens: &[LeaseToken],
        error: Option<String>,
    ) -> Result<Vec<Outcome>> {
        let _ = (subscription, tokens, error);
        Err(Error::Unsupported {
            engine: self.capabilities().engine,
            feature: Feature::Reject,
        })
    }
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
