//! The reaction service's HTTP API.
//!
//! | route | |
//! |---|---|
//! | `POST /v1/users` `{"name"}` | create a user |
//! | `GET /v1/users` | list users |
//! | `POST /v1/posts` `{"author_id", "text"}` | create a post |
//! | `GET /v1/posts`, `GET /v1/posts/{id}` | posts with their reaction counts |
//! | `POST /v1/posts/{id}/reactions` `{"user_id", "kind"}` | react: 201 new, 200 already there |
//! | `DELETE /v1/posts/{id}/reactions/{kind}?user_id=` | undo: 204, or 404 |
//! | `GET /v1/posts/{id}/reactions` | the reactions and counts of a post |
//! | `GET`/`PUT /v1/mode` `{"mode": "async"\|"sync", "sync_timeout_ms"}` | the switch |
//! | `GET /v1/outbox` | pending and sent outbox rows |

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use tower_http::cors::CorsLayer;

use super::store::{self, Inserted};
use super::{Mode, ModeSettings, State};
use crate::event::{ReactionCreated, ReactionKind};
use crate::problem::{ApiResult, Json, Problem};

type S = AxumState<Arc<State>>;

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/users", post(create_user).get(list_users))
        .route("/v1/posts", post(create_post).get(list_posts))
        .route("/v1/posts/{id}", get(get_post))
        .route("/v1/posts/{id}/reactions", post(react).get(list_reactions))
        .route("/v1/posts/{id}/reactions/{kind}", delete(undo))
        .route("/v1/mode", get(get_mode).put(put_mode))
        .route("/v1/outbox", get(outbox))
        .fallback(|| async {
            Problem::not_found("route_not_found", "no such route on the reaction service")
        })
        // The demo page is served from another origin; this API has no cookies.
        .layer(CorsLayer::permissive())
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
}

async fn create_user(s: S, Json(body): Json<NewUser>) -> ApiResult<Response> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(Problem::unprocessable(
            "invalid_name",
            "name must be 1 to 64 characters",
        ));
    }
    let user = store::create_user(&s.db, name).await?;
    Ok((StatusCode::CREATED, axum::Json(user)).into_response())
}

async fn list_users(s: S) -> ApiResult<Response> {
    Ok(axum::Json(json!({ "users": store::users(&s.db).await? })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPost {
    author_id: String,
    text: String,
}

async fn create_post(s: S, Json(body): Json<NewPost>) -> ApiResult<Response> {
    let text = body.text.trim();
    if text.is_empty() || text.chars().count() > 500 {
        return Err(Problem::unprocessable(
            "invalid_text",
            "text must be 1 to 500 characters",
        ));
    }
    let author = known_user(&s, &body.author_id, "author_id").await?;
    let post = store::create_post(&s.db, &author, text).await?;
    Ok((StatusCode::CREATED, axum::Json(post)).into_response())
}

async fn list_posts(s: S) -> ApiResult<Response> {
    Ok(axum::Json(json!({ "posts": store::posts(&s.db).await? })).into_response())
}

async fn get_post(s: S, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(axum::Json(known_post(&s, &id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewReaction {
    user_id: String,
    kind: String,
}

async fn react(s: S, Path(id): Path<String>, Json(body): Json<NewReaction>) -> ApiResult<Response> {
    let kind = kind_of(&body.kind)?;
    let (post, user) = store::reaction_target(&s.db.pool, &id, &body.user_id).await?;
    let post = post
        .ok_or_else(|| Problem::not_found("post_not_found", format!("no post with id '{id}'")))?;
    let user = user.ok_or_else(|| {
        Problem::unprocessable(
            "unknown_user",
            format!("user_id: no user with id '{}'", body.user_id),
        )
    })?;
    let settings = *s.mode.read();
    let outbox = settings.mode == Mode::Async;
    match store::insert_reaction(&s.db, &post, &user, kind, outbox).await? {
        Inserted::Existing(reaction) => Ok((StatusCode::OK, axum::Json(reaction)).into_response()),
        Inserted::New(reaction, event) => {
            if outbox {
                s.outbox_written.notify_one();
            } else if let Err(problem) = notify_now(&s, &event, settings).await {
                // The user's request fails, so the reaction must not stay.
                store::delete_reaction_by_id(&s.db, &reaction.id).await?;
                return Err(problem);
            }
            Ok((StatusCode::CREATED, axum::Json(reaction)).into_response())
        }
    }
}

/// Sync mode: the notification service's answer is part of the user's request.
async fn notify_now(
    s: &State,
    event: &ReactionCreated,
    settings: ModeSettings,
) -> Result<(), Problem> {
    let timeout = Duration::from_millis(settings.sync_timeout_ms);
    let result = s
        .http
        .post(format!("{}/v1/notify", s.notifications_url))
        .timeout(timeout)
        .json(event)
        .send()
        .await;
    match result {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "notification_failed",
            format!(
                "sync mode: the notification service answered {}; the reaction was not kept",
                r.status()
            ),
        )),
        Err(e) if e.is_timeout() => Err(Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "notification_timeout",
            format!(
                "sync mode: the notification service did not answer within {} ms; the reaction was not kept",
                settings.sync_timeout_ms
            ),
        )),
        Err(e) => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "notification_unreachable",
            format!("sync mode: cannot reach the notification service ({e}); the reaction was not kept"),
        )),
    }
}

#[derive(Deserialize)]
struct UndoQuery {
    user_id: Option<String>,
}

async fn undo(
    s: S,
    Path((id, kind)): Path<(String, String)>,
    Query(q): Query<UndoQuery>,
) -> ApiResult<Response> {
    let kind = kind_of(&kind)?;
    let Some(user_id) = q.user_id.filter(|u| !u.is_empty()) else {
        return Err(Problem::bad_request(
            "missing_user_id",
            "undo needs ?user_id=<the user who reacted>",
        ));
    };
    known_post(&s, &id).await?;
    if store::delete_reaction(&s.db, &id, &user_id, kind).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found(
            "reaction_not_found",
            format!(
                "user {user_id} has no {} reaction on post {id}",
                kind.as_str()
            ),
        ))
    }
}

