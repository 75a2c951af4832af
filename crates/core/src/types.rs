//! The nouns every engine and transport shares: messages, topics, subscriptions.
//!
//! Times crossing the engine boundary are wall-clock milliseconds since the Unix
//! epoch (`u64`), because they are stored and must mean the same after a restart.
//! Durations are `std::time::Duration` and serialize as whole milliseconds.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Per-topic sequence number: the first message of a topic is 1, never reused.
pub type Seq = u64;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// String headers of a message. A `BTreeMap` so encodings are deterministic.
pub type Headers = BTreeMap<String, String>;

/// A message as a publisher hands it over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMessage {
    /// Client-supplied id. When set, publishing the same id again within the
    /// topic's dedup window returns the original receipt instead of appending.
    pub id: Option<String>,
    /// Ordering key: ordered subscriptions deliver one message per key at a time, in order.
    pub key: Option<String>,
    pub headers: Headers,
    pub body: Bytes,
    /// Not delivered before this time. `None` means at once.
    pub deliver_at: Option<Millis>,
    /// Not delivered before this long after the publish, measured on the
    /// engine's clock (so a publisher's clock never matters). Exclusive with
    /// `deliver_at`.
    pub delay: Option<Duration>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: Seq,
    /// The client-supplied id, or a ULID assigned at publish (unique, time-sortable).
    pub id: String,
    /// When the broker stored it.
    pub published_at: Millis,
    pub deliver_at: Option<Millis>,
    pub key: Option<String>,
    pub headers: Headers,
    pub body: Bytes,
}

/// What publish answers once the message is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishReceipt {
    pub seq: Seq,
    pub id: String,
    /// True when this publish was a retry of an id already stored within the dedup window.
    pub duplicate: bool,
}

/// Retention limits of a topic; the oldest messages go first when any is exceeded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    #[serde(with = "opt_millis", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicConfig {
    pub retention: Retention,
    /// How long a client-supplied message id is remembered for deduplication.
    #[serde(with = "millis")]
    pub dedup_window: Duration,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            dedup_window: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub name: String,
    pub config: TopicConfig,
    /// Oldest retained sequence (equals `next_seq` when empty).
    pub first_seq: Seq,
    /// The sequence the next message will get.
    pub next_seq: Seq,
    pub messages: u64,
    pub bytes: u64,
}

/// Where a new subscription starts reading its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    /// Only messages published after the subscription was created.
    #[default]
    New,
    /// Every retained message.
    Earliest,
    /// From this sequence on (clamped to what is retained).
    Seq(Seq),
    /// From the first message published at or after this time.
    Time(Millis),
}

/// The CLI's spelling: `new`, `earliest`, `seq:N`, `time:MILLIS`.
impl std::fmt::Display for StartPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartPosition::New => f.write_str("new"),
            StartPosition::Earliest => f.write_str("earliest"),
            StartPosition::Seq(n) => write!(f, "seq:{n}"),
            StartPosition::Time(t) => write!(f, "time:{t}"),
        }
    }
}

impl std::str::FromStr for StartPosition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let number = |n: &str| n.parse::<u64>().map_err(|e| format!("'{s}': {e}"));
        match s.split_once(':') {
            None if s == "new" => Ok(StartPosition::New),
            None if s == "earliest" => Ok(StartPosition::Earliest),
            Some(("seq", n)) => number(n).map(StartPosition::Seq),
            Some(("time", n)) => number(n).map(StartPosition::Time),
            _ => Err(format!(
                "'{s}' is not a start position (new, earliest, seq:N or time:MILLIS)"
            )),
        }
    }
}

/// A later repositioning of a subscription (replay or skip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeekTarget {
    Seq(Seq),
    Time(Millis),
}

/// Exponential backoff with jitter between delivery attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(with = "millis")]
    pub initial_backoff: Duration,
    #[serde(with = "millis")]
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Attempts before a message is dead-lettered; 0 means never.
    pub max_attempts: u32,
    /// Fraction of the backoff randomised away (0 = none, 1 = "full jitter").
    pub jitter: f64,
}

