//! The embedded engine: Courier's default storage, nothing to install.
//!
//! - `log`: one segmented, CRC-checked, append-only log per topic, written by a
//!   group-commit writer (many publishers share one fsync).
//! - `journal`: the state journal: every subscription state change, group-committed,
//!   replayed over the last checkpoint on start.
//! - `meta`: topic and subscription definitions (`meta.json`, replaced
//!   atomically) and checkpoints of subscription state and dedup tables.
//! - `delays`: each topic's durable index of delayed messages.
//! - `state`: the subscription state machine; `subscription` drives it.
//! - `tail`: topic tails, one shared reader per followed topic.

/// Per-topic durable index of delayed messages by delivery time.
pub mod delays;
mod engine;
mod fsutil;
pub mod journal;
pub mod log;
mod meta;
/// The subscription state machine (public for its model-based test).
#[doc(hidden)]
pub mod state;
mod subscription;
mod tail;
mod topic;

pub use engine::EmbeddedEngine;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the embedded engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Where topics, the journal and metadata live.
    pub data_dir: PathBuf,
    /// A topic's log rolls to a new segment file at this size.
    pub segment_bytes: u64,
    /// fsync before acknowledging publishes and acks. Turning it off trades
    /// crash safety for speed (an OS crash may lose acknowledged messages).
    pub fsync: bool,
    /// How often subscription state is checkpointed so the journal can be trimmed.
    #[serde(with = "courier_core::types::millis")]
    pub checkpoint_interval: Duration,
    /// Largest message body accepted.
    pub max_message_bytes: usize,
    /// How often retention limits are enforced.
    #[serde(with = "courier_core::types::millis")]
    pub retention_interval: Duration,
    /// Zero-filled space kept ahead of each topic's writer in its active
    /// segment, so commits overwrite blocks instead of growing the file (on
    /// ext4 that spares each fsync an inode update; see docs/benchmarks.md).
    /// Costs up to this much disk per written topic, and writes each byte of
    /// the log twice. 0 turns it off; capped at `segment_bytes`.
    pub preallocate_bytes: u64,
    /// How often expired leases are collected when nobody pulls (0 disables;
    /// pulls always collect them too).
    #[serde(with = "courier_core::types::millis")]
    pub tick_interval: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            segment_bytes: 64 * 1024 * 1024,
            fsync: true,
            checkpoint_interval: Duration::from_secs(5),
            max_message_bytes: 8 * 1024 * 1024,
            retention_interval: Duration::from_secs(1),
            tick_interval: Duration::from_millis(100),
            preallocate_bytes: log::DEFAULT_PREALLOCATE,
        }
    }
}

impl EmbeddedConfig {
    pub(crate) fn log_options(&self) -> log::LogOptions {
        log::LogOptions {
            segment_bytes: self.segment_bytes,
            fsync: self.fsync,
            preallocate: self.preallocate_bytes,
        }
    }

    /// Refuses settings that cannot work, with a message saying which.
    pub fn validate(&self) -> courier_core::Result<()> {
        let bad = |msg: &str| Err(courier_core::Error::InvalidArgument(msg.to_string()));
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir must not be empty");
        }
        if self.segment_bytes < 4096 {
            return bad("segment_bytes must be at least 4096");
        }
        if self.max_message_bytes == 0 {
            return bad("max_message_bytes must be at least 1");
        }
        Ok(())
    }
}

/// Runs an `fdatasync` and records how long it took in the
/// `courier_fsync_duration_seconds` histogram, labelled with the `file` kind
/// (`log` or `journal`). The `metrics` facade is a no-op unless the process
/// installed a recorder, as the server does for `/metrics`.
pub(crate) fn timed_fsync<T>(file: &'static str, sync: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let result = sync();
    metrics::histogram!("courier_fsync_duration_seconds", "file" => file)
        .record(started.elapsed().as_secs_f64());
    result
}
