//! The notification service: receives `reaction.created` events from a
//! Courier push subscription (or, in sync mode, straight from the reaction
//! service), stores one notification per event, publishes it to the post
//! author's real-time channel and serves the notification list.
//!
//! **Idempotent**: `event_id` is unique in its table. A redelivered event
//! (Courier delivers at least once) finds its notification there, publishes
//! it to the real-time channel again under the same Courier id (deduplicated
//! there too) and is acked.

pub mod api;
pub mod faults;
pub mod registration;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use courier_client::push::PushVerifier;
use courier_client::Client;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, Migrations};
use faults::Faults;

pub(crate) const MIGRATIONS: Migrations = Migrations {
    sqlite: &[(
        1,
        "init",
        include_str!("../../migrations/notifications/sqlite/0001_init.sql"),
    )],
    postgres: &[(
        1,
        "init",
        include_str!("../../migrations/notifications/postgres/0001_init.sql"),
    )],
};

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub courier_url: String,
    /// The URL Courier pushes to; `http://<listen address>` when `None`.
    pub public_url: Option<String>,
    /// The instance id in Courier's `notifications` service.
    pub instance_id: String,
    /// The Standard Webhooks secret of the push subscription.
    pub push_secret: String,
    pub heartbeat_interval: Duration,
}

pub(crate) struct State {
    pub db: Db,
    pub courier: Client,
    pub verifier: PushVerifier,
    pub faults: Faults,
    pub stats: Mutex<Stats>,
}

/// Counters and the end-to-end delay histogram since the last reset
/// (`POST /v1/stats/reset`): what the experiment reads.
pub(crate) struct Stats {
    pub stored: u64,
    pub duplicates: u64,
    /// ms from `reaction.created_at` (accepted) to the notification stored.
    pub delay: hdrhistogram::Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            stored: 0,
            duplicates: 0,
            delay: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 3)
                .expect("valid histogram bounds"),
        }
    }
}

/// Serves the API on `listener`, keeps the instance registered in Courier,
/// until `shutdown`; then leaves the service.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = Db::connect(&config.database_url, &MIGRATIONS).await?;
    let courier = Client::builder(&config.courier_url)
        .timeout(Duration::from_secs(10))
        .build()?;
    let verifier = PushVerifier::new(&config.push_secret)
        .map_err(|e| anyhow::anyhow!("invalid push secret: {e}"))?;
    let url = match &config.public_url {
        Some(url) => url.clone(),
        None => format!("http://{}", listener.local_addr()?),
    };
    let state = Arc::new(State {
        db,
        courier: courier.clone(),
        verifier,
        faults: Faults::default(),
        stats: Mutex::new(Stats::new()),
    });
    let app = api::router(state);
    let registration = tokio::spawn(registration::run(
        courier,
        registration::Registration {
            url,
            instance_id: config.instance_id.clone(),
            secret: config.push_secret.clone(),
            heartbeat: config.heartbeat_interval,
        },
        shutdown.clone(),
    ));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    registration.await?;
    Ok(())
}
