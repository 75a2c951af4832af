//! The HTTP/JSON API: routes, their OpenAPI description, and the application
//! behind the [`crate::edge`] layers. Handlers translate between the wire format
//! (`courier_api`) and the `Engine` trait and hold no broker logic.

mod broker;
mod codec;
mod messages;
pub(crate) use codec::message_from_json;
pub(crate) use subscriptions::check_tokens;
mod services;
pub(crate) use services::instance_from;
mod subscriptions;
mod topics;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;
use courier_core::Engine;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{OpenApi, Response as OaResponse, ResponseBuilder};
use utoipa::{Modify, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AuthLayer, Authenticator};
use crate::config::{Config, ServerConfig};
use crate::edge::rate_limit::{self, RateLimit, RateLimitLayer};
use crate::edge::{self as layers};
use crate::error::{codes, ApiError};
use crate::origin::{self, OriginLayer};

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

pub(crate) struct Shared {
    pub engine: Arc<dyn Engine>,
    /// Push delivery; it holds the services (`upstreams`) too.
    pub pusher: Arc<courier_push::Pusher>,
    pub max_pull_wait: Duration,
    pub max_headers_per_message: usize,
    /// Cancelled when shutdown begins: waiting pulls give up, `/readyz` turns 503.
    pub draining: CancellationToken,
    /// Event streams and long polls: presence, connection limits, timings.
    pub realtime: crate::realtime::Realtime,
    openapi_json: String,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    pub fn upstreams(&self) -> &courier_upstream::Upstreams {
        self.pusher.upstreams()
    }
}

impl AppState {
    pub(crate) fn new(
        engine: Arc<dyn Engine>,
        pusher: Arc<courier_push::Pusher>,
        config: &Config,
    ) -> Self {
        Self(Arc::new(Shared {
            engine,
            pusher,
            max_pull_wait: config.server.max_pull_wait,
            max_headers_per_message: config.server.max_headers_per_message,
            draining: CancellationToken::new(),
            realtime: crate::realtime::Realtime::new(config),
            openapi_json: openapi_json(),
        }))
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Courier",
        description = "A durable message broker: topics, subscriptions with leases, retries and dead letters.\n\nEvery error is an RFC 9457 problem document (`application/problem+json`) whose `code` is stable. Two codes may come from any `/v1` operation, because they depend on the engine behind the broker: `unsupported_by_engine` (501) when the engine lacks a feature the request needs (`GET /v1/capabilities` lists what it has; retrying does not help), and `engine_unavailable` (503, with `Retry-After`) when the engine's backend cannot be reached for now.\n\nJSON request bodies are sent as `application/json` (or a `+json` type, or with no content type); other types get 415 `unsupported_media_type`. A POST, PUT, PATCH or DELETE whose `Origin` header names neither this server nor an origin in the server's `allowed_origins` gets 403 `origin_not_allowed`: web pages of other sites cannot change anything.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    tags(
        (name = "topics", description = "Create, inspect and delete topics"),
        (name = "messages", description = "Publish and browse messages"),
        (name = "subscriptions", description = "Subscriptions, leases and acknowledgements"),
        (name = "dead-letters", description = "Messages that ran out of attempts"),
        (name = "services", description = "Named pools of instances that push subscriptions deliver to"),
        (name = "realtime", description = "Live delivery to browsers and apps: Server-Sent Events, WebSocket, long polls, presence. See docs/realtime.md"),
        (name = "broker", description = "Health, statistics and this document"),
    ),
    modifiers(&BearerAuth),
    components(schemas(
        courier_api::schema::StartPosition,
        courier_api::schema::RetryPolicy,
        courier_api::schema::Retention,
        courier_api::schema::PushConfig,
        courier_api::schema::ServiceConfig,
    )),
)]
struct ApiDoc;

/// The two ways of presenting a JWT (docs/realtime.md): the `Authorization`
/// header, or the `token` query parameter for clients that cannot set headers.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT (HS256 or RS256) whose `courier` claim grants topics to subscribe \
                         and publish to; needed only when the server configures `[auth]` keys",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same JWT as a query parameter, for EventSource",
            ))),
        );
    }
}

