//! `reactions-demo`: the whole reactions example with one command.
//!
//! ```sh
//! cargo run --release -p reactions-demo      # then open http://127.0.0.1:8080
//! ```

use std::path::PathBuf;

use clap::Parser;
use reactions_demo::page::{self, PageConfig};
use reactions_demo::{seed, Options, System};

#[derive(Parser)]
#[command(about = "Runs Courier, the reaction and notification services and the demo page")]
struct Args {
    /// Address of the web page.
    #[arg(long, env = "REACTIONS_DEMO_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Keep Courier's data and the databases here (default: a temporary
    /// directory, removed at exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The courier binary (default: next to this one, target/, or built).
    #[arg(long, env = "COURIER_BIN")]
    courier_bin: Option<PathBuf>,
    /// PostgreSQL URL for the reaction service (default: SQLite in the data dir).
    #[arg(long, env = "REACTIONS_DATABASE_URL")]
    reactions_db: Option<String>,
    /// PostgreSQL URL for the notification service (default: SQLite in the data dir).
    #[arg(long, env = "NOTIFICATIONS_DATABASE_URL")]
    notifications_db: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    reactions::init_tracing();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let origins = vec![
        format!("http://{addr}"),
        format!("http://localhost:{}", addr.port()),
    ];
    let system = System::start(Options {
        data_dir: args.data_dir,
        courier_bin: args.courier_bin,
        reactions_db: args.reactions_db,
        notifications_db: args.notifications_db,
        allowed_origins: origins,
        courier_fsync: true,
        ..Options::default()
    })
    .await?;
    seed::seed(&system.reactions_url).await?;
    let app = page::router(PageConfig {
        reactions_url: system.reactions_url.clone(),
        notifications_url: system.notifications_url.clone(),
        courier_url: system.courier_url.clone(),
    });
    println!();
    println!("  Courier reactions demo");
    println!("  ──────────────────────");
    println!("  web page              http://{addr}");
    println!("  reaction service      {}", system.reactions_url);
    println!("  notification service  {}", system.notifications_url);
    println!("  courier               {}", system.courier_url);
    println!("  data                  {}", system.data_dir.display());
    println!();
    println!("  Ctrl-C stops everything.");
    axum::serve(listener, app)
        .with_graceful_shutdown(reactions::shutdown_signal())
        .await?;
    system.stop().await
}
