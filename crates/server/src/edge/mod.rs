//! What every request passes before its handler, as tower layers: hyper
//! parses every request, on every route, and hands it to one stack.
//!
//! Outermost first:
//!
//! 1. [`request_id::SaneRequestIdLayer`] then tower-http's `SetRequestIdLayer`
//!    ([`request_id::Ulids`]) and `PropagateRequestIdLayer`: an `x-request-id`
//!    on the request (kept when the client sent a sane one, else a new ULID)
//!    and on its answer, whatever answers it.
//! 2. tower-http's `TraceLayer` ([`RequestSpan`], [`RequestLog`]): a span
//!    holding the request id, method and path, and one log line per answer
//!    (error level for a 5xx, debug otherwise).
//! 3. [`rate_limit::RateLimitLayer`] (governor): 429 `rate_limited`.
//! 4. [`ProblemLayer`]: answers produced outside the handlers (router 404/405,
//!    the body limit, the timeout) become problem documents.
//! 5. tower-http's `RequestBodyLimitLayer`: 413 before the body is read when
//!    the announced length is over the limit, and body extractors stop at it.
//! 6. [`timeout::TimeoutLayer`], per route group: after `request_timeout`,
//!    408 `timeout` while the body is still arriving, else 503 `timeout`;
//!    pulls get their wait on top, so long polls are never cut.
//!
//! Each is a [`tower::Layer`] an axum `Router` or a sub-router takes with
//! `.layer(..)`, so a route (or a gateway in front of some routes) can have
//! its own. Errors hyper finds in the framing (a malformed head: 400, a head
//! too long: 431) are answered by hyper before any of this runs.

pub(crate) mod forwarded;
pub(crate) mod rate_limit;
pub(crate) mod request_id;
pub(crate) mod timeout;

use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::HeaderName;
use axum::response::Response;
use bytes::Bytes;
use tower::util::MapResponseLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;

use crate::error::problem_for_bare_errors;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: a sane incoming one is kept, others are replaced by a ULID;
/// every answer carries the request's id.
pub(crate) fn request_id_layers() -> (
    request_id::SaneRequestIdLayer,
    SetRequestIdLayer<request_id::Ulids>,
    PropagateRequestIdLayer,
) {
    (
        request_id::SaneRequestIdLayer,
        SetRequestIdLayer::new(REQUEST_ID, request_id::Ulids),
        PropagateRequestIdLayer::new(REQUEST_ID),
    )
}

/// The request span and its one log line.
pub(crate) type RequestLogLayer = TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    RequestSpan,
    (),
    RequestLog,
    (),
    (),
    (),
>;

pub(crate) fn request_log_layer() -> RequestLogLayer {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(RequestLog)
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

/// 408 or 503 `timeout` after `limit`.
pub(crate) fn timeout_layer(limit: Duration) -> timeout::TimeoutLayer {
    timeout::TimeoutLayer::new(limit)
}

/// 413 `body_too_large` over `limit` bytes: at once for an announced length,
/// while reading otherwise.
pub(crate) fn body_limit_layer(limit: usize) -> RequestBodyLimitLayer {
    RequestBodyLimitLayer::new(limit)
}

/// The span every request's logs are in: its id, method and path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> Span {
        let id = request
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        tracing::info_span!(
            "request",
            id,
            method = %request.method(),
            path = request.uri().path()
        )
    }
}

/// The request log line: error for a 5xx, else debug. The span says which request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLog;

impl<B> OnResponse<B> for RequestLog {
    fn on_response(self, response: &axum::http::Response<B>, latency: Duration, _: &Span) {
        let status = response.status().as_u16();
        let micros = latency.as_micros() as u64;
        if status >= 500 {
            tracing::error!(status, micros, "request failed");
        } else {
            tracing::debug!(status, micros, "request");
        }
    }
}

/// Problem documents for answers produced outside the handlers.
pub(crate) type ProblemLayer<B> = MapResponseLayer<fn(axum::http::Response<B>) -> Response>;

pub(crate) fn problem_layer<B>() -> ProblemLayer<B>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    MapResponseLayer::new(problem_answer::<B>)
}

fn problem_answer<B>(response: axum::http::Response<B>) -> Response
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let mut response = problem_for_bare_errors(response.map(Body::new));
    if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was never read, so the connection cannot
        // carry another request: say so, or a client reuses it and loses its
        // next request to the close (hyper drops the header on HTTP/2).
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}
