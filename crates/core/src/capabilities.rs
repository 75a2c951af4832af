//! What an engine can and cannot do.
//!
//! Engines differ: JetStream 2.9 has no per-key lease and no delayed
//! delivery, and extends a lease only by its ack wait. A request that needs a feature the engine lacks is refused with
//! [`Error::Unsupported`] (`unsupported_by_engine`), never quietly served with
//! weaker semantics. Engines call the `check_*` functions before acting, so
//! every engine refuses the same requests the same way.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::{NewMessage, SeekTarget, StartPosition, SubscriptionConfig, TopicConfig};

/// One optional feature of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Ordered subscriptions: one message in flight per ordering key.
    OrderingKeys,
    /// Messages with a delivery time or delay.
    DelayedDelivery,
    /// Publish deduplication by client-supplied id within a window.
    Dedup,
    /// Seek (and start) a subscription at a sequence.
    SeekBySeq,
    /// Seek (and start) a subscription at a time.
    SeekByTime,
    /// A limit on leased messages per consumer name.
    PerConsumerInFlight,
    /// Extend a lease by an arbitrary duration (not only by the ack deadline).
    LeaseExtension,
    /// Nack with a chosen redelivery delay.
    NackDelay,
    /// Follow a topic without a subscription.
    TopicTails,
    /// Put dead letters back into their subscription.
    DeadLetterReplay,
    /// Change a live subscription's settings.
    SubscriptionUpdate,
    RetentionMaxAge,
    RetentionMaxBytes,
    RetentionMaxMessages,
    /// Give a leased message back without spending an attempt.
    Release,
    /// Dead-letter a leased message at once, whatever attempts remain.
    Reject,
}

impl Feature {
    pub const ALL: [Feature; 16] = [
        Feature::OrderingKeys,
        Feature::DelayedDelivery,
        Feature::Dedup,
        Feature::SeekBySeq,
        Feature::SeekByTime,
        Feature::PerConsumerInFlight,
        Feature::LeaseExtension,
        Feature::NackDelay,
        Feature::TopicTails,
        Feature::DeadLetterReplay,
        Feature::SubscriptionUpdate,
        Feature::RetentionMaxAge,
        Feature::RetentionMaxBytes,
        Feature::RetentionMaxMessages,
        Feature::Release,
        Feature::Reject,
    ];

    /// How the feature is named in error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Feature::OrderingKeys => "ordered subscriptions (ordering keys)",
            Feature::DelayedDelivery => "delayed delivery",
            Feature::Dedup => "publish deduplication",
            Feature::SeekBySeq => "seeking by sequence",
            Feature::SeekByTime => "seeking by time",
            Feature::PerConsumerInFlight => "per-consumer in-flight limits",
            Feature::LeaseExtension => "extending leases",
            Feature::NackDelay => "nack with a redelivery delay",
            Feature::TopicTails => "topic tails",
            Feature::DeadLetterReplay => "dead-letter replay",
            Feature::SubscriptionUpdate => "updating a subscription",
            Feature::RetentionMaxAge => "retention by age",
            Feature::RetentionMaxBytes => "retention by size",
            Feature::RetentionMaxMessages => "retention by message count",
            Feature::Release => "releasing a lease without spending an attempt",
            Feature::Reject => "dead-lettering a message at once (reject)",
        }
    }
}

/// What one engine supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The engine's name, as in configuration (`embedded`, `nats`, `redis`).
    pub engine: String,
    pub features: BTreeSet<Feature>,
    /// Longest dedup window the engine keeps; `None` when unbounded.
    #[serde(with = "crate::types::opt_millis")]
    pub max_dedup_window: Option<Duration>,
    /// Largest message body accepted.
    pub max_message_bytes: usize,
}

impl Capabilities {
    /// An engine that supports every feature.
    pub fn all(engine: impl Into<String>, max_message_bytes: usize) -> Self {
        Self {
            engine: engine.into(),
            features: Feature::ALL.into_iter().collect(),
            max_dedup_window: None,
            max_message_bytes,
        }
    }

    pub fn supports(&self, feature: Feature) -> bool {
        self.features.contains(&feature)
    }

    /// `Err(Unsupported)` naming the feature when the engine lacks it.
    pub fn require(&self, feature: Feature) -> Result<()> {
        if self.supports(feature) {
            Ok(())
        } else {
            Err(Error::Unsupported {
                engine: self.engine.clone(),
                feature,
            })
        }
    }

