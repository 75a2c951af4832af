//! The reaction service: users, posts and reactions over REST, in its own
//! database. A new reaction must reach the post's author as a notification,
//! in one of two [`Mode`]s switchable at run time:
//!
//! - **async** (default): the reaction row and an outbox row commit in one
//!   transaction and the user gets the answer at once; the [`relay`] publishes
//!   pending outbox rows to Courier and marks them sent.
//! - **sync**: the handler calls the notification service over HTTP with a
//!   timeout, and fails the user's request if that call fails.

pub mod api;
pub mod relay;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, Migrations};

pub(crate) const MIGRATIONS: Migrations = Migrations {
    sqlite: &[(
        1,
        "init",
        include_str!("../../migrations/reactions/sqlite/0001_init.sql"),
    )],
    postgres: &[(
        1,
        "init",
        include_str!("../../migrations/reactions/postgres/0001_init.sql"),
    )],
};

/// How a new reaction reaches the notification service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Outbox → Courier → push: the user waits for one local commit.
    #[default]
    Async,
    /// A direct HTTP call inside the user's request.
    Sync,
}

/// The run-time switch (`GET`/`PUT /v1/mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeSettings {
    pub mode: Mode,
    /// Time limit of the synchronous call, ms.
    pub sync_timeout_ms: u64,
}

impl Default for ModeSettings {
    fn default() -> Self {
        Self {
            mode: Mode::Async,
            sync_timeout_ms: 1000,
        }
    }
}

/// Everything the reaction service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite://<file>` or `postgres://...`.
    pub database_url: String,
    /// Courier's base URL.
    pub courier_url: String,
    /// The notification service's base URL, for sync mode.
    pub notifications_url: String,
    pub mode: ModeSettings,
    /// How often the relay looks for pending outbox rows when nothing woke it.
    pub relay_interval: Duration,
}

/// A test hook: `REACTIONS_FAULT_RELAY_EXIT=before_publish` makes the process
/// exit (code 86) when the relay has pending rows and has not published them
/// yet, i.e. after the reaction committed; `after_publish` exits (code 87)
/// after Courier accepted them but before they are marked sent.
pub const FAULT_ENV: &str = "REACTIONS_FAULT_RELAY_EXIT";

pub(crate) struct State {
    pub db: Db,
    pub mode: RwLock<ModeSettings>,
    pub http: reqwest::Client,
    pub notifications_url: String,
    /// Wakes the relay after a commit, so an event does not wait for the poll.
    pub outbox_written: Notify,
}

/// Serves the API on `listener` and runs the relay until `shutdown`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = Db::connect(&config.database_url, &MIGRATIONS).await?;
    let courier = courier_client::Client::builder(&config.courier_url)
        .timeout(Duration::from_secs(10))
        .build()?;
    let state = Arc::new(State {
        db,
        mode: RwLock::new(config.mode),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
        notifications_url: config.notifications_url.trim_end_matches('/').to_owned(),
        outbox_written: Notify::new(),
    });
    let relay = tokio::spawn(relay::run(
        state.clone(),
        courier,
        config.relay_interval,
        shutdown.clone(),
    ));
    let app = api::router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    relay.await??;
    Ok(())
}
