//! The web page: one HTML file (no external assets) and `/config.json`,
//! which tells the page where the services and Courier are. The page talks to
//! them directly (the services allow any origin; Courier allows the page's
//! origin through `allowed_origins`).

use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

const PAGE: &str = include_str!("page.html");

#[derive(Debug, Clone, Serialize)]
pub struct PageConfig {
    pub reactions_url: String,
    pub notifications_url: String,
    pub courier_url: String,
}

pub fn router(config: PageConfig) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/config.json",
            get(move || {
                let config = config.clone();
                async move { Json(config).into_response() }
            }),
        )
}
