//! The notification service's HTTP API.
//!
//! | route | |
//! |---|---|
//! | `POST /v1/push/reactions` | Courier's push: a signed batch of `reaction.created` events (or one, in CloudEvents binary mode) |
//! | `POST /v1/notify` | the same event, called directly by the reaction service in sync mode |
//! | `GET /v1/users/{id}/notifications?limit=` | `{"notifications": [...], "unread": n}`, newest first |
//! | `POST /v1/users/{id}/notifications/read` | mark all read |
//! | `GET`/`PUT /v1/faults` | the fault knobs |
//! | `GET /v1/stats`, `POST /v1/stats/reset` | counters and the end-to-end delay |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use courier_client::wire::push::{PushBatch, PushBatchAnswer, PushEntryResult, PushEntryStatus};
use courier_client::wire::PublishMessage;
use serde::Deserialize;
use serde_json::json;
use tower_http::cors::CorsLayer;

use super::faults::{FaultChange, Verdict};
use super::{store, State, Stats};
use crate::db::now_ms;
use crate::event::{ReactionCreated, NOTIFICATIONS_TOPIC, PUSH_PATH};
use crate::problem::{ApiResult, Json, Problem};

type S = AxumState<Arc<State>>;

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(PUSH_PATH, post(push))
        .route("/v1/notify", post(notify))
        .route("/v1/users/{id}/notifications", get(list))
        .route("/v1/users/{id}/notifications/read", post(read))
        .route("/v1/faults", get(get_faults).put(put_faults))
        .route("/v1/stats", get(stats))
        .route("/v1/stats/reset", post(reset_stats))
        .fallback(|| async {
            Problem::not_found(
                "route_not_found",
                "no such route on the notification service",
            )
        })
        .layer(CorsLayer::permissive())
        .with_state(state)
}

/// Courier's push: one event (CloudEvents binary mode, with a `ce-id`) or a
/// batch (`{"messages": [...]}`, the subscription's `batch_size` > 1). 2xx
/// acks; a problem makes Courier retry (after `Retry-After` when given);
/// `Courier-Dead-Letter` gives up on an event that can never be handled.
async fn push(s: S, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = faulted(&s).await {
        return refused.into_response();
    }
    if let Err(e) = s.verifier.verify(&headers, &body) {
        return Problem::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            format!("the webhook signature does not verify: {e}"),
        )
        .into_response();
    }
    if !headers.contains_key("ce-id") {
        return push_batch(&s, &body).await;
    }
    let event: ReactionCreated = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return dead_letter(Problem::unprocessable(
                "invalid_event",
                format!("not a reaction.created: {e}"),
            ))
        }
    };
    match handle(&s, &event).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => p.into_response(),
    }
}

/// A batch push: the valid events are stored in one transaction and
/// published in one Courier batch; an entry that is no `reaction.created`
/// is dead-lettered on its own, without holding back the others.
async fn push_batch(s: &State, body: &[u8]) -> Response {
    let batch: PushBatch = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return dead_letter(Problem::unprocessable(
                "invalid_batch",
                format!("not a Courier push batch: {e}"),
            ))
        }
    };
    let mut events = Vec::with_capacity(batch.messages.len());
    let mut results = Vec::new();
    for pushed in &batch.messages {
        let parsed = pushed
            .message
            .body_bytes()
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<ReactionCreated>(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(event) => events.push(event),
            Err(e) => results.push(PushEntryResult {
                id: pushed.message.id.clone(),
                status: PushEntryStatus::DeadLetter,
                retry_after: None,
                error: Some(format!("not a reaction.created: {e}")),
            }),
        }
    }
    if let Err(p) = handle_many(s, &events).await {
        return p.into_response();
    }
    if results.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    // Entries left out of the results would be retried: name the acked ones.
    let acked = batch
        .messages
        .iter()
        .filter(|m| !results.iter().any(|r| r.id == m.message.id));
    let acked: Vec<_> = acked
        .map(|m| PushEntryResult {
            id: m.message.id.clone(),
            status: PushEntryStatus::Ack,
            retry_after: None,
            error: None,
        })
        .collect();
    results.extend(acked);
    axum::Json(PushBatchAnswer { results }).into_response()
}

/// A problem Courier must not retry: the message goes to the dead letters.
fn dead_letter(problem: Problem) -> Response {
    let mut r = problem.into_response();
    r.headers_mut().insert(
        "courier-dead-letter",
        HeaderValue::from_static("invalid event"),
    );
    r
}

/// Sync mode: the reaction service waits for this answer.
async fn notify(s: S, Json(event): Json<ReactionCreated>) -> ApiResult<Response> {
    if let Some(refused) = faulted(&s).await {
        return Err(refused);
    }
    let (n, created) = handle(&s, &event).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(n)).into_response())
}