/// Every operation may also answer a problem document (bad input, timeout,
/// shutting down); listing that on each route would only repeat it. Every
/// operation but the health probes may also answer 429 `rate_limited`, and
/// every `/v1` operation 503 `engine_unavailable`.
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
            .content(courier_api::PROBLEM_JSON, problem_content())
            .build();
        let retry_after = HeaderBuilder::new()
            .schema(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            )
            .description(Some("Whole seconds until a request may succeed again"))
            .build();
        let unavailable: OaResponse = ResponseBuilder::new()
            .description(
                "`engine_unavailable`: the engine's backend (a NATS or Redis server) \
                 cannot be reached for now; try again after `Retry-After` seconds. \
                 (`shutting_down` also answers 503.)",
            )
            .header("Retry-After", retry_after.clone())
            .content(courier_api::PROBLEM_JSON, problem_content())
            .build();
        let rate_limited: OaResponse = ResponseBuilder::new()
            .description(
                "`rate_limited`: this client (IP address, IPv6 /64) went over the \
                 server's `rate_limit`; try again after `Retry-After` seconds",
            )
            .header("Retry-After", retry_after)
            .content(courier_api::PROBLEM_JSON, problem_content())
            .build();
        // Described once, referred to by every operation it applies to.
        let responses = &mut openapi
            .components
            .get_or_insert_with(Default::default)
            .responses;
        responses.insert("RateLimited".into(), rate_limited.into());
        responses.insert("EngineUnavailable".into(), unavailable.into());
        let rate_limited = utoipa::openapi::Ref::from_response_name("RateLimited");
        let unavailable = utoipa::openapi::Ref::from_response_name("EngineUnavailable");
        for (path, item) in openapi.paths.paths.iter_mut() {
            let limited = !rate_limit::EXEMPT.contains(&path.as_str());
            // Capabilities are constant: answering them needs no backend.
            let engine = path.starts_with("/v1/") && path != "/v1/capabilities";
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
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
                if engine {
                    responses
                        .entry("503".into())
                        .or_insert_with(|| unavailable.clone().into());
                }
                responses
                    .entry("default".into())
                    .or_insert_with(|| problem.clone().into());
            }
        }
    }
}

/// Unsigned integers (`format: uint64`, `uint32`) get their largest value as
/// `maximum` where no smaller one is given: serde refuses anything larger.
/// Topic and subscription names in paths get the naming rules.
struct UnsignedLimits;

impl Modify for UnsignedLimits {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::RefOr;
        if let Some(components) = openapi.components.as_mut() {
            components.schemas.values_mut().for_each(limit);
        }
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for p in op.parameters.iter_mut().flatten() {
                    let is_name = p.name == "name"
                        && matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Path);
                    if let Some(schema) = p.schema.as_mut() {
                        limit(schema);
                        if is_name {
                            name_rules(schema);
                        }
                    }
                }
                if let Some(body) = op.request_body.as_mut() {
                    for content in body.content.values_mut() {
                        content.schema.as_mut().map(limit);
                    }
                }
                for response in op.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        for content in response.content.values_mut() {
                            content.schema.as_mut().map(limit);
                        }
                        for header in response.headers.values_mut() {
                            limit(&mut header.schema);
                        }
                    }
                }
            }
        }
    }
}

/// `courier_core::error::validate_name`: 1 to 200 of `A-Z a-z 0-9 . _ -`, not
/// starting with `.` or `-`.
fn name_rules(schema: &mut utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>) {
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;
    if let RefOr::T(Schema::Object(o)) = schema {
        o.pattern = Some("^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$".to_owned());
        o.min_length = Some(1);
        o.max_length = Some(200);
    }
}

fn limit(schema: &mut utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>) {
    use utoipa::openapi::schema::{
        AdditionalProperties, ArrayItems, KnownFormat, Schema, SchemaFormat,
    };
    use utoipa::openapi::RefOr;
    let RefOr::T(schema) = schema else {
        return;
    };
    match schema {
        Schema::Object(o) => {
            let (max, name) = match &o.format {
                Some(SchemaFormat::KnownFormat(KnownFormat::UInt64)) => (u64::MAX, "uint64"),
                Some(SchemaFormat::KnownFormat(KnownFormat::UInt32)) => (u32::MAX.into(), "uint32"),
                Some(SchemaFormat::KnownFormat(KnownFormat::UInt16)) => (u16::MAX.into(), "uint16"),
                Some(SchemaFormat::KnownFormat(KnownFormat::UInt8)) => (u8::MAX.into(), "uint8"),
                _ => (0, ""),
            };
            if !name.is_empty() {
                // utoipa would write `u-int64`.
                o.format = Some(SchemaFormat::Custom(name.to_owned()));
                if o.maximum.is_none() {
                    o.maximum = usize::try_from(max).ok().map(utoipa::Number::UInt);
                }
            }
            o.properties.values_mut().for_each(limit);
            if let Some(AdditionalProperties::RefOr(r)) = o.additional_properties.as_deref_mut() {
                limit(r);
            }
        }
        Schema::Array(a) => {
            if let ArrayItems::RefOrSchema(items) = &mut a.items {
                limit(items);
            }
        }
        Schema::OneOf(x) => x.items.iter_mut().for_each(limit),
        Schema::AllOf(x) => x.items.iter_mut().for_each(limit),
        Schema::AnyOf(x) => x.items.iter_mut().for_each(limit),
        _ => {}
    }
}

