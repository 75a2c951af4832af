//! What Courier serves to browsers besides the API: the JavaScript client
//! (`GET /js/courier.js`, kept in the repository at `clients/js/courier.js`)
//! and the demo page that uses it (`GET /demo`, `clients/demo/index.html`).
//! Both are compiled into the binary, so a server needs no files beside it.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::api::AppState;

const COURIER_JS: &str = include_str!("../../../../clients/js/courier.js");
const DEMO_HTML: &str = include_str!("../../../../clients/demo/index.html");

/// `/js/courier.js` and `/demo`: outside the OpenAPI document (they are not API).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/js/courier.js", get(courier_js))
        .route("/demo", get(demo))
}

async fn courier_js() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            // Revalidated each time: a server upgrade serves the new client.
            (CACHE_CONTROL, "no-cache"),
        ],
        COURIER_JS,
    )
}

async fn demo() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        DEMO_HTML,
    )
}
