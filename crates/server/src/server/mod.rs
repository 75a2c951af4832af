//! The connection loop: HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on one
//! port, all parsed by hyper and answered by one tower stack (the
//! [`crate::edge`] layers around the routes); a header-read deadline for slow
//! clients, a cap on open connections, and graceful shutdown.
//!
//! Shutdown order: stop accepting; tell waiting pulls to give up; close every
//! connection with no request in flight at once (idle keep-alive ones, and
//! ones that sent only part of a request head: they would otherwise hold the
//! exit up until `header_read_timeout`); let every in-flight request finish
//! (bounded by `shutdown_timeout`); then `Engine::shutdown`, which flushes and
//! fsyncs. Whatever was acknowledged to a client was durable before the
//! acknowledgement, so nothing acknowledged is lost.

mod connection;

use std::future::Future;
use std::sync::Arc;

use courier_core::{Engine, Error as EngineError};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::edge::rate_limit::RateLimit;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create declared {what} '{name}': {source}")]
    Declare {
        what: &'static str,
        name: String,
        source: EngineError,
    },
    #[error("cannot start push delivery: {0}")]
    Push(EngineError),
    #[error("engine shutdown failed: {0}")]
    EngineShutdown(EngineError),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

/// How long a push worker's pull waits before it looks at its service again.
const PUSH_PULL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the API on `listener` until `shutdown` completes, then drains and
/// shuts the engine down. Creates the topics and subscriptions the config declares first.
pub async fn run(
    config: Config,
    engine: Arc<dyn Engine>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    declare(&config, engine.as_ref()).await?;
    // Before serving: the engine's fsyncs are recorded from here on.
    crate::metrics::handle();

    let upstreams = courier_upstream::Upstreams::new();
    for svc in &config.services {
        let service = upstreams.define(&svc.name, svc.config.clone());
        for i in &svc.instances {
            let instance = crate::api::instance_from(&i.url, i.id.clone(), i.weight)
                .expect("checked by Config::validate");
            service.add_static(instance);
        }
    }
    let pusher = courier_push::Pusher::new(engine.clone(), upstreams.clone(), PUSH_PULL_WAIT);
    pusher.sync().await.map_err(ServerError::Push)?;
    let state = AppState::new(engine.clone(), pusher.clone(), &config);
    // `Config::validate` has checked the keys; a config that skipped it fails here.
    let auth = crate::auth::Authenticator::from_config(&config.auth)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?
        .map(Arc::new);
    let rate_limit = RateLimit::from_config(&config.server);
    if let Some(limit) = &rate_limit {
        tokio::spawn(limit.clone().sweep(state.draining.clone()));
    }
    let app = api::app(state.clone(), &config.server, rate_limit, auth);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    // The same HTTP/1 settings, for connections whose first bytes tell.
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout);
    let protocols = connection::Protocols {
        auto: builder,
        http1,
        header_read_timeout: config.server.header_read_timeout,
    };
    let tasks = TaskTracker::new();
    let connections = Arc::new(Semaphore::new(config.server.max_connections));

    tracing::info!(addr = %listener.local_addr()?, "courier listening (HTTP/1.1 and h2c)");
    tokio::pin!(shutdown);
    loop {
        // Waiting for a permit before accepting leaves excess clients in the
        // kernel's backlog instead of accepting and dropping them.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: transient; the permit is released and we try again.
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = connection::Connection {
            stream,
            peer,
            app: app.clone(),
            draining: state.draining.clone(),
        };
        let protocols = protocols.clone();
        tasks.spawn(async move {
            connection.serve(&protocols).await;
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    state.draining.cancel();
    let grace = config.server.shutdown_timeout;
    tasks.close();
    // Requests and pushes drain side by side, within the same grace; pushes
    // still running at its end are cut and their messages released.
    let websockets = &state.realtime.connections;
    websockets.close();
    let requests = async {
        let all = async { tokio::join!(tasks.wait(), websockets.wait()) };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "in-flight requests still running after the shutdown timeout; closing anyway"
            );
        }
    };
    tokio::join!(requests, pusher.shutdown(grace));
    upstreams.shutdown();
    tracing::info!("connections closed; flushing the engine");
    engine
        .shutdown()
        .await
        .map_err(ServerError::EngineShutdown)?;
    tracing::info!("engine flushed; bye");
    Ok(())
}

/// Creates declared topics, then subscriptions. Existing ones with a different
/// configuration are kept as they are (there is no update), with a warning.
async fn declare(config: &Config, engine: &dyn Engine) -> Result<(), ServerError> {
    for t in &config.topics {
        match engine.create_topic(&t.name, t.config.clone()).await {
            Ok(_) => {}
            Err(EngineError::TopicExists(_)) => tracing::warn!(
                topic = %t.name,
                "declared topic exists with a different configuration; keeping the existing one"
            ),
            Err(source) => {
                return Err(ServerError::Declare {
                    what: "topic",
                    name: t.name.clone(),
                    source,
                })
            }
        }
    }
    for s in &config.subscriptions {
        match engine.create_subscription(&s.name, s.config.clone()).await {
            Ok(_) => {}
            Err(EngineError::SubscriptionExists(_)) => tracing::warn!(
                subscription = %s.name,
                "declared subscription exists with a different configuration; keeping the existing one"
            ),
            Err(source) => {
                return Err(ServerError::Declare {
                    what: "subscription",
                    name: s.name.clone(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
