use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use courier_api::{schema, Problem, TopicList};
use courier_core::{Error as EngineError, TopicConfig, TopicInfo};
use serde::Deserialize;

use super::AppState;
use crate::error::ApiError;
use crate::extract::{JsonBody, Name, QueryParams};

/// Creates a topic, or confirms an identical one exists.
#[utoipa::path(
    put, path = "/v1/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "Topic name: 1-200 of `A-Z a-z 0-9 . _ -`")),
    request_body(content = schema::TopicConfig, description = "Settings; an empty body means the defaults"),
    responses(
        (status = 201, description = "Created", body = schema::TopicInfo),
        (status = 200, description = "An identical topic already exists", body = schema::TopicInfo),
        (status = 409, description = "`topic_exists`: it exists with a different configuration", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "`unsupported_by_engine`: a retention limit or dedup window this engine does not keep", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_topic(
    State(s): State<AppState>,
    Name(name): Name,
    JsonBody(config): JsonBody<TopicConfig>,
) -> Result<(StatusCode, Json<TopicInfo>), ApiError> {
    // Racing creators may both see 201; the engine keeps the outcome consistent.
    let existed = s.engine.topic(&name).await.is_ok();
    let info = s.engine.create_topic(&name, config).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(info)))
}

#[utoipa::path(
    get, path = "/v1/topics", tag = "topics",
    responses((status = 200, description = "Every topic", body = TopicList))
)]
pub(crate) async fn list_topics(State(s): State<AppState>) -> Result<Json<TopicList>, ApiError> {
    let topics = s.engine.list_topics().await?;
    Ok(Json(TopicList { topics }))
}

#[utoipa::path(
    get, path = "/v1/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The topic", body = schema::TopicInfo),
        (status = 404, description = "`topic_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_topic(
    State(s): State<AppState>,
    Name(name): Name,
) -> Result<Json<TopicInfo>, ApiError> {
    Ok(Json(s.engine.topic(&name).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteTopic {
    /// Also delete the subscriptions that read the topic, with their state
    /// (default false: a topic with subscriptions is refused with `topic_in_use`).
    force: Option<bool>,
}

/// Deletes a topic and its messages. Refused while subscriptions read it,
/// unless `force=true`, which deletes those subscriptions first.
#[utoipa::path(
    delete, path = "/v1/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "Topic name"), DeleteTopic),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`topic_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`topic_in_use`: subscriptions still read it (without `force`, or one was created meanwhile)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_topic(
    State(s): State<AppState>,
    Name(name): Name,
    QueryParams(q): QueryParams<DeleteTopic>,
) -> Result<StatusCode, ApiError> {
    if q.force.unwrap_or(false) {
        // The topic must exist before anything is deleted on its behalf.
        s.engine.topic(&name).await?;
        for sub in s.engine.list_subscriptions().await? {
            if sub.config.topic != name {
                continue;
            }
            match s.engine.delete_subscription(&sub.name).await {
                // Deleted meanwhile by someone else: the goal is reached.
                Ok(()) | Err(EngineError::SubscriptionNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    s.engine.delete_topic(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
