//! The reactions example: the system of Courier's design notes, runnable.
//!
//! A user reacts to a post on the [`reaction`] service; the post's author
//! must be notified by the [`notification`] service. In async mode the
//! reaction service writes a transactional outbox that a relay publishes to
//! Courier, and Courier pushes each event to the notification service; in
//! sync mode the reaction service calls the notification service directly.
//! See `examples/reactions/README.md`.

pub mod db;
pub mod event;
pub mod notification;
pub mod problem;
pub mod reaction;

/// Logs to stderr, `RUST_LOG` or `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves when the process gets Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