impl Eq for RetryPolicy {}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            max_attempts: 5,
            jitter: 0.2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub topic: String,
    pub start: StartPosition,
    /// How long a pulled message stays leased to its consumer before it is redelivered.
    #[serde(with = "millis")]
    pub ack_deadline: Duration,
    /// Leased messages allowed at once in the whole subscription.
    pub max_in_flight: u32,
    /// Leased messages allowed at once per consumer name.
    pub max_in_flight_per_consumer: u32,
    pub retry: RetryPolicy,
    /// Topic that receives messages after `retry.max_attempts`; defaults to `<subscription>.dlq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Deliver messages of one ordering key strictly in order, one in flight per key.
    pub ordered: bool,
    /// Courier sends the messages to a service itself (see [`PushConfig`]);
    /// pulling from the same subscription keeps working beside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<crate::push::PushConfig>,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            topic: String::new(),
            start: StartPosition::New,
            ack_deadline: Duration::from_secs(30),
            max_in_flight: 10_000,
            max_in_flight_per_consumer: 1_000,
            retry: RetryPolicy::default(),
            dead_letter_topic: None,
            ordered: false,
            push: None,
        }
    }
}

impl SubscriptionConfig {
    pub fn for_topic(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            ..Self::default()
        }
    }

    /// Why the push settings cannot work with this subscription, if they
    /// cannot: their own problems, or a push that may outlive its lease (the
    /// message would be leased again while the first push still runs).
    pub fn push_problem(&self) -> Option<String> {
        let push = self.push.as_ref()?;
        if let Some(problem) = push.problem() {
            return Some(problem);
        }
        (push.timeout >= self.ack_deadline).then(|| {
            format!(
                "push.timeout ({} ms) must be shorter than ack_deadline ({} ms)",
                push.timeout.as_millis(),
                self.ack_deadline.as_millis()
            )
        })
    }

    /// The dead-letter topic this subscription uses.
    pub fn dead_letter_topic_for(&self, subscription: &str) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{subscription}.dlq"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    pub name: String,
    pub config: SubscriptionConfig,
    /// Every sequence below this is settled (acked or dead-lettered).
    pub ack_floor: Seq,
    /// Messages not yet settled, including those not yet read.
    pub backlog: u64,
    /// Messages currently leased to consumers.
    pub in_flight: u64,
    /// Messages waiting for a retry backoff or a delayed delivery time.
    pub waiting: u64,
    pub delivered_total: u64,
    pub acked_total: u64,
    pub dead_lettered_total: u64,
}

/// A waiting pull: returns as soon as at least one message is available, or
/// empty when `wait` expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Name of the consumer, for per-consumer flow control.
    pub consumer: String,
    pub max_messages: usize,
    pub wait: Duration,
}

/// One leased message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message: Message,
    /// 1 on first delivery.
    pub attempt: u32,
    /// When the lease expires unless acked, nacked or extended.
    pub lease_deadline: Millis,
    /// Names this lease: ack, nack and extend take it, and it settles nothing
    /// once the lease has expired or been superseded.
    pub token: LeaseToken,
}

/// An opaque name for one lease of one message, made by the engine that
/// leased it (the embedded engine: sequence and lease number; JetStream: the
/// ack reply subject; Redis: entry id and a lease number). Clients pass it
/// back as they got it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(String);

impl LeaseToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an ack, nack or extend did to one message, in the order the tokens were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It took effect: the lease was current.
    Ok,
    /// The message is still pending, but not under this lease: the lease
    /// expired, was given back, or the message was leased again since.
    LeaseLost,
    /// The message is pending and has not been leased since it was read (or
    /// replayed from the dead letters): no token of it can be current.
    NotLeased,
    /// The subscription does not hold the message: it was settled already
    /// (acked, dead-lettered, trimmed by retention, skipped by a seek), or it
    /// was never published or not read yet, or the token is not this engine's.
    NotFound,
}

impl Outcome {
    pub fn is_ok(self) -> bool {
        self == Outcome::Ok
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::LeaseLost => "lease_lost",
            Outcome::NotLeased => "not_leased",
            Outcome::NotFound => "not_found",
        }
    }
}

