//! The reactions example on one machine: Courier (the workspace's `courier`
//! binary, as a child process), the reaction and notification services (in
//! this process, each on its own Tokio runtime so neither steals the other's
//! threads), seed data, and the web page.
//!
//! `reactions-demo` (the binary) and the experiment (`reactions-experiment`)
//! both start the system through [`System::start`].

pub mod page;
pub mod seed;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use reactions::reaction::ModeSettings;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// What to start, and where.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where Courier's data, the SQLite files and logs go; a temporary
    /// directory (removed at exit) when `None`.
    pub data_dir: Option<PathBuf>,
    /// The `courier` binary; found or built when `None` (see [`courier_binary`]).
    pub courier_bin: Option<PathBuf>,
    /// Courier's listen address; a free port when `None`.
    pub courier_listen: Option<SocketAddr>,
    pub reactions_listen: Option<SocketAddr>,
    pub notifications_listen: Option<SocketAddr>,
    /// Database URLs; SQLite files in the data directory when `None`.
    pub reactions_db: Option<String>,
    pub notifications_db: Option<String>,
    /// Web origins that may use Courier from a browser (the page's).
    pub allowed_origins: Vec<String>,
    /// Whether Courier fsyncs each publish (its default, and the point of a
    /// durable broker); `false` only for quick local runs.
    pub courier_fsync: bool,
}

/// The running system. [`System::stop`] ends it; dropping it kills Courier.
pub struct System {
    pub courier_url: String,
    pub reactions_url: String,
    pub notifications_url: String,
    pub data_dir: PathBuf,
    courier: Child,
    shutdown: CancellationToken,
    services: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    _temp: Option<tempfile::TempDir>,
}

impl System {
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let (temp, data_dir) = match &options.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (None, dir.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("reactions-demo-")
                    .tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let bin = match &options.courier_bin {
            Some(b) => b.clone(),
            None => courier_binary()?,
        };
        let (courier, courier_url) = start_courier(&bin, &data_dir, &options).await?;
        let shutdown = CancellationToken::new();
        let any = "127.0.0.1:0".parse().expect("address");
        let notifications =
            std::net::TcpListener::bind(options.notifications_listen.unwrap_or(any))
                .context("cannot listen for the notification service")?;
        let reactions = std::net::TcpListener::bind(options.reactions_listen.unwrap_or(any))
            .context("cannot listen for the reaction service")?;
        let notifications_url = format!("http://{}", notifications.local_addr()?);
        let reactions_url = format!("http://{}", reactions.local_addr()?);
        let sqlite = |name: &str| reactions::db::sqlite_url(&data_dir.join(name));
        let n_config = reactions::notification::Config {
            database_url: options
                .notifications_db
                .clone()
                .unwrap_or_else(|| sqlite("notifications.db")),
            courier_url: courier_url.clone(),
            public_url: Some(notifications_url.clone()),
            instance_id: "notifications-1".into(),
            push_secret: reactions::event::DEFAULT_PUSH_SECRET.into(),
            heartbeat_interval: Duration::from_secs(2),
        };
        let r_config = reactions::reaction::Config {
            database_url: options
                .reactions_db
                .clone()
                .unwrap_or_else(|| sqlite("reactions.db")),
            courier_url: courier_url.clone(),
            notifications_url: notifications_url.clone(),
            mode: ModeSettings::default(),
            relay_interval: Duration::from_millis(250),
        };
        let services = vec![
            on_own_runtime(
                "notifications",
                notifications,
                shutdown.clone(),
                move |l, s| reactions::notification::serve(n_config, l, s),
            )?,
            on_own_runtime("reactions", reactions, shutdown.clone(), move |l, s| {
                reactions::reaction::serve(r_config, l, s)
            })?,
        ];
        let system = Self {
            courier_url,
            reactions_url,
            notifications_url,
            data_dir,
            courier,
            shutdown,
            services,
            _temp: temp,
        };
        system.wait_ready().await?;
        Ok(system)
    }

