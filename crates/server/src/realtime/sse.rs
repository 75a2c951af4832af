//! `GET /v1/topics/{name}/events`: a topic as Server-Sent Events.
//!
//! The stream starts with a `retry:` hint, then sends one `message` event per
//! stored message that matches the filter (`id:` its sequence, `data:` its
//! [`MessageView`] as one line of JSON), a `reset` event (no `id:`) where
//! retention removed messages before they could be sent, and a comment when
//! idle for `realtime.keepalive_interval`. An EventSource that reconnects
//! sends `Last-Event-ID` and goes on right after it, from the durable log.
//! The stream ends at shutdown, when the topic is deleted, or after
//! `max_events` messages.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use courier_api::realtime::events;
use courier_api::{MessageView, Problem};
use courier_core::StartPosition;
use futures_util::{stream, StreamExt};

use super::{
    parse_from, query, resume_after, Admission, ClientIp, Feed, FeedEvent, Filter, Listening,
};
use crate::api::AppState;
use crate::auth::{query_pairs, Access};
use crate::error::{codes, ApiError};
use crate::extract::Name;

/// Header that tells nginx (and proxies that copy it) not to buffer the stream.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// The query parameters; the filter's (`key`, `header.<name>`) come beside them.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct EventsQuery {
    /// Where to start: `new` (default: only messages published from now on),
    /// `earliest`, a sequence (`42` or `seq:42`), or `time:<ms since the epoch>`.
    from: Option<String>,
    /// Resume right after this sequence, as the `Last-Event-ID` header does
    /// (which wins over this, and both over `from`).
    #[param(value_type = Option<u64>)]
    last_event_id: Option<u64>,
    /// End the stream after this many `message` events (default: never).
    #[param(minimum = 1)]
    max_events: Option<u64>,
    /// Only messages with this ordering key. Header filters come as
    /// `header.<name>=<value>`, repeatable; every filter must match.
    key: Option<String>,
    /// A JWT, for clients that cannot send `Authorization: Bearer` (EventSource).
    token: Option<String>,
}

/// Follows a topic as Server-Sent Events.
///
/// Each message is `id: <seq>`, `event: message`, `data: <MessageView JSON>`.
/// A start removed by retention gives one `event: reset` first, data
/// `{"lost": N, "up_to": S, "next": S2}` (no `id`). Header filters:
/// `header.<name>=<value>`, repeatable. See docs/realtime.md.
#[utoipa::path(
    get, path = "/v1/topics/{name}/events", tag = "realtime",
    params(
        ("name" = String, Path, description = "Topic name"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last sequence this client received; the stream resumes right after it"),
        EventsQuery,
    ),
    security((), ("bearer" = []), ("token" = [])),
    responses(
        (status = 200, description = "An endless `text/event-stream` (ends at `max_events`, shutdown, or topic deletion)", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_query` or `invalid_header`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`: no token (and no anonymous reading), or a token that is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the token does not grant this topic with this filter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`topic_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_connections` (this client's streaming connections) or `rate_limited`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`realtime_full`: the server's streaming connections are all taken; or `engine_unavailable`, `shutting_down`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn events(
    State(s): State<AppState>,
    Name(topic): Name,
    access: Access,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(&uri);
    let pairs = query(&pairs, &["from", "last_event_id", "max_events"])?;
    let filter = Filter::from_pairs(pairs.iter().copied())?;
    let param = |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let mut start = match param("from") {
        Some(from) => parse_from(from)?,
        None => StartPosition::New,
    };
    if let Some(id) = param("last_event_id") {
        start = resume_after(id, "last_event_id")?;
    }
    if let Some(id) = headers.get("last-event-id") {
        let id = id.to_str().map_err(|_| {
            ApiError::bad_request(codes::INVALID_HEADER, "Last-Event-ID is not text")
        })?;
        start = resume_after(id, "Last-Event-ID")?;
    }
    let max_events = match param("max_events").map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => {
            return Err(ApiError::bad_request(
                codes::INVALID_QUERY,
                "max_events must be a whole number of at least 1",
            ))
        }
    };
    access.check_subscribe(&topic, &filter)?;
    let admission = s.realtime.limits.admit(client, "sse")?;
    let label = filter.label();
    let feed = Feed::open(s.engine.as_ref(), &topic, start, filter).await?;
    let listening = s.realtime.presence.join(&topic, label);
    let live = Live {
        feed,
        left: max_events,
        sent: metrics::counter!("courier_realtime_events_sent_total", "transport" => "sse"),
        _admission: admission,
        _listening: listening,
    };
    let retry = Event::default().retry(s.realtime.retry);
    let body = stream::once(async move { Ok::<_, Infallible>(retry) })
        .chain(stream::unfold(live, |mut live| async move {
            let event = live.next_event().await?;
            Some((Ok(event), live))
        }))
        .take_until(s.draining.clone().cancelled_owned());
    let mut response = Sse::new(body)
        .keep_alive(
            KeepAlive::new()
                .interval(s.realtime.keepalive_interval)
                .text("keep-alive"),
        )
        .into_response();
    response
        .headers_mut()
        .insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    Ok(response)
}

/// One stream's state; dropping it (the client left, shutdown) frees its
/// connection place and uncounts the listener.
struct Live {
    feed: Feed,
    /// `message` events still to send before the stream ends.
    left: Option<u64>,
    sent: metrics::Counter,
    _admission: Admission,
    _listening: Listening,
}

impl Live {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if self.left == Some(0) {
                return None;
            }
            let event = match self.feed.next().await? {
                Ok(FeedEvent::Message(m)) => {
                    if let Some(left) = &mut self.left {
                        *left -= 1;
                    }
                    let seq = m.seq;
                    Event::default()
                        .id(seq.to_string())
                        .event(events::MESSAGE)
                        .data(json(&MessageView::from(m)))
                }
                Ok(FeedEvent::Reset(reset)) => {
                    Event::default().event(events::RESET).data(json(&reset))
                }
                Ok(FeedEvent::Skipped { .. }) => continue,
                Err(e) => {
                    if !matches!(
                        e,
                        courier_core::Error::ShuttingDown | courier_core::Error::TopicNotFound(_)
                    ) {
                        tracing::warn!(error = %e, "event stream ended by an engine error");
                    }
                    return None;
                }
            };
            self.sent.increment(1);
            return Some(event);
        }
    }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("wire types serialize")
}
