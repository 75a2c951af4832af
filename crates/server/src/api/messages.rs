use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use courier_api::{schema, MessageList, Problem, PublishBatch, PublishBatchResponse};
use courier_core::{NewMessage, PublishReceipt, Seq};
use serde::Deserialize;

use super::codec::{message_from_http, message_from_json};
use super::AppState;
use crate::auth::Access;
use crate::error::{codes, ApiError};
use crate::extract::{JsonBody, Name, QueryParams, RawBody};

/// Bodies up to this size are copied out of the connection's read buffer.
const COPY_BELOW: usize = 16 * 1024;

/// Publishes one message: the body is stored byte for byte, metadata comes from headers.
///
/// - `Courier-Id`: dedup id (else `ce-id`, else the `id` of a structured CloudEvent, else a ULID)
/// - `Courier-Key`: ordering key
/// - `Courier-Delay` (ms) or `Courier-Deliver-At` (ms since the epoch, or RFC 3339)
/// - `Courier-Header-<name>: <value>`: message header `<name>`
/// - `Content-Type` is kept as message header `content-type`; `ce-*` headers
///   (CloudEvents binary mode) are kept as they are.
#[utoipa::path(
    post, path = "/v1/topics/{name}/messages", tag = "messages",
    params(
        ("name" = String, Path, description = "Topic name"),
        ("Courier-Id" = Option<String>, Header, description = "Client-supplied message id, deduplicated within the topic's dedup window"),
        ("Courier-Key" = Option<String>, Header, description = "Ordering key"),
        ("Courier-Delay" = Option<u64>, Header, description = "Deliver no earlier than this many milliseconds from now (at most 100 years)"),
        ("Courier-Deliver-At" = Option<String>, Header, description = "Deliver no earlier than this time: milliseconds since the epoch or RFC 3339, before the year 10000"),
    ),
    request_body(content = Vec<u8>, description = "The message body, any content type", content_type = "*/*"),
    security((), ("bearer" = [])),
    responses(
        (status = 201, description = "Stored durably", body = schema::PublishReceipt),
        (status = 401, description = "`unauthenticated`: auth is on and the token is missing (without anonymous publishing) or not valid", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the token does not grant publishing to this topic (or with this key or these headers)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`topic_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`body_too_large` or `message_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "`unsupported_by_engine`: a delay, delivery time or message id this engine does not support", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn publish(
    State(s): State<AppState>,
    Name(topic): Name,
    access: Access,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<PublishReceipt>), ApiError> {
    let message = message_from_http(&headers, detach(body), s.max_headers_per_message)?;
    access.check_publish(&topic, std::slice::from_ref(&message))?;
    let receipt = publish_one(&s, &topic, message).await?;
    Ok((StatusCode::CREATED, Json(receipt)))
}

/// A body the engine may keep: a small one is copied, because a slice would
/// keep the connection's whole read buffer alive until the log writer is done
/// with it, and the connection would allocate a fresh buffer for every request.
pub(crate) fn detach(body: Bytes) -> Bytes {
    if body.len() <= COPY_BELOW {
        Bytes::copy_from_slice(&body)
    } else {
        body
    }
}

/// Publishes one message.
pub(crate) async fn publish_one(
    s: &AppState,
    topic: &str,
    message: NewMessage,
) -> Result<PublishReceipt, ApiError> {
    s.engine
        .publish(topic, vec![message])
        .await?
        .pop()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                "the engine returned no receipt",
            )
        })
}

/// Publishes several messages at once; all are durable when this answers.
#[utoipa::path(
    post, path = "/v1/topics/{name}/messages/batch", tag = "messages",
    params(("name" = String, Path, description = "Topic name")),
    request_body = PublishBatch,
    security((), ("bearer" = [])),
    responses(
        (status = 201, description = "Stored durably; receipts in request order", body = PublishBatchResponse),
        (status = 401, description = "`unauthenticated`: auth is on and the token is missing (without anonymous publishing) or not valid", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the token does not grant publishing to this topic (or with this key or these headers)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`topic_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "`unsupported_by_engine`: a delay, delivery time or message id this engine does not support", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn publish_batch(
    State(s): State<AppState>,
    Name(topic): Name,
    access: Access,
    JsonBody(batch): JsonBody<PublishBatch>,
) -> Result<(StatusCode, Json<PublishBatchResponse>), ApiError> {
    if batch.messages.is_empty() {
        return Err(ApiError::invalid_argument("messages must not be empty"));
    }
    let messages = batch
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message_from_json(i, m, s.max_headers_per_message))
        .collect::<Result<Vec<_>, _>>()?;
    access.check_publish(&topic, &messages)?;
    let receipts = s.engine.publish(&topic, messages).await?;
    Ok((StatusCode::CREATED, Json(PublishBatchResponse { receipts })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Browse {
    /// First sequence to show (default: the oldest retained).
    #[param(value_type = Option<u64>)]
    from: Option<Seq>,
    /// At most this many messages (default 100, 1 to 1000).
    #[param(minimum = 1, maximum = 1000)]
    max: Option<usize>,
}

/// Shows stored messages without leasing them.
#[utoipa::path(
    get, path = "/v1/topics/{name}/messages", tag = "messages",
    params(("name" = String, Path, description = "Topic name"), Browse),
    responses(
        (status = 200, description = "Messages from `from` on", body = MessageList),
        (status = 404, description = "`topic_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn browse(
    State(s): State<AppState>,
    Name(topic): Name,
    QueryParams(q): QueryParams<Browse>,
) -> Result<Json<MessageList>, ApiError> {
    let max = page_size(q.max)?;
    let messages = s.engine.read(&topic, q.from.unwrap_or(0), max).await?;
    Ok(Json(MessageList {
        messages: messages.into_iter().map(Into::into).collect(),
    }))
}

/// Page size of listings: default 100, 1 to 1000.
pub(crate) fn page_size(max: Option<usize>) -> Result<usize, ApiError> {
    match max.unwrap_or(100) {
        n @ 1..=1000 => Ok(n),
        n => Err(ApiError::bad_request(
            codes::INVALID_QUERY,
            format!("max = {n} is outside 1 to 1000"),
        )),
    }
}
