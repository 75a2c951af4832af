//! `GET /v1/topics/{name}/poll`: long polling for clients that can hold
//! neither an event stream nor a WebSocket. The answer comes at once when a
//! message (or a reset) after the cursor is there; otherwise the poll waits
//! up to `wait_ms` (at most `server.max_pull_wait`) for the first one, then
//! answers with what is ready.

use std::time::Duration;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use courier_api::realtime::{PollResponse, Reset};
use courier_api::Problem;
use courier_core::StartPosition;
use futures_util::FutureExt;

use super::{query, Feed, FeedEvent, Filter};
use crate::api::AppState;
use crate::auth::{query_pairs, Access};
use crate::error::{codes, ApiError};
use crate::extract::Name;

/// Most messages a poll looks past (filtered out) before it answers: a
/// selective filter over a long backlog answers with the cursor moved on
/// rather than reading the whole backlog in one request.
const SCAN_LIMIT: u64 = 10_000;

/// The query parameters; the filter's (`key`, `header.<name>`) come beside them.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct PollQuery {
    /// The next sequence to read: the `next_cursor` of the previous answer.
    /// Default: the topic's end (only messages published from now on).
    cursor: Option<u64>,
    /// How long to wait for the first message, in milliseconds (default and
    /// most: the server's `max_pull_wait`).
    wait_ms: Option<u64>,
    /// At most this many messages (default 100, 1 to 1000).
    #[param(minimum = 1, maximum = 1000)]
    max: Option<usize>,
    /// Only messages with this ordering key. Header filters come as
    /// `header.<name>=<value>`, repeatable; every filter must match.
    key: Option<String>,
    /// A JWT, for clients that cannot send `Authorization: Bearer`.
    token: Option<String>,
}

/// Waits for messages after a cursor.
///
/// The longest a poll reads stored messages looking for a match.
const SCAN_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers at once when messages after `cursor` match; otherwise waits up
/// to `wait_ms` for the first. `next_cursor` is the cursor of the next poll
/// (past filtered-out messages too); `reset` says what retention removed
/// before the cursor could be read. Header filters: `header.<name>=<value>`.
#[utoipa::path(
    get, path = "/v1/topics/{name}/poll", tag = "realtime",
    params(("name" = String, Path, description = "Topic name"), PollQuery),
    security((), ("bearer" = []), ("token" = [])),
    responses(
        (status = 200, description = "Messages after the cursor (possibly none) and the next cursor", body = PollResponse),
        (status = 400, description = "`invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`: no token (and no anonymous reading), or a token that is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the token does not grant this topic with this filter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`topic_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn poll(
    State(s): State<AppState>,
    Name(topic): Name,
    access: Access,
    uri: Uri,
) -> Result<Json<PollResponse>, ApiError> {
    let pairs = query_pairs(&uri);
    let pairs = query(&pairs, &["cursor", "wait_ms", "max"])?;
    let filter = Filter::from_pairs(pairs.iter().copied())?;
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        match pairs.iter().find(|(n, _)| *n == name) {
            None => Ok(None),
            Some((_, v)) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(
                    codes::INVALID_QUERY,
                    format!("{name} must be a whole number, got '{v}'"),
                )
            }),
        }
    };
    let cursor = number("cursor")?;
    let wait = number("wait_ms")?.map_or(s.max_pull_wait, |ms| {
        Duration::from_millis(ms).min(s.max_pull_wait)
    });
    let max = match number("max")?.unwrap_or(100) {
        n @ 1..=1000 => n as usize,
        n => {
            return Err(ApiError::bad_request(
                codes::INVALID_QUERY,
                format!("max = {n} is outside 1 to 1000"),
            ))
        }
    };
    access.check_subscribe(&topic, &filter)?;

    let info = s.engine.topic(&topic).await?;
    // A cursor past the end means the end: sequences below it that come
    // later would otherwise move the cursor back.
    // Sequences start at 1: cursor 0 means the same as 1, and would
    // otherwise look like a message waiting below the end of an empty topic.
    let cursor = cursor.map_or(info.next_seq, |c| c.clamp(1, info.next_seq.max(1)));
    let mut feed = Feed::open(
        s.engine.as_ref(),
        &topic,
        StartPosition::Seq(cursor),
        filter,
    )
    .await?;

    let deadline = tokio::time::Instant::now() + wait;
    // Reading what already exists is never waited on for long: a bound in
    // case the log has less after the cursor than its end suggests (holes).
    let scan_deadline = deadline.max(tokio::time::Instant::now() + SCAN_BOUND);
    let mut messages = Vec::new();
    let mut reset: Option<Reset> = None;
    let mut scanned = 0;
    loop {
        let answered = !messages.is_empty() || reset.is_some();
        let event = if answered {
            // Something to answer with: only what is ready now joins it.
            match feed.next().now_or_never() {
                Some(event) => event,
                None => break,
            }
        } else if feed.cursor().unwrap_or(cursor) < info.next_seq {
            // Messages after the cursor exist: read until one matches (or
            // the scan limit), however long the wait asked for.
            tokio::select! {
                event = feed.next() => event,
                () = tokio::time::sleep_until(scan_deadline) => break,
                () = s.draining.cancelled() => break,
            }
        } else {
            tokio::select! {
                event = feed.next() => event,
                () = tokio::time::sleep_until(deadline) => break,
                () = s.draining.cancelled() => break,
            }
        };
        match event {
            None => break,
            Some(Err(e)) if messages.is_empty() && reset.is_none() => return Err(e.into()),
            Some(Err(_)) => break,
            Some(Ok(FeedEvent::Message(m))) => {
                messages.push(m.into());
                if messages.len() >= max {
                    break;
                }
            }
            Some(Ok(FeedEvent::Reset(r))) => {
                reset = Some(match reset {
                    // Two gaps in one answer: one reset covering both.
                    Some(first) => Reset {
                        lost: first.lost + r.lost,
                        up_to: r.up_to,
                        next: r.next,
                    },
                    None => r,
                });
            }
            Some(Ok(FeedEvent::Skipped { count })) => {
                scanned += count;
                if scanned >= SCAN_LIMIT {
                    break;
                }
            }
        }
    }
    Ok(Json(PollResponse {
        messages,
        next_cursor: feed.cursor().unwrap_or(cursor),
        reset,
    }))
}
