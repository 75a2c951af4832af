//! Servers a benchmark starts: stopped by the PID they were started with,
//! never by name, when the run ends or fails.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

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
