//! Real-time delivery on the wire: what Server-Sent Events, long polls and
//! WebSocket frames ([`ws`]) carry, the presence answer, and the token claims
//! that say who may subscribe and publish. docs/realtime.md is the prose form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::MessageView;

pub mod ws;

/// SSE `event:` names.
pub mod events {
    /// A stored message; its `id:` is its sequence.
    pub const MESSAGE: &str = "message";
    /// Messages were removed by retention before this client could read them;
    /// the data is a [`super::Reset`]. Carries no `id:`.
    pub const RESET: &str = "reset";
}

/// Query parameter names shared by the real-time routes.
pub mod params {
    /// Ordering-key filter: only messages with this key.
    pub const KEY: &str = "key";
    /// Prefix of a header filter: `header.user=42` keeps messages whose
    /// header `user` is `42`.
    pub const HEADER_PREFIX: &str = "header.";
    /// The token, for clients that cannot set `Authorization` (EventSource).
    pub const TOKEN: &str = "token";
}

/// Sent where a client's position was already removed by retention (or
/// lost): how much it missed and where delivery goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Reset {
    /// Stored messages of the topic that were gone (matching the filter or not).
    pub lost: u64,
    /// The last lost sequence.
    pub up_to: u64,
    /// The sequence delivery goes on from.
    pub next: u64,
}

impl Reset {
    /// The reset for the lost sequences `from..to`.
    pub fn for_gap(from: u64, to: u64) -> Self {
        Self {
            lost: to.saturating_sub(from),
            up_to: to.saturating_sub(1),
            next: to,
        }
    }
}

/// Answer of `GET /v1/topics/{name}/poll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PollResponse {
    /// Messages after the cursor that match the filters, in sequence order.
    pub messages: Vec<MessageView>,
    /// The cursor of the next poll: the sequence after the last one looked
    /// at (filtered-out messages included); the given cursor when nothing was.
    pub next_cursor: u64,
    /// Set when the cursor was already removed by retention.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub reset: Option<Reset>,
}

/// Answer of `GET /v1/topics/{name}/presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Presence {
    pub topic: String,
    /// Live streaming listeners of the topic (event streams and WebSocket subscriptions), whatever their filter.
    pub listeners: u64,
    /// Listeners by filter, most first; the unfiltered ones under `""`.
    pub filters: Vec<FilterPresence>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FilterPresence {
    /// The filter as a query string, parameters sorted: `header.user=42&key=k`; `""` for none.
    pub filter: String,
    pub listeners: u64,
}

/// The claims Courier reads from a JWT. `exp` is required; `iss` and `aud`
/// are checked when the server is configured with an issuer or audience.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// What the bearer may do; a token without it may do nothing.
    #[serde(default)]
    pub courier: Grants,
}

/// `aud` is a string or a list of strings (RFC 7519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The `courier` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Topics (and filters) the bearer may follow: SSE, long polls, presence.
    #[serde(default)]
    pub subscribe: Vec<Grant>,
    /// Topics (and message keys / headers) the bearer may publish to.
    #[serde(default)]
    pub publish: Vec<Grant>,
}

/// One permission: a topic pattern, optionally restricted to a filter.
///
/// A pattern is a topic name, `prefix.*` (every topic whose name starts with
/// `prefix.`), or `*` (every topic). As an object, `key` and `headers`
/// restrict it: a subscriber must ask for that key and those header values
/// in its filter (it may add more); a publisher's messages must carry them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Grant {
    Topic(String),
    Restricted {
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
    },
}

impl Grant {
    /// The topic pattern.
    pub fn pattern(&self) -> &str {
        match self {
            Grant::Topic(t) | Grant::Restricted { topic: t, .. } => t,
        }
    }

    /// Whether the pattern covers `topic`.
    pub fn covers(&self, topic: &str) -> bool {
        let pattern = self.pattern();
        match pattern.strip_suffix('*') {
            Some(prefix) if prefix.is_empty() || prefix.ends_with('.') => {
                topic.starts_with(prefix) && topic.len() > prefix.len()
            }
            _ => pattern == topic,
        }
    }

    /// The key this grant requires, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Grant::Topic(_) => None,
            Grant::Restricted { key, .. } => key.as_deref(),
        }
    }

    /// The header values this grant requires.
    pub fn headers(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Grant::Topic(_) => None,
            Grant::Restricted { headers, .. } => Some(headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let g = |p: &str| Grant::Topic(p.into());
        assert!(g("*").covers("anything"));
        assert!(g("orders").covers("orders"));
        assert!(!g("orders").covers("orders.eu"));
        assert!(g("orders.*").covers("orders.eu"));
        assert!(g("orders.*").covers("orders.eu.west"));
        assert!(!g("orders.*").covers("orders"));
        assert!(!g("orders.*").covers("ordersx"));
        // A `*` inside a name is just a character.
        assert!(!g("ord*").covers("orders"));
    }

    #[test]
    fn claims_parse_both_grant_forms() {
        let c: Claims = serde_json::from_str(
            r#"{"exp":1,"aud":["a","b"],"courier":{"subscribe":["news.*",
               {"topic":"notifications","key":"user-42"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.courier.subscribe.len(), 2);
        assert_eq!(c.courier.subscribe[1].key(), Some("user-42"));
        assert!(c.courier.publish.is_empty());
        assert_eq!(
            Reset::for_gap(3, 10),
            Reset {
                lost: 7,
                up_to: 9,
                next: 10
            }
        );
    }
}
