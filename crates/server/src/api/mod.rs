//! The HTTP/JSON API: routes, their OpenAPI description, and the middleware
//! stack around them. Handlers translate between the wire format
//! (`courier_client::wire`) and the `Engine` trait and hold no broker logic.

mod broker;
mod codec;
mod messages;
mod subscriptions;
mod topics;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use courier_core::Engine;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{OpenApi, Response as OaResponse, ResponseBuilder};
use utoipa::{Modify, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::ServerConfig;
use crate::error::{codes, problem_for_bare_errors, ApiError};
use crate::rate_limit::{self, RateLimit};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

pub(crate) struct Shared {
    pub engine: Arc<dyn Engine>,
    pub max_pull_wait: Duration,
    pub max_headers_per_message: usize,
    /// Cancelled when shutdown begins: waiting pulls give up, `/readyz` turns 503.
    pub draining: CancellationToken,
    openapi_json: String,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub(crate) fn new(engine: Arc<dyn Engine>, config: &ServerConfig) -> Self {
        Self(Arc::new(Shared {
            engine,
            max_pull_wait: config.max_pull_wait,
            max_headers_per_message: config.max_headers_per_message,
            draining: CancellationToken::new(),
            openapi_json: openapi_json(),
        }))
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Courier",
        description = "A durable message broker: topics, subscriptions with leases, retries and dead letters.\n\nEvery error is an RFC 9457 problem document (`application/problem+json`) whose `code` is stable.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    tags(
        (name = "topics", description = "Create, inspect and delete topics"),
        (name = "messages", description = "Publish and browse messages"),
        (name = "subscriptions", description = "Subscriptions, leases and acknowledgements"),
        (name = "dead-letters", description = "Messages that ran out of attempts"),
        (name = "broker", description = "Health, statistics and this document"),
    ),
    components(schemas(
        courier_client::wire::schema::StartPosition,
        courier_client::wire::schema::RetryPolicy,
        courier_client::wire::schema::Retention,
    )),
)]
struct ApiDoc;

/// Every operation may also answer a problem document (bad input, timeout,
/// shutting down); listing that on each route would only repeat it. Every
/// operation but the health probes may also answer 429 `rate_limited`.
struct DefaultProblem;

impl Modify for DefaultProblem {
    fn modify(&self, openapi: &mut OpenApi) {
        let problem_content = || {
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("Problem")))
                .build()
        };
        let problem: OaResponse = ResponseBuilder::new()
            .description("An RFC 9457 problem document; `code` says what went wrong")
            .content(courier_client::wire::PROBLEM_JSON, problem_content())
            .build();
        let retry_after = HeaderBuilder::new()
            .schema(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            )
            .description(Some("Whole seconds until a request may succeed again"))
            .build();
        let rate_limited: OaResponse = ResponseBuilder::new()
            .description(
                "`rate_limited`: this client (IP address, IPv6 /64) went over the \
                 server's `rate_limit`; try again after `Retry-After` seconds",
            )
            .header("Retry-After", retry_after)
            .content(courier_client::wire::PROBLEM_JSON, problem_content())
            .build();
        // Described once, referred to by every operation it applies to.
        openapi
            .components
            .get_or_insert_with(Default::default)
            .responses
            .insert("RateLimited".into(), rate_limited.into());
        let rate_limited = utoipa::openapi::Ref::from_response_name("RateLimited");
        for (path, item) in openapi.paths.paths.iter_mut() {
            let limited = !rate_limit::EXEMPT.contains(&path.as_str());
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut op.responses.responses;
                if limited {
                    responses
                        .entry("429".into())
                        .or_insert_with(|| rate_limited.clone().into());
                }
                responses
                    .entry("default".into())
                    .or_insert_with(|| problem.clone().into());
            }
        }
    }
}

/// The routes with their OpenAPI description; the one place both come from.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(topics::list_topics))
        .routes(routes!(
            topics::create_topic,
            topics::get_topic,
            topics::delete_topic
        ))
        .routes(routes!(messages::publish, messages::browse))
        .routes(routes!(messages::publish_batch))
        .routes(routes!(subscriptions::list_subscriptions))
        .routes(routes!(
            subscriptions::create_subscription,
            subscriptions::get_subscription,
            subscriptions::delete_subscription
        ))
        .routes(routes!(subscriptions::pull))
        .routes(routes!(subscriptions::ack))
        .routes(routes!(subscriptions::nack))
        .routes(routes!(subscriptions::extend))
        .routes(routes!(subscriptions::seek))
        .routes(routes!(subscriptions::dead_letters))
        .routes(routes!(subscriptions::replay_dead_letters))
        .routes(routes!(broker::stats))
        .routes(routes!(broker::healthz))
        .routes(routes!(broker::readyz))
        .routes(routes!(broker::openapi_document))
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi() -> OpenApi {
    let mut doc = routes().split_for_parts().1;
    // After the split: only then does the document hold the routes' paths.
    DefaultProblem.modify(&mut doc);
    doc
}

/// The OpenAPI document as served at `/openapi.json` and committed at `docs/openapi.json`.
pub fn openapi_json() -> String {
    let mut json = openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    json.push('\n');
    json
}

/// The whole HTTP application: routes plus the middleware stack. With a rate
/// limit, requests need the peer's `ConnectInfo<SocketAddr>` extension, which
/// the connection loop adds.
pub(crate) fn app(
    state: AppState,
    config: &ServerConfig,
    rate_limit: Option<Arc<RateLimit>>,
) -> Router {
    let (router, _) = routes().split_for_parts();
    let timeouts = Timeouts {
        request: config.request_timeout,
        pull: config.request_timeout + config.max_pull_wait,
    };
    // Layers run outside-in from the last one added.
    let router = router
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such route")
        })
        .with_state(state)
        // The tower-http limit below does the limiting (it refuses early on Content-Length).
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(middleware::from_fn_with_state(timeouts, request_timeout));
    // Outside the timeout and the body limit: a refused request costs no body read.
    let router = match rate_limit {
        Some(limit) => router.layer(middleware::from_fn_with_state(limit, rate_limit::enforce)),
        None => router,
    };
    router
        .layer(middleware::map_response(problem_for_bare_errors))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                // Debug level: at the default `info` the span is disabled and
                // costs nothing per request (formatting its fields was ~4% of
                // a publish's CPU).
                tracing::debug_span!("request", id, method = %req.method(), path = %req.uri().path(), version = ?req.version())
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, Counter::default()))
}

#[derive(Clone, Copy)]
struct Timeouts {
    request: Duration,
    pull: Duration,
}

/// Cuts off requests that take too long, slow request bodies included. A pull
/// gets its own wait on top of the request timeout, so long polls are never cut.
async fn request_timeout(State(t): State<Timeouts>, req: Request, next: Next) -> Response {
    let limit = if req.uri().path().ends_with("/pull") {
        t.pull
    } else {
        t.request
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            codes::TIMEOUT,
            format!(
                "the request was not completed within {} ms",
                limit.as_millis()
            ),
        )
        .into_response(),
    }
}

/// Request ids: a per-process counter, unless the client sent its own `x-request-id`.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        HeaderValue::from_str(&n.to_string())
            .ok()
            .map(RequestId::new)
    }
}
