use std::time::Duration;

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use courier_api::{
    schema, write_pull_answer, AckBody, ExtendBody, MessageList, NackBody, Problem, PullBody,
    PullResponse, ReplayBody, ReplayResponse, SeekBody, SettleResponse, SubscriptionList,
    MAX_TOKENS,
};
use courier_core::{
    LeaseToken, PullRequest, SeekTarget, SubscriptionConfig, SubscriptionInfo, SubscriptionUpdate,
};
use serde::Deserialize;

use super::codec::{raw_delivery, timestamp_millis};
use super::messages::page_size;
use super::AppState;
use crate::bounds;
use crate::error::ApiError;
use crate::extract::{JsonBody, Name, QueryParams};

const DEFAULT_CONSUMER: &str = "default";
const DEFAULT_PULL_MAX: u32 = 10;
const MAX_PULL_MAX: u32 = 1000;

/// Creates a subscription, or confirms an identical one exists.
#[utoipa::path(
    put, path = "/v1/subscriptions/{name}", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body(content = schema::SubscriptionConfig, description = "Settings; `topic` is required, the rest defaults"),
    responses(
        (status = 201, description = "Created", body = schema::SubscriptionInfo),
        (status = 200, description = "An identical subscription already exists", body = schema::SubscriptionInfo),
        (status = 404, description = "`topic_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`subscription_exists`: it exists with a different configuration", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "`unsupported_by_engine`: ordering, a start position or a per-consumer limit this engine does not support", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_subscription(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(config): JsonBody<SubscriptionConfig>,
) -> Result<(StatusCode, Json<SubscriptionInfo>), ApiError> {
    if config.topic.is_empty() {
        return Err(ApiError::invalid_argument("topic is required"));
    }
    bounds::subscription(&config).map_err(ApiError::invalid_argument)?;
    let existed = s.engine.subscription(&name).await.is_ok();
    let info = s.engine.create_subscription(&name, config).await?;
    s.pusher.sync_one(&info);
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(redacted(info))))
}

/// Push secrets and bearer tokens are write-only: answers show that one is
/// set, never its value.
pub(super) fn redacted(mut info: SubscriptionInfo) -> SubscriptionInfo {
    if let Some(push) = info.config.push.as_mut() {
        for secret in [&mut push.secret, &mut push.bearer_token]
            .into_iter()
            .flatten()
        {
            *secret = REDACTED.to_string();
        }
    }
    info
}

/// What answers show in place of a push secret or bearer token.
pub const REDACTED: &str = "(redacted)";

#[utoipa::path(
    get, path = "/v1/subscriptions", tag = "subscriptions",
    responses((status = 200, description = "Every subscription", body = SubscriptionList))
)]
pub(crate) async fn list_subscriptions(
    State(s): State<AppState>,
) -> Result<Json<SubscriptionList>, ApiError> {
    let subscriptions = s.engine.list_subscriptions().await?;
    let subscriptions = subscriptions.into_iter().map(redacted).collect();
    Ok(Json(SubscriptionList { subscriptions }))
}

