//! Topic and subscription definitions, and subscription checkpoints.
//!
//! Definitions are tiny and change rarely, so they live in one JSON file
//! replaced atomically (write to a temporary file, fsync, rename, fsync the
//! directory): readable by people, and no second storage engine to trust.
//! Checkpoints are one small file per subscription, written the same way; they
//! are bounded because subscription state is (see `courier_core::subscription`).
//! Each topic's dedup table is checkpointed likewise, so a restart reads only
//! the log written since.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::state::Snapshot;
use courier_core::{Error, Result, Seq, SubscriptionConfig, TopicConfig};
use serde::{Deserialize, Serialize};

use crate::topic::DedupSnapshot;

/// The version of the subscription state's encoding (checkpoints and
/// journal entries). 2: lease numbers, incarnations, delay cursors and floors.
pub(crate) const STATE_FORMAT: u32 = 2;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// [`STATE_FORMAT`] of the directory; absent (0) before version 2.
    #[serde(default)]
    pub state_format: u32,
    pub topics: BTreeMap<String, TopicConfig>,
    /// Each topic's id salt (see `Topic::new`).
    #[serde(default)]
    pub topic_salts: BTreeMap<String, u16>,
    pub subscriptions: BTreeMap<String, SubscriptionMeta>,
    /// Subscription ids are never reused, so journal entries of a deleted
    /// subscription can never be mistaken for a newer one's.
    pub next_subscription_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SubscriptionMeta {
    pub id: u64,
    pub config: SubscriptionConfig,
    /// The start position resolved to a sequence when the subscription was made.
    pub start_seq: Seq,
}

pub(crate) struct MetaStore {
    dir: PathBuf,
}

impl MetaStore {
    pub fn open(dir: &Path) -> Result<(MetaStore, Meta)> {
        fs::create_dir_all(dir.join("state"))?;
        let store = MetaStore {
            dir: dir.to_path_buf(),
        };
        let path = dir.join("meta.json");
        let mut meta = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta {
                state_format: STATE_FORMAT,
                next_subscription_id: 1,
                ..Meta::default()
            },
            Err(e) => return Err(e.into()),
        };
        if meta.state_format != STATE_FORMAT {
            if !meta.subscriptions.is_empty() {
                // Decoding the old encoding as the new one would misread it.
                return Err(Error::Storage(format!(
                    "{} holds subscription state in format {} and this Courier reads format \
                     {STATE_FORMAT}: open it with the Courier that wrote it, or delete and \
                     recreate its subscriptions there first",
                    dir.display(),
                    meta.state_format
                )));
            }
            meta.state_format = STATE_FORMAT;
            store.save(&meta)?;
        }
        Ok((store, meta))
    }

    pub fn save(&self, meta: &Meta) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| Error::Storage(e.to_string()))?;
        write_atomic(&self.dir, "meta.json", &bytes)
    }

    pub fn load_snapshot(&self, id: u64) -> Result<Option<Snapshot>> {
        read_postcard(&self.snapshot_path(id))
    }

    pub fn save_snapshot(&self, id: u64, snapshot: &Snapshot) -> Result<()> {
        let bytes = postcard::to_stdvec(snapshot).map_err(|e| Error::Storage(e.to_string()))?;
        write_atomic(&self.dir.join("state"), &format!("{id}.snap"), &bytes)
    }

    pub fn remove_snapshot(&self, id: u64) -> Result<()> {
        remove_if_present(&self.snapshot_path(id))
    }

    pub fn load_dedup(&self, topic: &str) -> Result<Option<DedupSnapshot>> {
        read_postcard(&self.dedup_path(topic))
    }

    pub fn save_dedup(&self, topic: &str, snapshot: &DedupSnapshot) -> Result<()> {
        let bytes = postcard::to_stdvec(snapshot).map_err(|e| Error::Storage(e.to_string()))?;
        write_atomic(
            &self.dir.join("state"),
            &format!("topic-{topic}.dedup"),
            &bytes,
        )
    }

    pub fn remove_dedup(&self, topic: &str) -> Result<()> {
        remove_if_present(&self.dedup_path(topic))
    }

    fn dedup_path(&self, topic: &str) -> PathBuf {
        self.dir.join("state").join(format!("topic-{topic}.dedup"))
    }

    fn snapshot_path(&self, id: u64) -> PathBuf {
        self.dir.join("state").join(format!("{id}.snap"))
    }
}

/// A checkpoint file, or `None` when there is none yet.
fn read_postcard<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old or
/// the new content, never a mix.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    crate::fsutil::replace_file(dir, name, &format!(".{name}.tmp"), bytes, true)?;
    Ok(())
}
