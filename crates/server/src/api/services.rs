//! Services: named pools of instances that push subscriptions (and, later,
//! gateway routes) call through the resilient client. A service is declared
//! in the config, defined over the API, or comes into being when its first
//! instance registers; a registered instance stays while it heartbeats.
//!
//! Services defined and instances registered at run time live in memory:
//! after a restart, instances register again at their next heartbeat (the
//! heartbeat answers 404 `instance_not_found` until they do).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use courier_api::{AckBody, InstanceRegistration, Problem, Registered, RejectBody, SettleResponse};
use courier_upstream::{Instance, ServiceConfig, ServiceStats};
use serde::Serialize;

use super::AppState;
use crate::error::{codes, ApiError};
use crate::extract::{JsonBody, Name};

/// A service as the API shows it: its settings and each instance's state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ServiceView {
    name: String,
    /// Balancing, health checks, outlier detection, circuit breaker, limits.
    #[schema(value_type = Object)]
    config: ServiceConfig,
    /// Each instance: health, circuit state, latency, requests in flight.
    #[schema(value_type = Object)]
    stats: ServiceStats,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ServiceList {
    services: Vec<ServiceView>,
}

fn view(service: &courier_upstream::Service) -> ServiceView {
    ServiceView {
        name: service.name().to_string(),
        config: service.config(),
        stats: service.stats(),
    }
}

/// The named service, or 404 `service_not_found`.
fn service(
    s: &AppState,
    name: &str,
) -> Result<std::sync::Arc<courier_upstream::Service>, ApiError> {
    s.upstreams()
        .get(name)
        .ok_or_else(|| service_not_found(name))
}

fn service_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::SERVICE_NOT_FOUND,
        format!("no service named {name:?}: define it (PUT /v1/services/{name}) or register an instance"),
    )
}

#[utoipa::path(
    get, path = "/v1/services", tag = "services",
    responses((status = 200, description = "Every service, with its instances' state", body = ServiceList))
)]
pub(crate) async fn list_services(State(s): State<AppState>) -> Json<ServiceList> {
    let mut services: Vec<ServiceView> = s.upstreams().list().iter().map(|s| view(s)).collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Json(ServiceList { services })
}

#[utoipa::path(
    get, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "The service and its instances' state", body = ServiceView),
        (status = 404, description = "`service_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_service(
    State(s): State<AppState>,
    Name(name): Name,
) -> Result<Json<ServiceView>, ApiError> {
    let service = service(&s, &name)?;
    Ok(Json(view(&service)))
}

/// Defines a service, or changes one's settings in place (its instances
/// and their state stay).
#[utoipa::path(
    put, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    request_body(content = courier_api::schema::ServiceConfig, description = "Settings; every field defaults"),
    responses(
        (status = 201, description = "Defined", body = ServiceView),
        (status = 200, description = "Updated", body = ServiceView),
        (status = 400, description = "`invalid_argument`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn define_service(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(config): JsonBody<ServiceConfig>,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    if let Some(problem) = config.problem() {
        return Err(ApiError::invalid_argument(problem));
    }
    let existed = s.upstreams().get(&name).is_some();
    let service = s.upstreams().define(&name, config);
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view(&service))))
}

/// Removes a service; push subscriptions naming it wait until it is back.
#[utoipa::path(
    delete, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "`service_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_service(
    State(s): State<AppState>,
    Name(name): Name,
) -> Result<StatusCode, ApiError> {
    if s.upstreams().remove(&name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(service_not_found(&name))
    }
}

/// Registers an instance of a service (defining the service with default
/// settings if needed), or refreshes it: the same call is the heartbeat.
/// The instance is dropped when `expires_in` passes without another.
#[utoipa::path(
    post, path = "/v1/services/{name}/instances", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    request_body = InstanceRegistration,
    responses(
        (status = 201, description = "Registered", body = Registered),
        (status = 200, description = "Refreshed", body = Registered),
        (status = 400, description = "`invalid_argument`: not an `http://host:port` URL, or a weight out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn register_instance(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(r): JsonBody<InstanceRegistration>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let instance = instance_from(&r.url, r.id.clone(), r.weight)?;
    let service = match s.upstreams().get(&name) {
        Some(service) => service,
        None => s.upstreams().define(&name, ServiceConfig::default()),
    };
    let id = instance.id.clone();
    let registration = service.register(instance);
    let status = if registration.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Registered {
            service: name,
            id,
            expires_in: u64::try_from(registration.ttl.as_millis()).unwrap_or(u64::MAX),
        }),
    ))
}

