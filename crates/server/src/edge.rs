//! What every request passes through before routing, as one tower service:
//! the request id, the per-client rate limit, the request timeout, a problem
//! document for bare error answers, and a debug-level request log.
//!
//! Written by hand rather than stacked from `tower-http` layers and axum's
//! `from_fn` middleware: those box a future and clone the inner service per
//! layer and per request, and applied through `Router::layer` they wrap each
//! route separately. Measured on single-message publishes with 64
//! connections, that stack cost about a quarter of the server's CPU per request.
//! Here the future is one concrete type, pinned in place, and nothing is
//! cloned or boxed per request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::error::{codes, problem_for_bare_errors, ApiError};
use crate::rate_limit::{self, RateLimit};

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Settings of [`Edge`].
pub(crate) struct EdgeConfig {
    /// Longest a request may take, body upload included.
    pub request_timeout: Duration,
    /// Longest a pull may take: its own wait on top of `request_timeout`, so
    /// long polls are never cut.
    pub pull_timeout: Duration,
    /// Requests announcing a longer body are refused before it is read. (The
    /// body extractors enforce the limit on bodies without a length.)
    pub body_limit: usize,
    pub rate_limit: Option<Arc<RateLimit>>,
}

/// What every connection's [`Edge`] shares.
struct Shared {
    config: EdgeConfig,
    /// Source of request ids for requests that bring none.
    next_id: AtomicU64,
}

#[derive(Clone)]
pub(crate) struct EdgeLayer(Arc<Shared>);

impl EdgeLayer {
    pub(crate) fn new(config: EdgeConfig) -> Self {
        Self(Arc::new(Shared {
            config,
            next_id: AtomicU64::new(0),
        }))
    }

    pub(crate) fn config(&self) -> &EdgeConfig {
        &self.0.config
    }

    /// An id for a request that brings no `x-request-id`.
    pub(crate) fn next_request_id(&self) -> HeaderValue {
        self.0.next_request_id()
    }
}

impl Shared {
    fn next_request_id(&self) -> HeaderValue {
        HeaderValue::from(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            shared: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Edge<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.shared.next_request_id();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        // Only when request logs are on: otherwise nothing below costs a thing.
        let log = tracing::enabled!(tracing::Level::DEBUG).then(|| RequestLog {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            started: Instant::now(),
        });
        let config = &self.shared.config;
        let path = request.uri().path();
        if let Some(limit) = &config.rate_limit {
            if !rate_limit::EXEMPT.contains(&path) {
                let peer = request.extensions().get::<ConnectInfo<SocketAddr>>();
                if let Some(Err(wait)) = peer.map(|ConnectInfo(peer)| limit.check(peer.ip())) {
                    return EdgeFuture::refused(ApiError::rate_limited(wait), id, log);
                }
            }
        }
        if announced_length(&request).is_some_and(|n| n > config.body_limit as u64) {
            return EdgeFuture::refused(body_too_large(config.body_limit), id, log);
        }
        let limit = if path.ends_with("/pull") {
            config.pull_timeout
        } else {
            config.request_timeout
        };
        EdgeFuture {
            state: State::Running {
                inner: self.inner.call(request),
                deadline: tokio::time::sleep(limit),
                limit,
            },
            id: Some(id),
            log,
        }
    }
}

fn announced_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// What the debug-level request log needs once the answer is ready.
struct RequestLog {
    method: Method,
    path: String,
    started: Instant,
}

pin_project! {
    pub(crate) struct EdgeFuture<F> {
        #[pin]
        state: State<F>,
        id: Option<HeaderValue>,
        log: Option<RequestLog>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running {
            #[pin]
            inner: F,
            #[pin]
            deadline: Sleep,
            limit: Duration,
        },
        Refused { response: Option<Response> },
    }
}

impl<F> EdgeFuture<F> {
    fn refused(error: ApiError, id: HeaderValue, log: Option<RequestLog>) -> Self {
        EdgeFuture {
            state: State::Refused {
                response: Some(error.into_response()),
            },
            id: Some(id),
            log,
        }
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.state.project() {
            StateProj::Running {
                inner,
                deadline,
                limit,
            } => match inner.poll(cx) {
                Poll::Ready(Ok(response)) => response,
                Poll::Pending => match deadline.poll(cx) {
                    Poll::Ready(()) => timed_out(*limit).into_response(),
                    Poll::Pending => return Poll::Pending,
                },
            },
            StateProj::Refused { response } => response
                .take()
                .expect("an EdgeFuture is not polled after it completed"),
        };
        let mut response = problem_for_bare_errors(response);
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        match this.log.take() {
            Some(log) => log.finish(&response),
            None if response.status().is_server_error() => {
                let id = response.headers().get(&REQUEST_ID);
                tracing::error!(id = ?id, status = response.status().as_u16(), "request failed");
            }
            None => {}
        }
        Poll::Ready(Ok(response))
    }
}

/// 408 `timeout`: the request took longer than `limit`.
pub(crate) fn timed_out(limit: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        codes::TIMEOUT,
        format!(
            "the request was not completed within {} ms",
            limit.as_millis()
        ),
    )
}

/// 413 `body_too_large`: the announced body is over `limit` bytes.
pub(crate) fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        codes::BODY_TOO_LARGE,
        format!("the request body is larger than the server's body limit ({limit} bytes)"),
    )
}

impl RequestLog {
    fn finish(self, response: &Response) {
        let id = response
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        log_answer(
            id,
            self.method.as_str(),
            &self.path,
            response.status(),
            self.started,
        );
    }
}

/// The request log line: error for a 5xx, else debug. (Also the fast path's.)
pub(crate) fn log_answer(id: &str, method: &str, path: &str, status: StatusCode, started: Instant) {
    let micros = started.elapsed().as_micros() as u64;
    let status = status.as_u16();
    if status >= 500 {
        tracing::error!(id, method, path, status, micros, "request failed");
    } else {
        tracing::debug!(id, method, path, status, micros, "request");
    }
}