#[utoipa::path(
    get, path = "/v1/subscriptions/{name}", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    responses(
        (status = 200, description = "The subscription and its counters", body = schema::SubscriptionInfo),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_subscription(
    State(s): State<AppState>,
    Name(name): Name,
) -> Result<Json<SubscriptionInfo>, ApiError> {
    Ok(Json(redacted(s.engine.subscription(&name).await?)))
}

/// Changes a live subscription's settings; fields left out keep their value.
///
/// The subscription keeps its position, leases and counters. Leases already
/// granted keep their deadlines; a new `ack_deadline` applies from the next
/// lease on. `retry` replaces the whole policy.
#[utoipa::path(
    patch, path = "/v1/subscriptions/{name}", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body(content = schema::SubscriptionUpdate, description = "The settings to change; unknown fields are refused"),
    responses(
        (status = 200, description = "Updated (or unchanged); the subscription as it is now", body = schema::SubscriptionInfo),
        (status = 400, description = "`invalid_argument`: a value out of range, or a dead-letter topic equal to the subscription's topic", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown_field` or `invalid_field`", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "`unsupported_by_engine`: the engine cannot change a live subscription, or not this setting", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn update_subscription(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(update): JsonBody<SubscriptionUpdate>,
) -> Result<Json<SubscriptionInfo>, ApiError> {
    bounds::subscription_update(&update).map_err(ApiError::invalid_argument)?;
    let info = s.engine.update_subscription(&name, update).await?;
    s.pusher.sync_one(&info);
    Ok(Json(redacted(info)))
}

#[utoipa::path(
    delete, path = "/v1/subscriptions/{name}", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_subscription(
    State(s): State<AppState>,
    Name(name): Name,
) -> Result<StatusCode, ApiError> {
    s.engine.delete_subscription(&name).await?;
    s.pusher.remove(&name);
    Ok(StatusCode::NO_CONTENT)
}

/// Leases messages, waiting up to `wait_ms` for the first.
///
/// With `Accept: application/cloudevents+json` at most one message is leased
/// and answered bare, the way it was published: its body and content type,
/// `ce-*` attributes as headers, other headers as `Courier-Header-*`, and the
/// lease as `Courier-Seq`, `Courier-Token`, `Courier-Attempt`,
/// `Courier-Lease-Deadline`. 204 when nothing arrived in time.
///
/// Each delivery's `token` names its lease: ack, nack and extend take it.
#[utoipa::path(
    post, path = "/v1/subscriptions/{name}/pull", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body(content = PullBody, description = "All fields optional; the body may be empty"),
    responses(
        (status = 200, description = "Leased messages (possibly none)", body = PullResponse),
        (status = 204, description = "Raw mode: nothing arrived within the wait"),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`shutting_down`: the broker stopped while the pull waited; `engine_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn pull(
    State(s): State<AppState>,
    Name(name): Name,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PullBody>,
) -> Result<Response, ApiError> {
    let raw = headers.get_all(ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/cloudevents"))
    });
    let max_messages = match (raw, body.max_messages.unwrap_or(DEFAULT_PULL_MAX)) {
        (true, _) => 1,
        (false, n @ 1..=MAX_PULL_MAX) => n,
        (false, n) => {
            return Err(ApiError::invalid_argument(format!(
                "max_messages = {n} is outside 1 to {MAX_PULL_MAX}"
            )))
        }
    };
    let consumer = body.consumer.unwrap_or_else(|| DEFAULT_CONSUMER.to_owned());
    if consumer.is_empty() || consumer.len() > 200 {
        return Err(ApiError::invalid_argument(
            "consumer must be 1 to 200 characters",
        ));
    }
    // Long polls asking for more than the server allows get the server's limit:
    // an empty answer after the wait is what they handle anyway.
    let wait = Duration::from_millis(body.wait_ms.unwrap_or(0)).min(s.max_pull_wait);
    let request = PullRequest {
        consumer,
        max_messages: max_messages as usize,
        wait,
    };
    // A waiting pull would hold shutdown up for its whole wait. Giving up is safe:
    // anything the engine leased meanwhile is redelivered when the lease expires.
    let deliveries = tokio::select! {
        biased;
        result = s.engine.pull(&name, request) => result?,
        () = s.draining.cancelled() => return Err(courier_core::Error::ShuttingDown.into()),
    };
    if raw {
        return Ok(match deliveries.into_iter().next() {
            Some(d) => raw_delivery(d),
            None => StatusCode::NO_CONTENT.into_response(),
        });
    }
    // Sized up front: axum's `Json` starts at 128 bytes and regrows (copying)
    // about a dozen times for a pull of 500 messages.
    let size: usize = deliveries
        .iter()
        .map(|d| {
            let m = &d.message;
            // Bodies may grow a third as base64 or escaped text.
            256 + m.id.len()
                + m.body.len() * 4 / 3
                + m.key.as_ref().map_or(0, String::len)
                + m.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 8)
                    .sum::<usize>()
        })
        .sum();
    let mut json = Vec::with_capacity(size + 16);
    write_pull_answer(&mut json, &deliveries);
    Ok(([(CONTENT_TYPE, "application/json")], json).into_response())
}

/// 1 to [`MAX_TOKENS`] tokens: an empty list is a client bug, and a huge one
/// would hold the subscription's lock for too long.
pub(crate) fn check_tokens(tokens: &[LeaseToken]) -> Result<(), ApiError> {
    match tokens.len() {
        0 => Err(ApiError::invalid_argument("tokens must not be empty")),
        n if n > MAX_TOKENS => Err(ApiError::invalid_argument(format!(
            "{n} tokens, at most {MAX_TOKENS} allowed per request"
        ))),
        _ => Ok(()),
    }
}

/// Settles the messages whose current leases the tokens name.
///
/// A valid request always answers 200 with one result per token, in request
/// order; only those with outcome `ok` took effect. `lease_lost`: the lease
/// expired or the message was leased again (another consumer may hold it now);
/// `not_leased`: the message is pending and was not leased since it was read;
/// `not_found`: already settled, not read yet, or not a token of this broker.
/// The `ok` ones are durable when this answers.
#[utoipa::path(
    post, path = "/v1/subscriptions/{name}/ack", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body = AckBody,
    responses(
        (status = 200, description = "One result per token, in order; look at the outcomes", body = SettleResponse),
        (status = 400, description = "`invalid_argument`: no tokens, or more than 10000", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn ack(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(body): JsonBody<AckBody>,
) -> Result<Json<SettleResponse>, ApiError> {
    check_tokens(&body.tokens)?;
    let outcomes = s.engine.ack(&name, &body.tokens).await?;
    Ok(Json(SettleResponse::new(body.tokens, outcomes)))
}

/// Gives leased messages back for redelivery after `delay_ms` or the
/// subscription's backoff.
///
/// Answers like ack: 200 with one result per token, in order; only the `ok`
/// ones were given back.
#[utoipa::path(
    post, path = "/v1/subscriptions/{name}/nack", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body = NackBody,
    responses(
        (status = 200, description = "One result per token, in order; look at the outcomes", body = SettleResponse),
        (status = 400, description = "`invalid_argument`: no tokens, more than 10000, or `delay_ms` out of range", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "`unsupported_by_engine`: the engine cannot nack with a chosen delay", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn nack(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(body): JsonBody<NackBody>,
) -> Result<Json<SettleResponse>, ApiError> {
    check_tokens(&body.tokens)?;
    let delay = body
        .delay_ms
        .map(|ms| bounds::duration_ms("delay_ms", ms).map(Duration::from_millis))
        .transpose()
        .map_err(ApiError::invalid_argument)?;
    let outcomes = s
        .engine
        .nack(&name, &body.tokens, delay, body.error)
        .await?;
    Ok(Json(SettleResponse::new(body.tokens, outcomes)))
}

/// Pushes lease deadlines to now + `by_ms`; the tokens stay valid.
///
/// Answers like ack: 200 with one result per token, in order; only the `ok`
/// ones were extended.
#[utoipa::path(
    post, path = "/v1/subscriptions/{name}/extend", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body = ExtendBody,
    responses(
        (status = 200, description = "One result per token, in order; look at the outcomes", body = SettleResponse),
        (status = 400, description = "`invalid_argument`: no tokens, more than 10000, or `by_ms` out of range", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "`unsupported_by_engine`: the engine cannot extend leases by a chosen duration", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn extend(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(body): JsonBody<ExtendBody>,
) -> Result<Json<SettleResponse>, ApiError> {
    check_tokens(&body.tokens)?;
    let by = bounds::duration_ms("by_ms", body.by_ms).map_err(ApiError::invalid_argument)?;
    let outcomes = s
        .engine
        .extend(&name, &body.tokens, Duration::from_millis(by))
        .await?;
    Ok(Json(SettleResponse::new(body.tokens, outcomes)))
}

/// Repositions the subscription: everything before the target counts as acked,
/// everything from it on is delivered (again).
#[utoipa::path(
    post, path = "/v1/subscriptions/{name}/seek", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body = SeekBody,
    responses(
        (status = 204, description = "Repositioned"),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "`unsupported_by_engine`: this engine cannot seek by sequence, or by time", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn seek(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(body): JsonBody<SeekBody>,
) -> Result<StatusCode, ApiError> {
    let target = match (body.seq, body.time) {
        (Some(seq), None) => SeekTarget::Seq(seq),
        (None, Some(time)) => {
            SeekTarget::Time(timestamp_millis(&time).map_err(ApiError::invalid_argument)?)
        }
        _ => {
            return Err(ApiError::invalid_argument(
                "give exactly one of seq and time",
            ))
        }
    };
    s.engine.seek(&name, target).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeadLetterQuery {
    /// At most this many (default 100, 1 to 1000).
    #[param(minimum = 1, maximum = 1000)]
    max: Option<usize>,
}

/// Dead letters of the subscription not yet replayed, oldest first. Their
/// `courier-dlq-*` headers say where they came from and why they died.
#[utoipa::path(
    get, path = "/v1/subscriptions/{name}/dead-letters", tag = "dead-letters",
    params(("name" = String, Path, description = "Subscription name"), DeadLetterQuery),
    responses(
        (status = 200, description = "Dead letters; `seq` is the dead-letter topic's sequence", body = MessageList),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn dead_letters(
    State(s): State<AppState>,
    Name(name): Name,
    QueryParams(q): QueryParams<DeadLetterQuery>,
) -> Result<Json<MessageList>, ApiError> {
    let max = page_size(q.max)?;
    let messages = s.engine.dead_letters(&name, max).await?;
    Ok(Json(MessageList {
        messages: messages.into_iter().map(Into::into).collect(),
    }))
}

/// Puts dead letters back into the subscription with fresh attempts.
#[utoipa::path(
    post, path = "/v1/subscriptions/{name}/dead-letters/replay", tag = "dead-letters",
    params(("name" = String, Path, description = "Subscription name")),
    request_body(content = ReplayBody, description = "Optional; an empty body replays all"),
    responses(
        (status = 200, description = "How many were replayed", body = ReplayResponse),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "`unsupported_by_engine`: this engine cannot replay dead letters", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn replay_dead_letters(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(body): JsonBody<ReplayBody>,
) -> Result<Json<ReplayResponse>, ApiError> {
    let replayed = s.engine.replay_dead_letters(&name, body.up_to).await?;
    Ok(Json(ReplayResponse { replayed }))
}