    pub fn check_topic(&self, config: &TopicConfig) -> Result<()> {
        let r = &config.retention;
        if r.max_age.is_some() {
            self.require(Feature::RetentionMaxAge)?;
        }
        if r.max_bytes.is_some() {
            self.require(Feature::RetentionMaxBytes)?;
        }
        if r.max_messages.is_some() {
            self.require(Feature::RetentionMaxMessages)?;
        }
        if let Some(max) = self.max_dedup_window {
            if config.dedup_window > max {
                return Err(Error::InvalidArgument(format!(
                    "dedup_window: the {} engine keeps ids for at most {} ms",
                    self.engine,
                    max.as_millis()
                )));
            }
        }
        Ok(())
    }

    pub fn check_subscription(&self, config: &SubscriptionConfig) -> Result<()> {
        if config.ordered {
            self.require(Feature::OrderingKeys)?;
        }
        match config.start {
            StartPosition::Seq(_) => self.require(Feature::SeekBySeq)?,
            StartPosition::Time(_) => self.require(Feature::SeekByTime)?,
            StartPosition::New | StartPosition::Earliest => {}
        }
        if config.max_in_flight_per_consumer
            < SubscriptionConfig::default().max_in_flight_per_consumer
        {
            self.require(Feature::PerConsumerInFlight)?;
        }
        Ok(())
    }

    pub fn check_message(&self, message: &NewMessage) -> Result<()> {
        if message.deliver_at.is_some() || message.delay.is_some_and(|d| !d.is_zero()) {
            self.require(Feature::DelayedDelivery)?;
        }
        if message.id.is_some() {
            self.require(Feature::Dedup)?;
        }
        Ok(())
    }

    /// Extending by the subscription's ack deadline is what every engine can
    /// do (JetStream's in-progress ack); any other length needs the feature.
    pub fn check_extend(&self, by: Duration, ack_deadline: Duration) -> Result<()> {
        if by != ack_deadline {
            self.require(Feature::LeaseExtension)?;
        }
        Ok(())
    }

    pub fn check_seek(&self, target: &SeekTarget) -> Result<()> {
        match target {
            SeekTarget::Seq(_) => self.require(Feature::SeekBySeq),
            SeekTarget::Time(_) => self.require(Feature::SeekByTime),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn without(feature: Feature) -> Capabilities {
        let mut c = Capabilities::all("test", 1024);
        c.features.remove(&feature);
        c
    }

    #[test]
    fn a_missing_feature_is_refused_by_name() {
        let caps = without(Feature::OrderingKeys);
        let config = SubscriptionConfig {
            ordered: true,
            ..SubscriptionConfig::for_topic("t")
        };
        let err = caps.check_subscription(&config).unwrap_err();
        assert_eq!(err.code(), "unsupported_by_engine");
        assert!(err.to_string().contains("ordering keys"), "{err}");
        assert!(Capabilities::all("test", 1024)
            .check_subscription(&config)
            .is_ok());
        let basic = without(Feature::LeaseExtension);
        let deadline = Duration::from_secs(30);
        assert!(basic.check_extend(deadline, deadline).is_ok());
    }

    #[test]
    fn each_check_names_its_feature() {
        let delayed = NewMessage {
            delay: Some(Duration::from_secs(1)),
            ..NewMessage::default()
        };
        let named = NewMessage {
            id: Some("x".into()),
            ..NewMessage::default()
        };
        type Check = Box<dyn Fn(&Capabilities) -> Result<()>>;
        let cases: Vec<(Feature, Check)> = vec![
            (
                Feature::DelayedDelivery,
                Box::new(move |c| c.check_message(&delayed)),
            ),
            (Feature::Dedup, Box::new(move |c| c.check_message(&named))),
            (
                Feature::SeekByTime,
                Box::new(|c| c.check_seek(&SeekTarget::Time(1))),
            ),
            (
                Feature::SeekBySeq,
                Box::new(|c| c.check_seek(&SeekTarget::Seq(1))),
            ),
            (
                Feature::LeaseExtension,
                Box::new(|c| c.check_extend(Duration::from_secs(5), Duration::from_secs(30))),
            ),
            (
                Feature::RetentionMaxAge,
                Box::new(|c| {
                    let mut t = TopicConfig::default();
                    t.retention.max_age = Some(Duration::from_secs(1));
                    c.check_topic(&t)
                }),
            ),
            (
                Feature::PerConsumerInFlight,
                Box::new(|c| {
                    c.check_subscription(&SubscriptionConfig {
                        max_in_flight_per_consumer: 1,
                        ..SubscriptionConfig::for_topic("t")
                    })
                }),
            ),
        ];
        for (feature, check) in cases {
            assert!(check(&Capabilities::all("test", 1)).is_ok(), "{feature:?}");
            match check(&without(feature)) {
                Err(Error::Unsupported { feature: f, .. }) => assert_eq!(f, feature),
                other => panic!("{feature:?}: {other:?}"),
            }
        }
    }
}
