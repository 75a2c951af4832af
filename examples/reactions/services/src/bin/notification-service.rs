//! `notification-service`: the notification service alone (`--help` for its flags).

use std::time::Duration;

use clap::Parser;
use reactions::event::DEFAULT_PUSH_SECRET;
use reactions::notification::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "The notification service of Courier's reactions example")]
struct Args {
    /// Address to listen on (port 0 picks one; the address is printed on stdout).
    #[arg(long, env = "NOTIFICATIONS_LISTEN", default_value = "127.0.0.1:8082")]
    listen: std::net::SocketAddr,
    /// `sqlite://<file>` (created if missing) or `postgres://...`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://notifications.db"
    )]
    database_url: String,
    #[arg(long, env = "COURIER_URL", default_value = "http://127.0.0.1:7070")]
    courier_url: String,
    /// The URL Courier pushes to; default `http://<listen address>`.
    #[arg(long, env = "NOTIFICATIONS_PUBLIC_URL")]
    public_url: Option<String>,
    /// This instance's id in Courier's `notifications` service.
    #[arg(
        long,
        env = "NOTIFICATIONS_INSTANCE_ID",
        default_value = "notifications-1"
    )]
    instance_id: String,
    /// The push subscription's Standard Webhooks secret.
    #[arg(long, env = "NOTIFICATIONS_PUSH_SECRET", default_value = DEFAULT_PUSH_SECRET)]
    push_secret: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    reactions::init_tracing();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "notification service listening on http://{}",
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
        public_url: args.public_url,
        instance_id: args.instance_id,
        push_secret: args.push_secret,
        heartbeat_interval: Duration::from_secs(2),
    };
    reactions::notification::serve(config, listener, shutdown).await
}