/// The routes with their OpenAPI description; the one place both come from.
fn routes() -> OpenApiRouter<AppState> {
    quick_routes()
        .merge(pull_routes())
        .merge(publish_routes())
        .merge(crate::realtime::quick_routes())
        .merge(crate::realtime::poll_routes())
        .merge(crate::realtime::stream_routes())
}

/// Publishing: behind the auth layer, which the handlers ask.
fn publish_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(messages::publish))
        .routes(routes!(messages::publish_batch))
}

/// Long polls: their wait comes on top of the request timeout.
fn pull_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(subscriptions::pull))
}

/// Every route but the long polls.
fn quick_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(topics::list_topics))
        .routes(routes!(
            topics::create_topic,
            topics::get_topic,
            topics::delete_topic
        ))
        .routes(routes!(messages::browse))
        .routes(routes!(subscriptions::list_subscriptions))
        .routes(routes!(
            subscriptions::create_subscription,
            subscriptions::get_subscription,
            subscriptions::update_subscription,
            subscriptions::delete_subscription
        ))
        .routes(routes!(subscriptions::ack))
        .routes(routes!(subscriptions::nack))
        .routes(routes!(subscriptions::extend))
        .routes(routes!(subscriptions::seek))
        .routes(routes!(services::release))
        .routes(routes!(services::reject))
        .routes(routes!(services::push_stats))
        .routes(routes!(services::list_services))
        .routes(routes!(
            services::get_service,
            services::define_service,
            services::delete_service
        ))
        .routes(routes!(services::register_instance))
        .routes(routes!(services::heartbeat))
        .routes(routes!(services::deregister))
        .routes(routes!(subscriptions::dead_letters))
        .routes(routes!(subscriptions::replay_dead_letters))
        .routes(routes!(broker::stats))
        .routes(routes!(broker::capabilities))
        .routes(routes!(broker::healthz))
        .routes(routes!(broker::readyz))
        .routes(routes!(broker::openapi_document))
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi() -> OpenApi {
    let mut doc = routes().split_for_parts().1;
    // After the split: only then does the document hold the routes' paths.
    DefaultProblem.modify(&mut doc);
    UnsignedLimits.modify(&mut doc);
    // Exactly one of `seq` and `time` (utoipa drops `min_properties`).
    if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(seek))) = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("SeekBody"))
    {
        seek.min_properties = Some(1);
    }
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

/// The whole HTTP application: the routes behind the [`crate::edge`]
/// layers, in the order that module gives. With a rate limit, requests need
/// the peer's `ConnectInfo<SocketAddr>` extension, which the connection loop adds.
pub(crate) fn app(
    state: AppState,
    config: &ServerConfig,
    rate_limit: Option<Arc<RateLimit>>,
    auth: Option<Arc<Authenticator>>,
) -> Router {
    let quick = layers::timeout_layer(config.request_timeout);
    let long = layers::timeout_layer(config.request_timeout + config.max_pull_wait);
    let auth = AuthLayer::new(auth);
    let router = |r: OpenApiRouter<AppState>| r.split_for_parts().0;
    let guarded = router(publish_routes().merge(crate::realtime::quick_routes()))
        .layer(quick)
        .merge(router(crate::realtime::poll_routes()).layer(long))
        // Event streams have no time limit; shutdown ends them.
        .merge(router(crate::realtime::stream_routes()))
        .layer(auth);
    let routes = router(quick_routes())
        .layer(quick)
        .merge(router(pull_routes()).layer(long))
        .merge(guarded)
        .route("/metrics", axum::routing::get(crate::metrics::scrape))
        .merge(crate::realtime::client_routes().layer(quick))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such route")
        })
        // Inside the routing: it sees the matched route's template.
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(state)
        // Inside the edge layers: a refused origin gets a request id and a log line.
        .layer(OriginLayer::new(&config.allowed_origins))
        .layer(origin::cors(&config.allowed_origins))
        // The body limit layer is the one limit; axum's default would add its own.
        .layer(DefaultBodyLimit::disable());
    let (sane_id, set_id, propagate_id) = layers::request_id_layers();
    routes.layer(
        ServiceBuilder::new()
            .layer(sane_id)
            .layer(set_id)
            .layer(propagate_id)
            .layer(layers::request_log_layer())
            .option_layer(rate_limit.map(RateLimitLayer::new))
            .layer(layers::problem_layer())
            .layer(layers::body_limit_layer(config.body_limit)),
    )
}
