//! Servers a benchmark starts: stopped by the PID they were started with,
//! never by name, when the run ends or fails.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A process this run started. Dropping it stops it.
pub struct Spawned {
    name: &'static str,
    child: Child,
}

impl Spawned {
    pub fn start(name: &'static str, mut command: Command) -> Result<Spawned> {
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        Ok(Spawned { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// SIGTERM to our child's PID, then SIGKILL if it has not exited within
    /// `grace`. Returns how long the graceful part took.
    pub fn stop(&mut self, grace: Duration) -> Duration {
        let started = Instant::now();
        if let Ok(Some(_)) = self.child.try_wait() {
            return started.elapsed();
        }
        let pid = self.child.id().to_string();
        // The `kill` utility with our child's PID: std only offers SIGKILL.
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        while started.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} (pid {pid}) did not stop within {grace:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        started.elapsed()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections at `addr`.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > timeout => {
                return Err(e)
                    .with_context(|| format!("nothing listens on {addr} after {timeout:?}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The `courier` program to run: `explicit` (a `--courier PATH` argument),
/// else `$COURIER_BIN`, else `courier` next to this program (the same target
/// directory).
pub fn courier_program(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let courier = match explicit.or_else(|| std::env::var_os("COURIER_BIN").map(PathBuf::from)) {
        Some(c) => c,
        None => std::env::current_exe()?
            .parent()
            .context("the program has no directory")?
            .join("courier"),
    };
    if !courier.is_file() {
        bail!(
            "no courier binary at {}: build it with `cargo build --release -p courier` (same CARGO_TARGET_DIR), or give --courier PATH",
            courier.display()
        );
    }
    Ok(courier)
}

/// A `courier serve` this run started, with its data in a temporary directory.
pub struct Courier {
    pub server: Spawned,
    pub addr: SocketAddr,
}

impl Courier {
    /// Starts `program serve` on 127.0.0.1:0 with its data under `dir`, the
    /// config file `config` (TOML, written to `dir/courier.toml`), fsync as
    /// `fsync` says, any other `COURIER_*` variable removed, and its log (json,
    /// default level) in `dir/courier.log`, which a failed start shows.
    pub fn start(program: &Path, dir: &Path, config: &str, fsync: bool) -> Result<Courier> {
        let log_path = dir.join("courier.log");
        let log = std::fs::File::create(&log_path)?;
        let config_path = dir.join("courier.toml");
        std::fs::write(&config_path, config)?;
        let mut command = Command::new(program);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .arg("--config")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("COURIER_") {
                command.env_remove(var);
            }
        }
        command.env("COURIER_FSYNC", fsync.to_string());
        let mut server = Spawned::start("courier", command)?;
        let addr = listening_address(&mut server).map_err(|e| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            e.context(format!("courier's log:\n{log}"))
        })?;
        Ok(Courier { server, addr })
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }
}

/// Reads the one line `courier serve` prints on stdout: `courier listening on http://ADDR`.
fn listening_address(server: &mut Spawned) -> Result<SocketAddr> {
    let stdout = server
        .child_mut()
        .stdout
        .take()
        .context("no stdout from courier")?;
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    lines.read_line(&mut line)?;
    // Keep draining it, so a later line never blocks the server.
    std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    line.trim()
        .strip_prefix("courier listening on http://")
        .with_context(|| format!("courier did not start: '{}'", line.trim()))?
        .parse()
        .context("courier printed an address that does not parse")
}