async fn list_reactions(s: S, Path(id): Path<String>) -> ApiResult<Response> {
    let post = known_post(&s, &id).await?;
    let reactions = store::reactions_of(&s.db, &id).await?;
    Ok(
        axum::Json(json!({ "post_id": id, "counts": post.counts, "reactions": reactions }))
            .into_response(),
    )
}

async fn get_mode(s: S) -> Response {
    axum::Json(*s.mode.read()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeChange {
    mode: Option<Mode>,
    sync_timeout_ms: Option<u64>,
}

async fn put_mode(s: S, Json(body): Json<ModeChange>) -> ApiResult<Response> {
    if let Some(ms) = body.sync_timeout_ms {
        if !(1..=60_000).contains(&ms) {
            return Err(Problem::unprocessable(
                "invalid_timeout",
                "sync_timeout_ms must be 1 to 60000",
            ));
        }
    }
    let mut mode = s.mode.write();
    if let Some(m) = body.mode {
        mode.mode = m;
    }
    if let Some(ms) = body.sync_timeout_ms {
        mode.sync_timeout_ms = ms;
    }
    tracing::info!(mode = ?mode.mode, sync_timeout_ms = mode.sync_timeout_ms, "mode changed");
    Ok(axum::Json(*mode).into_response())
}

async fn outbox(s: S) -> ApiResult<Response> {
    Ok(axum::Json(store::outbox_stats(&s.db).await?).into_response())
}

fn kind_of(kind: &str) -> Result<ReactionKind, Problem> {
    ReactionKind::parse(kind).ok_or_else(|| {
        Problem::unprocessable(
            "invalid_kind",
            format!("unknown reaction kind '{kind}': use like, love or laugh"),
        )
    })
}

async fn known_post(s: &State, id: &str) -> Result<store::Post, Problem> {
    store::post(&s.db.pool, id)
        .await?
        .ok_or_else(|| Problem::not_found("post_not_found", format!("no post with id '{id}'")))
}

async fn known_user(s: &State, id: &str, field: &str) -> Result<store::User, Problem> {
    store::user(&s.db.pool, id).await?.ok_or_else(|| {
        Problem::unprocessable("unknown_user", format!("{field}: no user with id '{id}'"))
    })
}
