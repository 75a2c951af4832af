//! Every error answer is an RFC 9457 problem document with a stable `code`:
//! the engine's `Error::code()` for engine errors, the transport codes below
//! for everything the HTTP layer refuses on its own.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use courier_client::wire::{Problem, PROBLEM_JSON};
use courier_core::ErrorKind;

/// Stable codes of errors found before the engine is asked.
pub mod codes {
    pub const MALFORMED_JSON: &str = "malformed_json";
    pub const UNKNOWN_FIELD: &str = "unknown_field";
    pub const INVALID_FIELD: &str = "invalid_field";
    pub const INVALID_QUERY: &str = "invalid_query";
    pub const INVALID_HEADER: &str = "invalid_header";
    pub const TOO_MANY_HEADERS: &str = "too_many_headers";
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const TIMEOUT: &str = "timeout";
    pub const TOO_MANY_REQUESTS: &str = "too_many_requests";
    pub const INTERNAL: &str = "internal_error";
}

/// An error on its way to becoming a problem document.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
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
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // Shutting down is expected, not worth an error line; storage failures are.
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, code = e.code(), "engine error");
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
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Gives error answers produced outside the handlers (router 404/405, the body
/// limit layer, hyper) a problem document, so clients see one error format.
pub async fn problem_for_bare_errors(response: Response) -> Response {
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
