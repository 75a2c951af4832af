//! Every error answer is an RFC 9457 problem document with a stable `code`:
//! the engine's `Error::code()` for engine errors, the transport codes below
//! for everything the HTTP layer refuses on its own.
//!
//! Engine errors take their status from their kind: not found 404, conflict
//! 409, bad request 400, too large 413, unsupported 501 (the engine lacks a
//! feature; retrying cannot help), unavailable 503 with `Retry-After: 1`
//! (shutting down, or the engine's backend is unreachable), internal 500.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use courier_api::{Problem, PROBLEM_JSON};
use courier_core::ErrorKind;

pub use courier_api::codes;

/// An error on its way to becoming a problem document.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Whole seconds for `Retry-After`; 429 and 503 answers default to 1.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 429 `rate_limited`: the client may try again after `wait` (rounded up to
    /// whole seconds for `Retry-After`, never 0).
    pub fn rate_limited(wait: Duration) -> Self {
        let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                codes::RATE_LIMITED,
                format!(
                    "this client is over the server's rate limit; retry in {} ms",
                    wait.as_millis().max(1)
                ),
            )
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// Semantic request errors the engine would report the same way.
    pub fn invalid_argument(detail: impl Into<String>) -> Self {
        courier_core::Error::InvalidArgument(detail.into()).into()
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_: format!("urn:courier:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            code: self.code.to_owned(),
            detail: Some(self.detail.clone()),
        }
    }
}

impl From<courier_core::Error> for ApiError {
    fn from(e: courier_core::Error) -> Self {
        let status = match e.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
            // With `Retry-After: 1` (see `into_response`).
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // Shutting down is expected, not worth an error line; storage failures
        // are, and so is losing the engine's backend.
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, code = e.code(), "engine error");
        } else if matches!(e, courier_core::Error::Unavailable(_)) {
            tracing::warn!(error = %e, code = e.code(), "engine unavailable");
        }
        Self::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        let retry_after = self.retry_after.or_else(|| {
            let busy = self.status == StatusCode::SERVICE_UNAVAILABLE
                || self.status == StatusCode::TOO_MANY_REQUESTS;
            busy.then_some(1)
        });
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Gives error answers produced outside the handlers (router 404/405, the body
/// limit layer, hyper) a problem document, so clients see one error format.
pub fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if is_problem {
        return response;
    }
    let (code, detail) = match status {
        StatusCode::NOT_FOUND => (codes::NOT_FOUND, "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            codes::METHOD_NOT_ALLOWED,
            "this route does not accept this method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (codes::BODY_TOO_LARGE, "the request body is too large"),
        StatusCode::REQUEST_TIMEOUT => (codes::TIMEOUT, "the request took too long"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            (codes::UNSUPPORTED_MEDIA_TYPE, "unsupported content type")
        }
        StatusCode::TOO_MANY_REQUESTS => (codes::TOO_MANY_REQUESTS, "too many requests"),
        s if s.is_server_error() => (codes::INTERNAL, "internal error"),
        _ => ("http_error", "the request was refused"),
    };
    let mut replaced = ApiError::new(status, code, detail).into_response();
    // Keep headers such as Allow (405) and the request id.
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replaced.headers_mut().insert(name.clone(), value.clone());
        }
    }
    replaced
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let header = |wait| {
            ApiError::rate_limited(wait).into_response().headers()[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(header(Duration::ZERO), "1");
        assert_eq!(header(Duration::from_millis(50)), "1");
        assert_eq!(header(Duration::from_secs(1)), "1");
        assert_eq!(header(Duration::from_millis(1001)), "2");
        assert_eq!(header(Duration::from_secs(90)), "90");
        let unavailable: ApiError = courier_core::Error::ShuttingDown.into();
        assert_eq!(
            unavailable.into_response().headers()[header::RETRY_AFTER],
            "1"
        );
        let bad = ApiError::bad_request(codes::INVALID_QUERY, "x").into_response();
        assert!(!bad.headers().contains_key(header::RETRY_AFTER));
    }

    fn problem_of(response: Response) -> (StatusCode, Option<String>, Problem) {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = body_bytes(response);
        (status, retry_after, serde_json::from_slice(&body).unwrap())
    }

    fn body_bytes(response: Response) -> bytes::Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .unwrap()
    }

    #[test]
    fn unsupported_features_answer_501() {
        let e = courier_core::Error::Unsupported {
            engine: "redis".into(),
            feature: courier_core::Feature::SeekByTime,
        };
        let (status, retry_after, problem) = problem_of(ApiError::from(e).into_response());
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        assert_eq!(retry_after, None, "retrying cannot help");
        assert_eq!(problem.status, 501);
        assert_eq!(problem.code, codes::UNSUPPORTED_BY_ENGINE);
        assert_eq!(problem.type_, "urn:courier:problem:unsupported_by_engine");
        assert_eq!(
            problem.detail.as_deref(),
            Some("the redis engine does not support seeking by time")
        );
    }

    #[test]
    fn an_unavailable_engine_answers_503_with_retry_after() {
        let e = courier_core::Error::Unavailable("connection refused".into());
        let (status, retry_after, problem) = problem_of(ApiError::from(e).into_response());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(problem.status, 503);
        assert_eq!(problem.code, codes::ENGINE_UNAVAILABLE);
        assert!(
            problem.detail.unwrap().contains("connection refused"),
            "the cause is in the detail"
        );
    }

    #[test]
    fn engine_codes_listed_here_are_the_engines() {
        assert_eq!(
            courier_core::Error::Unavailable(String::new()).code(),
            codes::ENGINE_UNAVAILABLE
        );
        let unsupported = courier_core::Error::Unsupported {
            engine: "x".into(),
            feature: courier_core::Feature::Dedup,
        };
        assert_eq!(unsupported.code(), codes::UNSUPPORTED_BY_ENGINE);
    }
}
