//! The real processes on free ports: the workspace's `courier` binary and
//! this package's two service binaries, SQLite files in a temp dir.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A child process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd` and waits for its "... listening on http://addr" line.
    fn start(mut cmd: Command, marker: &str) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let prefix = marker.to_owned();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(url) = line.strip_prefix(&prefix) {
                        let _ = tx.send(url.trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{cmd:?} did not print '{marker}'"));
        Proc { child, url }
    }

    /// Waits for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the process did not exit within {within:?}");
    }
}

/// The `courier` binary: `$COURIER_BIN`, else `target/<profile>/courier`,
/// else built with `cargo build -p courier`.
pub fn courier_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("COURIER_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/system-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = profile_dir.join(format!("courier{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-p", "courier"])
            .current_dir(workspace);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        assert!(
            build.status().unwrap().success(),
            "cargo build -p courier failed"
        );
    }
    bin
}

pub struct System {
    pub dir: tempfile::TempDir,
    pub courier: Proc,
    pub notifications: Option<Proc>,
    pub reactions: Option<Proc>,
    pub reactions_db: String,
    pub notifications_db: String,
    pub http: reqwest::Client,
}

impl System {
    /// Courier and both services on SQLite.
    pub async fn start() -> System {
        let dir = tempfile::tempdir().unwrap();
        let r = format!("sqlite://{}", dir.path().join("reactions.db").display());
        let n = format!("sqlite://{}", dir.path().join("notifications.db").display());
        Self::start_with(dir, r, n).await
    }

    pub async fn start_with(
        dir: tempfile::TempDir,
        reactions_db: String,
        notifications_db: String,
    ) -> System {
        let config = dir.path().join("courier.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[engine.embedded]\ndata_dir = {:?}\nfsync = false\n[log]\nlevel = \"warn\"\n",
                dir.path().join("courier").display().to_string()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(courier_bin());
        cmd.arg("serve").arg("--config").arg(&config);
        let courier = Proc::start(cmd, "courier listening on ");
        let mut system = System {
            dir,
            courier,
            notifications: None,
            reactions: None,
            reactions_db,
            notifications_db,
            http: reqwest::Client::new(),
        };
        system.start_notifications();
        system.start_reactions(None);
        system.wait_registered().await;
        system
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .unwrap()
    }

    pub fn start_notifications(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_notification-service"));
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(["--courier-url", &self.courier.url])
            .args(["--database-url", &self.notifications_db])
            .env("RUST_LOG", "warn")
            .stderr(self.log("notifications.log"));
        self.notifications = Some(Proc::start(cmd, "notification service listening on "));
    }

    /// Starts (or restarts) the reaction service; `fault` sets the relay's
    /// exit hook (`before_publish`, `after_publish`).
    pub fn start_reactions(&mut self, fault: Option<&str>) {
        self.reactions = None;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reaction-service"));
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(["--courier-url", &self.courier.url])
            .args(["--notifications-url", &self.n()])
            .args(["--database-url", &self.reactions_db])
            .env("RUST_LOG", "warn")
            .env_remove(reactions::reaction::FAULT_ENV)
            .stderr(self.log("reactions.log"));
        if let Some(fault) = fault {
            cmd.env(reactions::reaction::FAULT_ENV, fault);
        }
        self.reactions = Some(Proc::start(cmd, "reaction service listening on "));
    }

    pub fn r(&self) -> String {
        self.reactions
            .as_ref()
            .expect("reaction service running")
            .url
            .clone()
    }

    pub fn n(&self) -> String {
        self.notifications
            .as_ref()
            .expect("notification service running")
            .url
            .clone()
    }

    pub fn c(&self) -> &str {
        &self.courier.url
    }

    async fn wait_registered(&self) {
        eventually("the notification service registers in Courier", || async {
            let v = self
                .get(&format!("{}/v1/services/notifications", self.c()))
                .await
                .ok()?;
            let n = v["stats"]["instances"].as_array()?.len();
            (n > 0).then_some(())
        })
        .await;
    }

    pub async fn get(&self, url: &str) -> Result<Value, String> {
        let r = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("{url}: {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    /// Sends JSON, answers (status, body as JSON or Null).
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn user(&self, name: &str) -> String {
        let (s, v) = self
            .send(
                reqwest::Method::POST,
                &format!("{}/v1/users", self.r()),
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    pub async fn post(&self, author: &str, text: &str) -> String {
        let (s, v) = self
            .send(
                reqwest::Method::POST,
                &format!("{}/v1/posts", self.r()),
                Some(json!({ "author_id": author, "text": text })),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    /// POST a reaction; (status, body).
    pub async fn react(&self, post: &str, user: &str, kind: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            &format!("{}/v1/posts/{post}/reactions", self.r()),
            Some(json!({ "user_id": user, "kind": kind })),
        )
        .await
    }

    pub async fn notifications(&self, user: &str) -> Value {
        self.get(&format!(
            "{}/v1/users/{user}/notifications?limit=500",
            self.n()
        ))
        .await
        .unwrap()
    }

    pub async fn faults(&self, change: Value) {
        let (s, v) = self
            .send(
                reqwest::Method::PUT,
                &format!("{}/v1/faults", self.n()),
                Some(change),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
}

/// Polls `check` until it gives a value, for up to 30 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
