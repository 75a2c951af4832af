//! Boots the real server (embedded engine in a temp dir, HTTP on 127.0.0.1:0)
//! inside the test process.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod receiver;

use courier_client::Client;
use courier_core::Engine;
use courier_embedded::{EmbeddedConfig, EmbeddedEngine};
use courier_server::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest any single condition in these tests may take to become true.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub client: Client,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), courier_server::ServerError>>>,
    /// Kept so the data outlives restarts; removed when the test ends.
    pub dir: Arc<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = Config::default();
        config
            .engine
            .set_embedded("data_dir", dir.path().join("data").display().to_string());
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        tweak(&mut config);
        config.validate().expect("test config is valid");
        Self::boot(config, dir).await
    }

    async fn boot(config: Config, dir: Arc<tempfile::TempDir>) -> Self {
        let settings: EmbeddedConfig = config.engine.embedded.clone().try_into().unwrap();
        let engine: Arc<dyn Engine> = EmbeddedEngine::open(settings).await.expect("engine opens");
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(courier_server::run(
            config.clone(),
            engine,
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        let url = format!("http://{addr}");
        let client = Client::builder(&url)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self {
            addr,
            url,
            client,
            config,
            stop: Some(stop),
            task: Some(task),
            dir,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.config.engine.embedded["data_dir"].as_str().unwrap())
    }

    /// Graceful shutdown; fails the test if it does not complete in time.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("server shuts down in time")
                .expect("server task did not panic")
                .expect("server shut down cleanly");
        }
    }

    /// Stops, then starts a new server on the same data directory.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let mut config = self.config.clone();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        Self::boot(config, self.dir.clone()).await
    }

    /// Stops, then starts a new server on the same data directory and the
    /// same port, as clients that reconnect to one address expect.
    pub async fn restart_on_same_port(mut self) -> Self {
        self.stop().await;
        let mut config = self.config.clone();
        config.server.listen = self.addr;
        Self::boot(config, self.dir.clone()).await
    }
}

/// Polls `check` until it returns `Some`, failing the test at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub mod realtime;
