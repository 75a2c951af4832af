//! Real-time delivery to browsers and apps: Server-Sent Events (`sse.rs`),
//! WebSockets (`ws.rs`) and long polls (`poll.rs`), with presence counts;
//! and the JavaScript client and demo page that use them (`clients.rs`).
//! docs/realtime.md describes the wire; docs/architecture.md the path.
//!
//! Every transport is the same three steps and only adds its framing (a
//! WebSocket takes them once per subscription, its connection once):
//!
//! 1. **Who**: the route sits behind [`crate::auth::AuthLayer`]; the handler
//!    asks the request's [`crate::auth::Access`] with
//!    `check_subscribe(topic, &filter)` (401 / 403).
//! 2. **How many**: [`Limits::admit`] gives the connection its place (429
//!    `too_many_connections` per client, 503 `realtime_full` in total) and
//!    [`Presence::join`] counts the listener of a topic and filter.
//! 3. **What**: [`Feed::open`] follows the topic from a start position
//!    ([`parse_from`], or [`resume_after`] a last seen sequence) through a
//!    [`Filter`], yielding messages, [`courier_api::realtime::Reset`]s where
//!    retention was faster, and skipped runs; the feed keeps the cursor.

mod clients;
mod feed;
mod filter;
mod limits;
mod poll;
mod presence;
mod sse;
mod ws;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use clients::routes as client_routes;
pub(crate) use feed::{parse_from, resume_after, Feed, FeedEvent};
pub(crate) use filter::Filter;
pub(crate) use limits::{Admission, ClientIp, Limits};
pub(crate) use presence::{Listening, Presence};

use tokio_util::task::TaskTracker;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::AppState;
use crate::config::{Config, IpNet};

/// Event streams and WebSockets: no request timeout (they last as long as
/// the client stays), ended by shutdown.
pub(crate) fn stream_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sse::events))
        .routes(routes!(ws::ws))
}

/// Long polls: their wait comes on top of the request timeout, as for pulls.
pub(crate) fn poll_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(poll::poll))
}

/// Presence answers at once.
pub(crate) fn quick_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(presence::presence))
}

/// The real-time state every handler shares.
pub(crate) struct Realtime {
    pub presence: Arc<Presence>,
    pub limits: Arc<Limits>,
    pub keepalive_interval: Duration,
    pub retry: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub ws: ws::WsSettings,
    /// Upgraded WebSockets live outside the HTTP connection loop; shutdown
    /// waits for them here.
    pub connections: TaskTracker,
}

impl Realtime {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            presence: Arc::default(),
            limits: Arc::new(Limits::new(&config.realtime)),
            keepalive_interval: config.realtime.keepalive_interval,
            retry: config.realtime.retry,
            trusted_proxies: config.server.trusted_proxies.clone(),
            ws: ws::WsSettings {
                send_queue: config.realtime.ws_send_queue,
                send_timeout: config.realtime.ws_send_timeout,
                publishes_in_flight: config.realtime.ws_publishes_in_flight,
                max_message: config.realtime.ws_max_message,
            },
            connections: TaskTracker::new(),
        }
    }
}

/// The query pairs of a real-time route, with the token taken out (the auth
/// layer read it) and every name checked against `known` and the filter's.
pub(crate) fn query<'a>(
    pairs: &'a [(String, String)],
    known: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, crate::error::ApiError> {
    let mut out = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        if name == courier_api::realtime::params::TOKEN {
            continue;
        }
        if !known.contains(&name.as_str()) && !Filter::is_filter_param(name) {
            return Err(crate::error::ApiError::bad_request(
                crate::error::codes::INVALID_QUERY,
                format!("unknown query parameter '{name}'"),
            ));
        }
        out.push((name.as_str(), value.as_str()));
    }
    Ok(out)
}
