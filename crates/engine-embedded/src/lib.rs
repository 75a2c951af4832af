//! The embedded engine: Courier's default storage, nothing to install.
//!
//! - `log`: one segmented, CRC-checked, append-only log per topic, written by a
//!   group-commit writer (many publishers share one fsync).
//! - `journal`: the state journal: every subscription state change, group-committed,
//!   replayed over the last checkpoint on start.
//! - `meta`: topic and subscription definitions and subscription checkpoints (redb).

pub mod journal;
pub mod log;

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
        }
    }
}