    /// Waits until both services answer and the notification service is a
    /// registered instance of Courier's `notifications` service.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ok = async {
                for url in [&self.reactions_url, &self.notifications_url] {
                    http.get(format!("{url}/healthz"))
                        .send()
                        .await
                        .ok()?
                        .error_for_status()
                        .ok()?;
                }
                let service: serde_json::Value = http
                    .get(format!("{}/v1/services/notifications", self.courier_url))
                    .send()
                    .await
                    .ok()?
                    .error_for_status()
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let n = service["stats"]["instances"]
                    .as_array()
                    .map_or(0, |a| a.len());
                (n > 0).then_some(())
            }
            .await;
            if ok.is_some() {
                return Ok(());
            }
            if self.services.iter().any(|t| t.is_finished()) {
                bail!("a service stopped while starting (see the log above)");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the system did not become ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the services (the notification service leaves Courier's
    /// service), then Courier.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for t in std::mem::take(&mut self.services) {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        terminate(&mut self.courier).await;
        Ok(())
    }
}

/// Runs one service on a runtime of its own, on its own thread.
fn on_own_runtime<F, Fut>(
    name: &str,
    listener: std::net::TcpListener,
    shutdown: CancellationToken,
    serve: F,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>>
where
    F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    listener.set_nonblocking(true)?;
    let name = name.to_owned();
    Ok(std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(name.clone())
                .enable_all()
                .build()?;
            let result = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve(listener, shutdown).await
            });
            if let Err(e) = &result {
                tracing::error!(service = %name, error = format!("{e:#}"), "service stopped");
            }
            result
        })?)
}

async fn start_courier(
    bin: &Path,
    data_dir: &Path,
    options: &Options,
) -> anyhow::Result<(Child, String)> {
    let listen = options
        .courier_listen
        .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
    let origins: Vec<String> = options
        .allowed_origins
        .iter()
        .map(|o| format!("{o:?}"))
        .collect();
    let config = format!(
        "# Written by reactions-demo.\n[server]\nlisten = \"{listen}\"\nallowed_origins = [{}]\n\n\
         [engine.embedded]\ndata_dir = {:?}\nfsync = {}\n\n[log]\nlevel = \"warn\"\n",
        origins.join(", "),
        data_dir.join("courier").display().to_string(),
        options.courier_fsync,
    );
    let config_path = data_dir.join("courier.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(data_dir.join("courier.log"))?;
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("courier listening on ") {
                return Ok(url.trim().to_owned());
            }
        }
        bail!(
            "courier exited before listening; see {}",
            data_dir.join("courier.log").display()
        )
    })
    .await
    .context("courier did not start within 30 s")??;
    // Keep reading so a full pipe never blocks Courier.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}

/// SIGTERM (Courier flushes and stops), SIGKILL if it takes over 10 s.
async fn terminate(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// The `courier` binary: `$COURIER_BIN`, else next to this executable, else
/// in the workspace's `target/release` or `target/debug`, else built with
/// `cargo build --release -p courier`.
pub fn courier_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("COURIER_BIN") {
        return Ok(bin.into());
    }
    let name = format!("courier{}", std::env::consts::EXE_SUFFIX);
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(&name));
            // Test and example binaries live one level further down (deps/).
            if let Some(up) = dir.parent() {
                candidates.push(up.join(&name));
            }
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    for profile in ["release", "debug"] {
        candidates.push(target.join(profile).join(&name));
    }
    if let Some(found) = candidates.into_iter().find(|c| c.is_file()) {
        return Ok(found);
    }
    eprintln!(
        "reactions-demo: no courier binary found; building it (cargo build --release -p courier)"
    );
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "courier"])
            .current_dir(&workspace)
            .status()
            .context("cannot run cargo to build courier")?;
    if !status.success() {
        bail!("building courier failed");
    }
    Ok(target.join("release").join(&name))
}
