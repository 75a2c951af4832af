//! The call path and the connection pool.
//!
//! One hyper-util legacy `Client` per service: its `HttpConnector` carries
//! the connect timeout, its pool keeps connections alive per instance
//! (HTTP/1.1), or holds one multiplexed h2c connection per instance when
//! `http2` is set. A call: choose an instance and take its slots
//! ([`Service::acquire`]), send with the per-call timeout around request and
//! body, then settle the outcome (breaker, outlier, load estimate, counters,
//! metrics) and give the slots back.
//!
//! The pool's `retry_canceled_requests` stays on: it resends only a request
//! that was never written because the pooled connection had already closed,
//! which is reconnecting, not retrying. A request that was sent is never
//! sent again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::config::ServiceConfig;
use crate::error::CallError;
use crate::service::{Outcome, Service};

/// The pooled HTTP client of a service.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How long an unused pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Builds the pooled client for a service's settings.
pub(crate) fn client(config: &ServiceConfig) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .http2_only(config.http2)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector)
}

/// The answer of an instance: whatever its status, the instance answered.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The id of the instance that answered.
    pub instance: String,
    /// The answer's status; 5xx counted as a failure of the instance.
    pub status: StatusCode,
    /// The answer's headers.
    pub headers: HeaderMap,
    /// The answer's whole body.
    pub body: Bytes,
    /// From sending the request to the end of the body.
    pub latency: Duration,
}

/// Why sending failed, before it is tied to an instance.
enum SendError {
    Connect(String),
    Io(String),
}

impl Service {
    /// Sends one request to one instance chosen by the balancer. `key` feeds
    /// `ring_hash` (and is ignored otherwise). The request's URI holds only
    /// path and query; the instance's base URL is prepended. `timeout` covers
    /// the whole exchange, body included. There are no retries, ever: the
    /// caller owns retries.
    ///
    /// A timeout, a connection error, a broken connection or a 5xx answer
    /// counts as a failure of the instance (breaker, outlier detection); any
    /// other answer, 4xx included, as a success.
    pub async fn call(
        &self,
        request: Request<Bytes>,
        key: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let (mut parts, body) = request.into_parts();
        let lease = match self.acquire(key, parts.uri.path_and_query()) {
            Ok(lease) => lease,
            Err(error) => {
                metrics::counter!("courier_upstream_requests_total",
                    "service" => self.name().to_owned(), "instance" => "",
                    "outcome" => "no_instance")
                .increment(1);
                return Err(error);
            }
        };
        let instance = lease.instance.clone();
        let started = Instant::now();
        let sent = match &lease.target {
            Err(message) => Err(SendError::Connect(message.clone())),
            Ok(uri) => {
                parts.uri = uri.clone();
                parts.version = if lease.http2 {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                };
                let request = Request::from_parts(parts, Full::new(body));
                match tokio::time::timeout(timeout, send(&lease.client, request)).await {
                    Ok(result) => result,
                    Err(_) => {
                        let latency = started.elapsed();
                        lease.settle(Outcome {
                            failed: true,
                            latency: Some(latency),
                        });
                        record(self.name(), &instance, "timeout", latency);
                        return Err(CallError::Timeout { instance });
                    }
                }
            }
        };
        let latency = started.elapsed();
        let (outcome, label, result) = match sent {
            Ok((status, headers, body)) => {
                let failed = status.is_server_error();
                let label = match status.as_u16() {
                    500.. => "server_error",
                    400..=499 => "client_error",
                    _ => "success",
                };
                let reply = Reply {
                    instance: instance.clone(),
                    status,
                    headers,
                    body,
                    latency,
                };
                let outcome = Outcome {
                    failed,
                    latency: Some(latency),
                };
                (outcome, label, Ok(reply))
            }
            Err(SendError::Connect(message)) => {
                let outcome = Outcome {
                    failed: true,
                    latency: None,
                };
                let error = CallError::Connect {
                    instance: instance.clone(),
                    message,
                };
                (outcome, "connect_error", Err(error))
            }
            Err(SendError::Io(message)) => {
                let outcome = Outcome {
                    failed: true,
                    latency: Some(latency),
                };
                let error = CallError::Io {
                    instance: instance.clone(),
                    message,
                };
                (outcome, "io_error", Err(error))
            }
        };
        lease.settle(outcome);
        record(self.name(), &instance, label, latency);
        result
    }

    /// A [`tower::Service`] view of this service, for stacking tower layers
    /// in front of it (gateway routes). Every call uses `timeout` and no
    /// hash key.
    pub fn client(self: &Arc<Self>, timeout: Duration) -> UpstreamClient {
        UpstreamClient {
            service: Arc::clone(self),
            timeout,
        }
    }
}

/// Sends a request and reads the whole answer.
async fn send(
    client: &crate::call::HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, HeaderMap, Bytes), SendError> {
    let response = client.request(request).await.map_err(|e| {
        let message = chain(&e);
        if e.is_connect() {
            SendError::Connect(message)
        } else {
            SendError::Io(message)
        }
    })?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| SendError::Io(chain(&e)))?
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// An error and its sources, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn record(service: &str, instance: &str, outcome: &'static str, latency: Duration) {
    let (service, instance) = (service.to_owned(), instance.to_owned());
    metrics::counter!("courier_upstream_requests_total",
        "service" => service.clone(), "instance" => instance.clone(), "outcome" => outcome)
    .increment(1);
    metrics::histogram!("courier_upstream_request_duration_seconds",
        "service" => service, "instance" => instance)
    .record(latency.as_secs_f64());
}

/// A service as a [`tower::Service`]: `poll_ready` is always ready (a call
/// that finds no instance fails at once with [`CallError::NoInstance`]: load
/// shedding rather than queueing; wait on [`Service::ready`] to queue).
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    service: Arc<Service>,
    timeout: Duration,
}

impl tower::Service<Request<Bytes>> for UpstreamClient {
    type Response = Reply;
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, CallError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let service = Arc::clone(&self.service);
        let timeout = self.timeout;
        Box::pin(async move { service.call(request, None, timeout).await })
    }
}
