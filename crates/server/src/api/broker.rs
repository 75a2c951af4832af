use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use courier_api::{schema, Health, Problem};
use courier_core::{Capabilities, Stats};

use super::AppState;
use crate::error::ApiError;

#[utoipa::path(
    get, path = "/v1/stats", tag = "broker",
    responses((status = 200, description = "Broker-wide counters", body = schema::Stats))
)]
pub(crate) async fn stats(State(s): State<AppState>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(s.engine.stats().await?))
}

/// What the broker's engine supports. Requests that need a feature not listed
/// are refused with 501 `unsupported_by_engine`.
#[utoipa::path(
    get, path = "/v1/capabilities", tag = "broker",
    responses((status = 200, description = "The engine's name, features and limits", body = schema::Capabilities))
)]
pub(crate) async fn capabilities(State(s): State<AppState>) -> Json<Capabilities> {
    Json(s.engine.capabilities())
}

/// Liveness: the process answers HTTP.
#[utoipa::path(
    get, path = "/healthz", tag = "broker",
    responses((status = 200, description = "Alive", body = Health))
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the broker takes work; 503 once shutdown has begun.
#[utoipa::path(
    get, path = "/readyz", tag = "broker",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "`shutting_down`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn readyz(State(s): State<AppState>) -> Result<Json<Health>, ApiError> {
    if s.draining.is_cancelled() {
        return Err(courier_core::Error::ShuttingDown.into());
    }
    Ok(Json(Health {
        status: "ok".into(),
    }))
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(
    get, path = "/openapi.json", tag = "broker",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
pub(crate) async fn openapi_document(State(s): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi_json.clone(),
    )
}
