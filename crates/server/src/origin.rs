//! Browser safety: a web page on another origin must not change anything on a
//! Courier reachable from the user's browser (localhost included), even with
//! no authentication configured.
//!
//! [`OriginLayer`] refuses state-changing requests (POST, PUT, PATCH, DELETE,
//! and WebSocket upgrades: a WebSocket can publish) whose `Origin` header names neither this server (the `Host` the request was
//! sent to) nor an origin in `server.allowed_origins`, with 403
//! `origin_not_allowed`. Requests without `Origin` (curl, SDKs, servers) pass:
//! browsers always send it on cross-origin requests that change state.
//! [`cors`] answers CORS preflights for the allowed origins.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer, ExposeHeaders};

use crate::error::{codes, ApiError};

/// Refuses cross-origin state-changing requests from origins not allowed.
#[derive(Debug, Clone)]
pub struct OriginLayer {
    allowed: Arc<[String]>,
}

impl OriginLayer {
    /// `allowed`: origins as configured (`scheme://host[:port]`).
    pub fn new(allowed: &[String]) -> Self {
        Self {
            allowed: allowed.iter().map(|o| normalize(o)).collect(),
        }
    }

    /// Whether a request with this method, `Origin` and `Host` may pass.
    fn permits(&self, method: &Method, origin: Option<&[u8]>, host: Option<&str>) -> bool {
        if !changes_state(method) {
            return true;
        }
        let Some(origin) = origin else {
            return true;
        };
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let origin = normalize(origin);
        if self.allowed.contains(&origin) {
            return true;
        }
        // Same origin: the page was served by this server, under the name the
        // request was sent to. ("null" and malformed origins have no authority.)
        match (authority(&origin), host) {
            (Some(authority), Some(host)) => authority == normalize_authority(host),
            _ => false,
        }
    }
}

impl<S> Layer<S> for OriginLayer {
    type Service = OriginCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OriginCheck {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`OriginLayer`].
#[derive(Debug, Clone)]
pub struct OriginCheck<S> {
    inner: S,
    layer: OriginLayer,
}

impl<S, B> Service<Request<B>> for OriginCheck<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Checked<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let headers = req.headers();
        let origin = headers.get(header::ORIGIN).map(HeaderValue::as_bytes);
        // Browsers send `Origin` on every WebSocket handshake, and a page of
        // any site may open one: it is checked like a POST.
        let websocket = headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let method = if websocket {
            &Method::POST
        } else {
            req.method()
        };
        // HTTP/2 carries the host in the URI (`:authority`), HTTP/1.1 in `Host`.
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()));
        if self.layer.permits(method, origin, host) {
            return Checked::Pass {
                future: self.inner.call(req),
            };
        }
        let origin = String::from_utf8_lossy(origin.unwrap_or_default()).into_owned();
        tracing::debug!(%origin, method = %req.method(), path = req.uri().path(), "origin refused");
        Checked::Refused {
            response: Some(refusal(&origin).into_response()),
            _error: std::marker::PhantomData,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`OriginCheck`]: the inner service's, or the refusal.
    #[project = CheckedProj]
    pub enum Checked<F, E> {
        Pass { #[pin] future: F },
        Refused { response: Option<Response>, _error: std::marker::PhantomData<fn() -> E> },
    }
}

impl<F, E> std::future::Future for Checked<F, E>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CheckedProj::Pass { future } => future.poll(cx),
            CheckedProj::Refused { response, .. } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

fn refusal(origin: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        codes::ORIGIN_NOT_ALLOWED,
        format!(
            "requests from web pages of origin '{origin}' may not change anything on this \
             server; to allow them, add \"{origin}\" to server.allowed_origins in the config file"
        ),
    )
}

fn changes_state(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Lower case, no trailing slash, no default port.
fn normalize(origin: &str) -> String {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    for (scheme, port) in [("http://", ":80"), ("https://", ":443")] {
        if origin.starts_with(scheme) {
            if let Some(stripped) = origin.strip_suffix(port) {
                return stripped.to_owned();
            }
        }
    }
    origin
}

/// `host[:port]` of a normalized origin.
fn authority(origin: &str) -> Option<&str> {
    let (_, authority) = origin.split_once("://")?;
    (!authority.is_empty() && !authority.contains(['/', '?', '#', '@'])).then_some(authority)
}

/// A `Host` value compared with an origin's authority: lower case, and the
/// default ports dropped, since browsers leave them out of `Origin`.
fn normalize_authority(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    for port in [":80", ":443"] {
        if let Some(stripped) = host.strip_suffix(port) {
            return stripped.to_owned();
        }
    }
    host
}

/// Whether a configured value is an origin: `scheme://host[:port]`.
pub fn is_valid_origin(origin: &str) -> bool {
    let normalized = normalize(origin);
    let Some((scheme, _)) = normalized.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && authority(&normalized).is_some()
        && HeaderValue::from_str(origin.trim()).is_ok()
}

/// Request headers a page may send: the JSON content type, message headers and
/// the request id. `Courier-*` and `ce-*` names are open-ended, so the
/// preflight's list is mirrored back; only allowed origins ever get an answer.
pub fn cors(allowed: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = allowed
        .iter()
        .filter_map(|o| HeaderValue::from_str(&normalize(o)).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods(AllowMethods::list([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ]))
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(ExposeHeaders::list([
            HeaderName::from_static("x-request-id"),
            header::LOCATION,
            header::RETRY_AFTER,
        ]))
        .max_age(std::time::Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let layer = OriginLayer::new(&["https://App.example.com/".into()]);
        let post = Method::POST;
        let host = Some("127.0.0.1:7070");
        let ok = |m: &Method, o: Option<&str>, h: Option<&str>| {
            layer.permits(m, o.map(str::as_bytes), h)
        };
        assert!(ok(&post, None, host));
        assert!(ok(&Method::GET, Some("https://evil.example"), host));
        assert!(ok(&post, Some("http://127.0.0.1:7070"), host));
        assert!(ok(&post, Some("https://app.example.com"), host));
        assert!(ok(&post, Some("https://app.example.com:443"), host));
        assert!(ok(&post, Some("http://localhost"), Some("localhost:80")));
        assert!(!ok(&post, Some("https://evil.example"), host));
        assert!(!ok(&post, Some("http://127.0.0.1:8080"), host));
        assert!(!ok(&post, Some("null"), host));
        assert!(!ok(&Method::DELETE, Some("http://127.0.0.1:7070"), None));
    }

    #[test]
    fn configured_origins() {
        for ok in [
            "https://app.example.com",
            "http://localhost:3000",
            "http://[::1]:8080/",
        ] {
            assert!(is_valid_origin(ok), "{ok}");
        }
        for bad in [
            "app.example.com",
            "https://",
            "https://a/b",
            "*",
            "null",
            "",
        ] {
            assert!(!is_valid_origin(bad), "{bad}");
        }
    }
}