/// An instance from a registration or the config: `http://host:port` and nothing more.
pub(crate) fn instance_from(
    url: &str,
    id: Option<String>,
    weight: Option<u32>,
) -> Result<Instance, ApiError> {
    let bad = |why: &str| ApiError::invalid_argument(format!("url {url:?}: {why}"));
    let url: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match url.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("https instances are not supported yet; use http")),
        _ => return Err(bad("must start with http://")),
    }
    let authority = url.authority().ok_or_else(|| bad("has no host"))?;
    if url.path() != "/" && !url.path().is_empty() || url.query().is_some() {
        return Err(bad(
            "must be a base URL (http://host:port); the push path goes in the subscription",
        ));
    }
    let weight = weight.unwrap_or(1);
    if !(1..=1000).contains(&weight) {
        return Err(ApiError::invalid_argument("weight must be 1 to 1000"));
    }
    let id = id.unwrap_or_else(|| authority.to_string());
    if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
        return Err(ApiError::invalid_argument(
            "id must be 1 to 200 printable characters",
        ));
    }
    Ok(Instance { id, url, weight })
}

/// Keeps a registered instance: the light form of registering again.
#[utoipa::path(
    post, path = "/v1/services/{name}/instances/{id}/heartbeat", tag = "services",
    params(
        ("name" = String, Path, description = "Service name"),
        ("id" = String, Path, description = "Instance id"),
    ),
    responses(
        (status = 204, description = "Refreshed"),
        (status = 404, description = "`service_not_found` or `instance_not_found` (expired, or the broker restarted): register again", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn heartbeat(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let service = service(&s, &name)?;
    if service.heartbeat(&id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(instance_not_found(&name, &id))
    }
}

fn instance_not_found(name: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::INSTANCE_NOT_FOUND,
        format!("service {name:?} has no instance {id:?} (it may have expired): register it again"),
    )
}

/// Takes an instance out at once (a consumer shutting down cleanly).
#[utoipa::path(
    delete, path = "/v1/services/{name}/instances/{id}", tag = "services",
    params(
        ("name" = String, Path, description = "Service name"),
        ("id" = String, Path, description = "Instance id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "`service_not_found` or `instance_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn deregister(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let service = service(&s, &name)?;
    if service.deregister(&id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(instance_not_found(&name, &id))
    }
}

/// Push delivery of one subscription: backlog, requests in flight,
/// delivered, failed, dead-lettered, the oldest unsettled message's age.
#[utoipa::path(
    get, path = "/v1/subscriptions/{name}/push", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    responses(
        (status = 200, description = "Push statistics", body = Object),
        (status = 404, description = "`subscription_not_found`, or `not_pushed`: the subscription has no push settings", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn push_stats(
    State(s): State<AppState>,
    Name(name): Name,
) -> Result<Json<courier_push::PushStats>, ApiError> {
    s.engine.subscription(&name).await?;
    s.pusher.stats(&name).await?.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_PUSHED,
            format!("subscription {name:?} has no push settings"),
        )
    })
}

/// Gives leased messages back without spending an attempt: the consumer
/// never tried them. Answers like ack.
#[utoipa::path(
    post, path = "/v1/subscriptions/{name}/release", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body = AckBody,
    responses(
        (status = 200, description = "One result per token, in order; look at the outcomes", body = SettleResponse),
        (status = 400, description = "`invalid_argument`: no tokens, or more than 10000", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn release(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(body): JsonBody<AckBody>,
) -> Result<Json<SettleResponse>, ApiError> {
    super::subscriptions::check_tokens(&body.tokens)?;
    let outcomes = s.engine.release(&name, &body.tokens).await?;
    Ok(Json(SettleResponse::new(body.tokens, outcomes)))
}

/// Dead-letters leased messages at once, whatever attempts remain: they can
/// never succeed. Answers like ack.
#[utoipa::path(
    post, path = "/v1/subscriptions/{name}/reject", tag = "subscriptions",
    params(("name" = String, Path, description = "Subscription name")),
    request_body = RejectBody,
    responses(
        (status = 200, description = "One result per token, in order; look at the outcomes", body = SettleResponse),
        (status = 400, description = "`invalid_argument`: no tokens, or more than 10000", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`subscription_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn reject(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(body): JsonBody<RejectBody>,
) -> Result<Json<SettleResponse>, ApiError> {
    super::subscriptions::check_tokens(&body.tokens)?;
    let outcomes = s.engine.reject(&name, &body.tokens, body.error).await?;
    Ok(Json(SettleResponse::new(body.tokens, outcomes)))
}
