//! Push settings of a subscription: Courier sends each message to an HTTP
//! endpoint of a named service and takes a 2xx as the ack.
//!
//! The engine only stores these settings with the subscription (they change
//! with [`SubscriptionUpdate`](crate::SubscriptionUpdate) like the rest); the
//! push dispatcher (`courier-push`) reads them and delivers through the
//! resilient client (`courier-upstream`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::millis;

/// Largest `batch_size`: one request must stay a reasonable size.
pub const MAX_PUSH_BATCH: u32 = 1_000;
/// Largest `max_concurrent`.
pub const MAX_PUSH_CONCURRENT: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// The service whose instances receive the messages.
    pub service: String,
    /// Path (and optional query) requested on the chosen instance.
    pub path: String,
    /// 1: one message per request, in CloudEvents binary mode. More: up to
    /// this many messages per request as a JSON batch, answered with a
    /// status per entry.
    pub batch_size: u32,
    /// Requests in flight at once for this subscription (a batch counts once).
    pub max_concurrent: u32,
    /// How long one request may take before it counts as failed; shorter
    /// than the subscription's `ack_deadline`, so a push never outlives its lease.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Signing secret (`whsec_` and base64, the Standard Webhooks form): each
    /// request is signed with HMAC-SHA256 so a receiver can check it came
    /// from Courier. `None`: unsigned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Sent as `Authorization: Bearer <token>` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<String>,
    /// What a consistent-hash balancer hashes: the message's ordering key
    /// when `None`, else the value of this message header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            service: String::new(),
            path: "/".to_string(),
            batch_size: 1,
            max_concurrent: 64,
            timeout: Duration::from_secs(10),
            secret: None,
            bearer_token: None,
            hash_header: None,
        }
    }
}

impl PushConfig {
    /// Why these settings cannot work, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if self.service.is_empty() {
            return Some("push.service must name a service".into());
        }
        if !self.path.starts_with('/') {
            return Some("push.path must start with '/'".into());
        }
        if !(1..=MAX_PUSH_BATCH).contains(&self.batch_size) {
            return Some(format!("push.batch_size must be 1 to {MAX_PUSH_BATCH}"));
        }
        if !(1..=MAX_PUSH_CONCURRENT).contains(&self.max_concurrent) {
            return Some(format!(
                "push.max_concurrent must be 1 to {MAX_PUSH_CONCURRENT}"
            ));
        }
        if self.timeout.is_zero() {
            return Some("push.timeout must be at least 1 ms".into());
        }
        None
    }
}
