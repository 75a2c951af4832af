//! The request time limit, with an answer that says whose side was slow:
//! 408 `timeout` while the client has not sent its whole body yet (retrying
//! over a slow link will not help by itself), 503 `timeout` with
//! `Retry-After` once the request was complete and the server did not
//! answer in time (busy, or its engine's backend is slow).
//!
//! tower-http's `TimeoutLayer` answers one status for both; this layer is
//! the same shape with that one difference.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tower::{Layer, Service};

use crate::error::{codes, ApiError};

/// Answers 408 or 503 `timeout` when the inner service takes longer than `limit`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    pub(crate) fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Timeout<S> {
    inner: S,
    limit: Duration,
}

impl<S, B> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let received = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            if body.is_end_stream() {
                received.store(true, Ordering::Release);
            }
            Body::new(Received {
                body,
                received: received.clone(),
            })
        });
        let answer = self.inner.call(request);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(answer) => answer,
                Err(_) => Ok(timed_out(limit, received.load(Ordering::Acquire)).into_response()),
            }
        })
    }
}

/// 408 `timeout` when the body had not all arrived, else 503 `timeout`.
pub(crate) fn timed_out(limit: Duration, body_received: bool) -> ApiError {
    let ms = limit.as_millis();
    if body_received {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::TIMEOUT,
            format!("the server did not complete the request within {ms} ms"),
        )
    } else {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            codes::TIMEOUT,
            format!("the request body did not arrive within {ms} ms"),
        )
    }
}

/// A request body that notes when it has all arrived.
struct Received<B> {
    body: B,
    received: Arc<AtomicBool>,
}

impl<B> HttpBody for Received<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(poll, Poll::Ready(None)) || self.body.is_end_stream() {
            self.received.store(true, Ordering::Release);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn slow(request: Request<Body>) -> Result<Response, Infallible> {
        // Reads the body, then takes a minute.
        let _ = axum::body::to_bytes(request.into_body(), usize::MAX).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(StatusCode::OK.into_response())
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_server_answers_503_and_a_slow_body_408() {
        let service = TimeoutLayer::new(Duration::from_secs(1)).layer(tower::service_fn(slow));

        let complete = Request::new(Body::from("all here"));
        let answer = service.clone().oneshot(complete).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()["retry-after"], "1");

        let (_sender, body) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let never = http_body_util::StreamBody::new(tokio_stream_of(body));
        let answer = service.oneshot(Request::new(never)).await.unwrap();
        assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
    }

    /// A body that waits on `receiver` for frames.
    fn tokio_stream_of<T>(
        mut receiver: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_core::Stream<Item = T> + Unpin {
        futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }
}
