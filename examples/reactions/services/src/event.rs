//! What the two services say to each other: the `reaction.created` event, and
//! the names they share in Courier.

use serde::{Deserialize, Serialize};

/// The Courier topic the reaction service's outbox relay publishes to.
pub const REACTIONS_TOPIC: &str = "reactions";
/// The Courier topic of the real-time notification channel; each
/// notification's ordering key is its recipient's user id, so a browser
/// follows `GET /v1/topics/notifications/events?key=<user id>`.
pub const NOTIFICATIONS_TOPIC: &str = "notifications";
/// The Courier service the notification service registers its instances in.
pub const NOTIFICATIONS_SERVICE: &str = "notifications";
/// The push subscription that feeds the notification service.
pub const PUSH_SUBSCRIPTION: &str = "notifications-push";
/// Where Courier pushes each event on a notification service instance.
pub const PUSH_PATH: &str = "/v1/push/reactions";
/// The Standard Webhooks secret the example uses unless told another.
pub const DEFAULT_PUSH_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The event type, also sent as the message's `ce-type`.
pub const REACTION_CREATED: &str = "reaction.created";

/// The kinds of reaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReactionKind {
    Like,
    Love,
    Laugh,
}

impl ReactionKind {
    pub const ALL: [ReactionKind; 3] = [Self::Like, Self::Love, Self::Laugh];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Like => "like",
            Self::Love => "love",
            Self::Laugh => "laugh",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// `reaction.created`: a user reacted to a post. Published once per new
/// reaction (reacting again with the same kind is a no-op and emits nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReactionCreated {
    /// The outbox row's id, which is also the Courier message id: a
    /// re-published event is deduplicated by Courier, and a redelivered one
    /// by the notification service (unique `event_id`).
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub reaction_id: String,
    pub post_id: String,
    /// The post's author: the user to notify.
    pub post_author_id: String,
    pub post_text: String,
    pub user_id: String,
    pub user_name: String,
    pub kind: ReactionKind,
    /// When the reaction was accepted, ms since the epoch.
    pub created_at: i64,
}
