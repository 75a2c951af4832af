//! `reaction-service`: the reaction service alone (`--help` for its flags).

use std::time::Duration;

use clap::Parser;
use reactions::reaction::{Config, Mode, ModeSettings};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "The reaction service of Courier's reactions example")]
struct Args {
    /// Address to listen on (port 0 picks one; the address is printed on stdout).
    #[arg(long, env = "REACTIONS_LISTEN", default_value = "127.0.0.1:8081")]
    listen: std::net::SocketAddr,
    /// `sqlite://<file>` (created if missing) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://reactions.db")]
    database_url: String,
    #[arg(long, env = "COURIER_URL", default_value = "http://127.0.0.1:7070")]
    courier_url: String,
    /// The notification service, called directly in sync mode.
    #[arg(
        long,
        env = "NOTIFICATIONS_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    notifications_url: String,
    /// `async` (outbox → Courier → push) or `sync` (direct HTTP call).
    #[arg(long, default_value = "async", value_parser = parse_mode)]
    mode: Mode,
    /// Time limit of the sync call, ms.
    #[arg(long, default_value_t = 1000)]
    sync_timeout_ms: u64,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "async" => Ok(Mode::Async),
        "sync" => Ok(Mode::Sync),
        _ => Err(format!("'{s}': use async or sync")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    reactions::init_tracing();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "reaction service listening on http://{}",
        listener.local_addr()?
    );
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        reactions::shutdown_signal().await;
        signal.cancel();
    });
    let config = Config {
        database_url: args.database_url,
        courier_url: args.courier_url,
        notifications_url: args.notifications_url,
        mode: ModeSettings {
            mode: args.mode,
            sync_timeout_ms: args.sync_timeout_ms,
        },
        relay_interval: Duration::from_millis(250),
    };
    reactions::reaction::serve(config, listener, shutdown).await
}
