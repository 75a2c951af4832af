//! Courier's benchmarks, as programs that print tables (see `docs/benchmarks.md`).
//!
//! - `bin/core.rs`: the embedded engine in-process: publish, pull+ack, memory
//!   with a large backlog, restart time.
//! - `bin/http.rs`: the real `courier` server over HTTP, side by side with
//!   Redis (`XADD`, AOF with `appendfsync always`) driven by the same load generator.
//! - `bin/push.rs`: push delivery (Courier POSTs each message to a service)
//!   next to RabbitMQ consumers in the same run: throughput and open-loop latency.
//! - `bin/realtime.rs`: fan-out to 10,000 Server-Sent Events and WebSocket
//!   clients next to nginx + nchan (latency, memory per connection), and
//!   WebSocket publish next to NATS JetStream.
//!
//! The pieces they share:
//! - [`load`]: the closed-loop driver: N workers, each with one request
//!   outstanding, for a fixed time, with latencies in an HdrHistogram.
//! - [`inproc`]: workloads against an [`courier_embedded::EmbeddedEngine`].
//! - [`http`] and [`resp`]: minimal keep-alive clients for Courier's HTTP API
//!   and Redis' RESP, cheap enough that the load generator is not the bottleneck.
//! - [`report`]: goals and Markdown tables.
//! - [`machine`]: process memory, the machine's description, the disk's fdatasync latency.
//! - [`child`]: servers started for a run, stopped by their PID when dropped.
//! - [`openloop`], [`tally`], [`receiver`], [`amqp`]: the delivery benchmarks'
//!   fixed-rate generator, the consuming side's counts and latencies, the
//!   push receivers (in-process HTTP services) and the RabbitMQ client side.
//!
//! Every run is bounded: each case runs for a fixed time and pre-filled
//! backlogs have a fixed size; servers listen on 127.0.0.1 only.

// The engine is measured with the allocator the `courier` binary ships with,
// so in-process and HTTP figures compare like with like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod amqp;
pub mod child;
pub mod http;
pub mod inproc;
pub mod load;
pub mod machine;
pub mod openloop;
pub mod receiver;
pub mod report;
pub mod resp;
pub mod tally;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Command-line options both programs share.
#[derive(Debug, Clone)]
pub struct Options {
    /// A smoke run: tiny backlogs, one second per case.
    pub quick: bool,
    /// How long each timed case runs.
    pub case_time: Duration,
    /// Where temporary data directories go (must be a real disk, not tmpfs).
    pub dir: PathBuf,
    /// fsync before acknowledging; only `--no-fsync` (an experiment that
    /// separates CPU cost from the disk) turns it off.
    pub fsync: bool,
    /// Runs only the sections or cases whose name starts with this (`--only`).
    pub only: Option<String>,
    /// Arguments this crate does not know, for the program to interpret.
    pub rest: Vec<String>,
}

impl Options {
    /// Parses `[--quick] [--secs N] [--dir DIR] [--no-fsync] [--only NAME]`; anything else is left in `rest`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options> {
        let mut quick = false;
        let mut secs = None;
        let mut dir = None;
        let mut fsync = true;
        let mut only = None;
        let mut rest = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--no-fsync" => fsync = false,
                "--only" => {
                    only = Some(args.next().context("--only needs a section or case name")?)
                }
                "--secs" => {
                    let v = args.next().context("--secs needs a number of seconds")?;
                    secs = Some(v.parse::<f64>().context("--secs needs a number")?);
                }
                "--dir" => dir = Some(PathBuf::from(args.next().context("--dir needs a path")?)),
                _ => rest.push(arg),
            }
        }
        let case_time = Duration::from_secs_f64(secs.unwrap_or(if quick { 1.0 } else { 5.0 }));
        if case_time.is_zero() || case_time > Duration::from_secs(600) {
            bail!("--secs must be more than 0 and at most 600");
        }
        let dir = match dir {
            Some(dir) => dir,
            None => machine::disk_temp_dir()?,
        };
        Ok(Options {
            quick,
            case_time,
            dir,
            fsync,
            only,
            rest,
        })
    }

    /// Whether the section or case `name` is to run (see `--only`).
    pub fn wants(&self, name: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|only| name.starts_with(only))
    }

    /// A fresh temporary directory under [`Options::dir`], removed when dropped.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.dir)
            .with_context(|| {
                format!(
                    "cannot create a temporary directory in {}",
                    self.dir.display()
                )
            })
    }
}

/// A body of `len` bytes of printable ASCII, so the same bytes can travel as
/// JSON text in batch publishes.
pub fn body(len: usize) -> bytes::Bytes {
    (0..len)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<u8>>()
        .into()
}