/// Changes to a live subscription; fields left `None` keep their value. The
/// subscription keeps its position, leases and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionUpdate {
    #[serde(with = "opt_millis", skip_serializing_if = "Option::is_none")]
    pub ack_deadline: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_consumer: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// `Some(Some(..))` sets push settings, `Some(None)` (JSON `null`) turns
    /// push delivery off, `None` (absent) keeps them.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub push: Option<Option<crate::push::PushConfig>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl SubscriptionUpdate {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The configuration after this update.
    pub fn applied_to(&self, config: &SubscriptionConfig) -> SubscriptionConfig {
        let mut c = config.clone();
        if let Some(d) = self.ack_deadline {
            c.ack_deadline = d;
        }
        if let Some(n) = self.max_in_flight {
            c.max_in_flight = n;
        }
        if let Some(n) = self.max_in_flight_per_consumer {
            c.max_in_flight_per_consumer = n;
        }
        if let Some(r) = &self.retry {
            c.retry = r.clone();
        }
        if let Some(t) = &self.dead_letter_topic {
            c.dead_letter_topic = Some(t.clone());
        }
        if let Some(p) = &self.push {
            c.push = p.clone();
        }
        c
    }
}

/// What a topic tail yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailEvent {
    /// The next stored messages, in sequence order.
    Messages(MessageBatch),
    /// Messages `from..to` were removed by retention (or lost) before this
    /// listener could read them; the stream goes on at `to`.
    Gap { from: Seq, to: Seq },
}

impl TailEvent {
    /// How many messages a gap lost (0 for messages).
    pub fn lost(&self) -> u64 {
        match self {
            TailEvent::Gap { from, to } => to - from,
            TailEvent::Messages(_) => 0,
        }
    }
}

/// Messages shared by every listener of a topic: the engine reads a batch
/// once and each listener sees the part from its own position on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBatch {
    shared: std::sync::Arc<[Message]>,
    skip: usize,
}

impl MessageBatch {
    pub fn new(shared: std::sync::Arc<[Message]>) -> Self {
        Self { shared, skip: 0 }
    }
    /// The same batch without its messages below `seq`.
    pub fn from_seq(mut self, seq: Seq) -> Self {
        self.skip = self.shared.partition_point(|m| m.seq < seq);
        self
    }
    pub fn is_shared_with(&self, other: &MessageBatch) -> bool {
        std::sync::Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl std::ops::Deref for MessageBatch {
    type Target = [Message];
    fn deref(&self) -> &[Message] {
        &self.shared[self.skip..]
    }
}

/// Headers added to a message moved to a dead-letter topic.
pub mod dlq_headers {
    pub const SUBSCRIPTION: &str = "courier-dlq-subscription";
    pub const TOPIC: &str = "courier-dlq-topic";
    pub const SEQ: &str = "courier-dlq-seq";
    pub const ID: &str = "courier-dlq-id";
    pub const ATTEMPTS: &str = "courier-dlq-attempts";
    pub const LAST_ERROR: &str = "courier-dlq-last-error";
    pub const DEAD_LETTERED_AT: &str = "courier-dlq-at";
    pub const KEY: &str = "courier-dlq-key";
}

/// Broker-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub topics: u64,
    pub subscriptions: u64,
    pub messages: u64,
    pub bytes: u64,
    pub published_total: u64,
    pub delivered_total: u64,
    pub acked_total: u64,
    pub dead_lettered_total: u64,
}

/// Serde for `Duration` as whole milliseconds.
pub mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Serde for `Option<Duration>` as whole milliseconds.
pub mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_round_trip_through_text() {
        for p in [
            StartPosition::New,
            StartPosition::Earliest,
            StartPosition::Seq(7),
            StartPosition::Time(1_700_000_000_000),
        ] {
            assert_eq!(p.to_string().parse::<StartPosition>(), Ok(p));
        }
        assert!("seq:x".parse::<StartPosition>().is_err());
        assert!("later".parse::<StartPosition>().is_err());
    }
}
