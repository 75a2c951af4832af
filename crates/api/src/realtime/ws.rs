//! The WebSocket protocol of `GET /v1/ws`: one JSON object per text frame,
//! named by its `op`. One connection carries many subscriptions (each named
//! by an id the client chooses), publishes answered one by one (each named
//! by a `ref` the client chooses, many in flight), and consumes from durable
//! subscriptions with lease tokens. docs/realtime.md ("WebSocket protocol")
//! is the prose form.
//!
//! Client frames refuse unknown fields, like every request type here; server
//! frames may gain fields, so clients should ignore what they do not know.

use std::collections::BTreeMap;

use courier_core::{LeaseToken, Outcome};
use serde::{Deserialize, Serialize};

use super::Reset;
use crate::{MessageView, TokenResult};

/// WebSocket close codes the server uses (besides the standard ones:
/// 1000 normal, 1009 a frame over the size limit, 1011 internal error).
pub mod close {
    /// The server is shutting down; reconnect (to it or another) and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// The client sent no frame (not even a pong) for three keep-alive intervals.
    pub const IDLE: u16 = 4000;
    /// The connection's token expired; reconnect with a fresh one.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The client read too slowly: its outgoing queue
    /// (`realtime.ws_send_queue` frames) filled up. Reconnect and resume.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Follow a topic, like an event stream: answered by `subscribed`, then
    /// `message` and `reset` frames carrying `sub` = `id`.
    Subscribe {
        /// The client's name for this subscription, unique on the connection.
        id: String,
        topic: String,
        /// `new` (default), `earliest`, a sequence (`42`, `seq:42`) or `time:<ms>`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Resume after this sequence (the last one the client saw); wins over `from`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// Only messages with this ordering key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// Only messages with these header values.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
    },
    /// Lease messages of a durable subscription: answered by `subscribed`,
    /// then `delivery` frames carrying `sub` = `id` and a lease token to
    /// `ack` or `nack`.
    Consume {
        id: String,
        subscription: String,
        /// Consumer name for the subscription's per-consumer flow control (default `ws`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consumer: Option<String>,
        /// Deliveries not yet acked or nacked over this connection, at most (default 10, 1 to 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_in_flight: Option<u32>,
    },
    /// Stop a subscription or a consume; answered by `unsubscribed`.
    Unsubscribe { id: String },
    /// Publish one message; answered by `published` or `error` with the same `ref`.
    Publish {
        #[serde(rename = "ref")]
        ref_: String,
        topic: String,
        /// The body as text; `body_base64` for bytes that are not UTF-8.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_base64: Option<String>,
        /// Dedup id (default: a new ULID).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
    },
    /// Settle deliveries; answered by `acked` (or `error`) with the same `ref`.
    Ack {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<String>,
        subscription: String,
        tokens: Vec<LeaseToken>,
    },
    /// Give deliveries back for redelivery; answered by `nacked`.
    Nack {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<String>,
        subscription: String,
        tokens: Vec<LeaseToken>,
        /// Redeliver after this delay instead of the subscription's backoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
        /// Why processing failed; kept on the dead letter.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Answered by `pong` with the same `ref`.
    Ping {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<String>,
    },
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The subscription or consume `sub` is live: what is published from now
    /// on will reach it.
    Subscribed { sub: String },
    /// The subscription or consume `sub` ended at the client's request.
    Unsubscribed { sub: String },
    /// A stored message of subscription `sub`.
    Message {
        sub: String,
        seq: u64,
        message: MessageView,
    },
    /// Messages of subscription `sub` were removed by retention before they
    /// could be sent (see [`Reset`]).
    Reset {
        sub: String,
        #[serde(flatten)]
        reset: Reset,
    },
    /// A leased message of consume `sub`.
    Delivery {
        sub: String,
        message: MessageView,
        /// 1 on first delivery.
        attempt: u32,
        /// Milliseconds since the epoch when the lease expires unless settled.
        lease_deadline: u64,
        token: LeaseToken,
    },
    /// A publish is durable.
    Published {
        #[serde(rename = "ref")]
        ref_: String,
        seq: u64,
        id: String,
    },
    /// One result per token of an `ack`, in order.
    Acked {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<String>,
        results: Vec<TokenResult>,
    },
    /// One result per token of a `nack`, in order.
    Nacked {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<String>,
        results: Vec<TokenResult>,
    },
    Pong {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<String>,
    },
    /// Something failed. `ref` names the publish, ack or nack; `sub` the
    /// subscription (which has ended); neither for a frame that could not
    /// be read. `code` is one of the API's stable problem codes.
    Error {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
        code: String,
        message: String,
    },
}

impl ServerFrame {
    /// The `acked` / `nacked` results: tokens paired with outcomes.
    pub fn results(tokens: Vec<LeaseToken>, outcomes: Vec<Outcome>) -> Vec<TokenResult> {
        tokens
            .into_iter()
            .zip(outcomes)
            .map(|(token, outcome)| TokenResult { token, outcome })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_and_write_as_documented() {
        let f: ClientFrame = serde_json::from_str(
            r#"{"op":"subscribe","id":"a","topic":"t","after":41,"headers":{"user":"42"}}"#,
        )
        .unwrap();
        assert!(matches!(
            f,
            ClientFrame::Subscribe {
                after: Some(41),
                ..
            }
        ));
        let f: ClientFrame =
            serde_json::from_str(r#"{"op":"publish","ref":"p1","topic":"t","body":"hi"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Publish { ref ref_, .. } if ref_ == "p1"));
        assert!(serde_json::from_str::<ClientFrame>(r#"{"op":"ping","extra":1}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"op":"launch"}"#).is_err());
        let reset = ServerFrame::Reset {
            sub: "a".into(),
            reset: Reset::for_gap(1, 5),
        };
        assert_eq!(
            serde_json::to_value(&reset).unwrap(),
            serde_json::json!({"op":"reset","sub":"a","lost":4,"up_to":4,"next":5})
        );
        let published = ServerFrame::Published {
            ref_: "p1".into(),
            seq: 7,
            id: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&published).unwrap(),
            r#"{"op":"published","ref":"p1","seq":7,"id":"x"}"#
        );
    }
}