async fn faulted(s: &State) -> Option<Problem> {
    match s.faults.meet().await {
        Verdict::Pass => None,
        Verdict::Down => Some(
            Problem::unavailable("down", "the notification service is down (fault knob)")
                .retry_after(1),
        ),
        Verdict::Fail => Some(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected_error",
            "injected failure (fault knob error_rate)",
        )),
    }
}

/// Stores the notification once, then publishes it to the author's channel.
/// The answer comes after both, so a failed publish is retried with the event.
async fn handle(
    s: &State,
    event: &ReactionCreated,
) -> Result<(store::Notification, bool), Problem> {
    let stored = store::store(&s.db, event).await?;
    count(s, std::slice::from_ref(&stored));
    publish(s, std::slice::from_ref(&stored)).await?;
    Ok(stored)
}

/// [`handle`] for a batch: one transaction, one Courier batch publish.
async fn handle_many(s: &State, events: &[ReactionCreated]) -> Result<(), Problem> {
    if events.is_empty() {
        return Ok(());
    }
    let stored = store::store_many(&s.db, events).await?;
    count(s, &stored);
    publish(s, &stored).await
}

/// Counts what was just committed: a notification counts as stored when its
/// row is, even if its real-time publish then fails and the event comes
/// again (it is a duplicate then, already counted).
fn count(s: &State, stored: &[(store::Notification, bool)]) {
    let mut stats = s.stats.lock();
    for (n, created) in stored {
        if *created {
            stats.stored += 1;
            let delay = (n.created_at - n.event_created_at).max(1) as u64;
            let _ = stats.delay.record(delay.min(3_600_000));
        } else {
            stats.duplicates += 1;
        }
    }
}

/// Publishes stored notifications to their authors' channels (a redelivered
/// event's too: Courier drops the repeat by id).
async fn publish(s: &State, stored: &[(store::Notification, bool)]) -> Result<(), Problem> {
    let mut messages = Vec::with_capacity(stored.len());
    for (n, _) in stored {
        let body = serde_json::to_string(n).map_err(|e| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "encode", e.to_string())
        })?;
        messages.push(PublishMessage {
            // The same notification always has the same Courier id: a
            // redelivered event does not show twice in the browser either.
            id: Some(format!("notification-{}", n.event_id)),
            key: Some(n.user_id.clone()),
            headers: [("content-type".to_string(), "application/json".to_string())].into(),
            body: Some(body),
            ..PublishMessage::default()
        });
    }
    s.courier
        .publish_batch(NOTIFICATIONS_TOPIC, messages)
        .await
        .map_err(|e| {
            Problem::unavailable(
                "realtime_publish_failed",
                format!("cannot publish to Courier: {e}"),
            )
            .retry_after(1)
        })?;
    Ok(())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list(s: S, Path(user): Path<String>, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid_limit",
            "limit must be 1 to 500",
        ));
    }
    let notifications = store::list(&s.db, &user, limit).await?;
    let unread = store::unread(&s.db, &user).await?;
    Ok(
        axum::Json(json!({ "user_id": user, "unread": unread, "notifications": notifications }))
            .into_response(),
    )
}

async fn read(s: S, Path(user): Path<String>) -> ApiResult<Response> {
    let changed = store::mark_read(&s.db, &user).await?;
    Ok(axum::Json(json!({ "user_id": user, "marked_read": changed, "unread": 0 })).into_response())
}

async fn get_faults(s: S) -> Response {
    axum::Json(s.faults.get()).into_response()
}

async fn put_faults(s: S, Json(change): Json<FaultChange>) -> ApiResult<Response> {
    let settings = s
        .faults
        .apply(&change)
        .map_err(|e| Problem::unprocessable("invalid_fault", e))?;
    tracing::info!(?settings, "faults changed");
    Ok(axum::Json(settings).into_response())
}

#[derive(Deserialize)]
struct StatsQuery {
    /// Also count notifications of events created at or after this time (ms).
    since: Option<i64>,
}

async fn stats(s: S, Query(q): Query<StatsQuery>) -> ApiResult<Response> {
    let (total, since) = store::count_since(&s.db, q.since.unwrap_or(0)).await?;
    let st = s.stats.lock();
    let h = &st.delay;
    let q = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    Ok(axum::Json(json!({
        "stored": st.stored,
        "duplicates": st.duplicates,
        "total_in_db": total,
        "since": since,
        "now": now_ms(),
        "delay_ms": {
            "count": h.len(), "p50": q(0.5), "p99": q(0.99), "p999": q(0.999),
            "max": if h.is_empty() { 0 } else { h.max() },
        },
    }))
    .into_response())
}

async fn reset_stats(s: S) -> Response {
    *s.stats.lock() = Stats::new();
    StatusCode::NO_CONTENT.into_response()
}
