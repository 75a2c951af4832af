//! A topic's durable delay index: the set of `(deliver_at, seq)` of every
//! message published to come due later, ordered by delivery time, so a
//! subscription can take delayed messages as they come due without holding
//! them in memory and without scanning the log for them.
//!
//! # Layout
//!
//! The index is a small log-structured merge tree of two levels:
//!
//! - an in-memory buffer (a `BTreeSet`) that takes inserts until the next
//!   [`DelayIndex::flush`], bounded by [`DelayOptions::memory_entries`]
//!   through [`DelayIndex::wants_flush`];
//! - immutable, sorted, duplicate-free *run* files `<id>.run` (`id` as 16 hex
//!   digits) of fixed 16-byte records: `deliver_at` then `seq`, both u64
//!   big-endian, so byte order is sort order and record `i` is at `16 * i`.
//!   Queries binary-search them with positioned reads and stream forward in
//!   bounded chunks, so memory does not grow with the size of the index;
//! - a `MANIFEST` naming the live runs (with their record count and seq
//!   bounds), `covered`, the trim floor and the next run id (format in
//!   [`Manifest::encode`]).
//!
//! When a flush leaves more than [`DelayOptions::max_runs`] runs, the smallest
//! runs are merged into one (size-tiered, so an entry is rewritten about
//! log(total / buffer) times), dropping entries below the trim floor.
//!
//! # Invariants
//!
//! - The manifest names only complete runs: a run file is written in full (and
//!   fsynced when `fsync`) before any manifest names it, and is never modified.
//! - Run ids only grow, and the manifest's `next_id` is above every id it
//!   names, so a new run never takes the name of a live one.
//! - Every entry inserted before a flush started is, once it returns, in a run
//!   the manifest names (or below the floor), and that manifest records the
//!   flush's `covered`; so `covered` never claims entries that are not durable.
//! - Readers see one consistent snapshot of the buffer, the buffer being
//!   flushed and the runs, taken under one lock: an entry moves from the
//!   buffer to a run in a single step, so it never disappears from a query.
//! - `covered` and the floor only grow.
//!
//! # Crash safety
//!
//! The manifest is the commit point. It is replaced atomically (written to
//! `MANIFEST.tmp`, fsynced, renamed over `MANIFEST`, directory fsynced), so
//! after a crash the durable state is exactly the last manifest that reached
//! the disk: the previous state or the new one, never a mix. Files it does not
//! name (a run written by a flush or merge whose manifest never landed, runs a
//! merge or trim replaced whose deletion never happened, a half-written
//! `MANIFEST.tmp`) are deleted at open, and files are only deleted after the
//! manifest that stops naming them is durable. Entries only in the buffer are
//! lost by a crash, which `covered` accounts for: the engine re-inserts the
//! log's delayed records from `covered` on, and duplicates are harmless. With
//! `fsync` off, all of this holds for a process crash but not an OS crash.
//!
//! Concurrency: inserts and queries run in parallel with a flush; flushes and
//! trims (the manifest writers) are serialized among themselves.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use courier_core::{Error, Millis, Result, Seq};

use crate::fsutil::{sync_dir, write_and_rename};
use parking_lot::{Mutex, RwLock};

/// A delay index entry: when the message comes due, and the message.
pub type Entry = (Millis, Seq);

const RECORD: usize = 16;
const MANIFEST: &str = "MANIFEST";
const MANIFEST_TMP: &str = "MANIFEST.tmp";
const RUN_EXT: &str = "run";
const MAGIC: &[u8; 8] = b"CDLYIX01";
/// Records read per positioned read when streaming a run for a merge.
const MERGE_CHUNK: usize = 4096;
/// Largest chunk a query reads at once; small queries read less.
const QUERY_CHUNK: usize = 1024;

/// Tuning of a [`DelayIndex`]; the defaults suit production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayOptions {
    /// In-memory entries past which [`DelayIndex::wants_flush`] says so.
    pub memory_entries: usize,
    /// Runs past which a flush merges some (at least 1).
    pub max_runs: usize,
}

impl Default for DelayOptions {
    fn default() -> Self {
        Self {
            memory_entries: 64 * 1024,
            max_runs: 8,
        }
    }
}

/// The durable delay index of one topic; see the module documentation.
pub struct DelayIndex {
    dir: PathBuf,
    fsync: bool,
    options: DelayOptions,
    state: RwLock<State>,
    /// Serializes the manifest writers (flush and trim); held across their
    /// I/O, which `state` never is, so queries and inserts do not wait on disk.
    writer: Mutex<Writer>,
}

/// What queries see; replaced piecewise under the `state` write lock.
struct State {
    memory: BTreeSet<Entry>,
    /// The buffer a flush in progress is writing out, still visible to queries
    /// until the run holding it is installed.
    flushing: Option<Arc<BTreeSet<Entry>>>,
    runs: Arc<Vec<Arc<Run>>>,
    covered: Seq,
    floor: Seq,
}

/// Owned by the manifest writer.
struct Writer {
    next_id: u64,
}

type Runs = Vec<Arc<Run>>;

/// An immutable sorted run file.
struct Run {
    meta: RunMeta,
    file: File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunMeta {
    id: u64,
    count: u64,
    min_seq: Seq,
    max_seq: Seq,
}

impl DelayIndex {
    /// Opens or creates the index in `dir` (creates the directory). `fsync`:
    /// whether flushes fsync.
    pub fn open(dir: &Path, fsync: bool) -> Result<DelayIndex> {
        Self::open_with(dir, fsync, DelayOptions::default())
    }

    /// [`DelayIndex::open`] with explicit tuning.
    pub fn open_with(dir: &Path, fsync: bool, options: DelayOptions) -> Result<DelayIndex> {
        let options = DelayOptions {
            memory_entries: options.memory_entries.max(1),
            max_runs: options.max_runs.max(1),
        };
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            if fsync {
                if let Some(parent) = dir.parent() {
                    sync_dir(parent)?;
                }
            }
        }
        let manifest = match fs::read(dir.join(MANIFEST)) {
            Ok(bytes) => Manifest::decode(&bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => return Err(e.into()),
        };
        let mut runs = Vec::with_capacity(manifest.runs.len());
        for meta in &manifest.runs {
            let path = run_path(dir, meta.id);
            let file = File::open(&path).map_err(|e| {
                Error::Corrupt(format!(
                    "delay index run {} named by the manifest: {e}",
                    path.display()
                ))
            })?;
            let len = file.metadata()?.len();
            if len != meta.count * RECORD as u64 {
                return Err(Error::Corrupt(format!(
                    "delay index run {} is {len} bytes, the manifest says {} records",
                    path.display(),
                    meta.count
                )));
            }
            runs.push(Arc::new(Run { meta: *meta, file }));
        }
        remove_unreferenced(dir, &manifest)?;
        Ok(DelayIndex {
            dir: dir.to_path_buf(),
            fsync,
            options,
            state: RwLock::new(State {
                memory: BTreeSet::new(),
                flushing: None,
                runs: Arc::new(runs),
                covered: manifest.covered,
                floor: manifest.floor,
            }),
            writer: Mutex::new(Writer {
                next_id: manifest.next_id,
            }),
        })
    }

    /// Every delayed record of the log below this seq is durably in the index
    /// (0 for a new index). After a crash the engine re-inserts the log's
    /// delayed records from here on.
    pub fn covered(&self) -> Seq {
        self.state.read().covered
    }

    /// The trim floor: entries with a lower seq are never returned.
    pub fn floor(&self) -> Seq {
        self.state.read().floor
    }

    /// Adds entries, in memory until the next flush. Entries below the trim
    /// floor are ignored, duplicates are harmless.
    pub fn insert(&self, entries: &[Entry]) {
        let mut state = self.state.write();
        let floor = state.floor;
        state
            .memory
            .extend(entries.iter().filter(|&&(_, seq)| seq >= floor));
    }

    /// Whether the in-memory part has grown past its bound, so the engine
    /// should flush soon.
    pub fn wants_flush(&self) -> bool {
        self.state.read().memory.len() >= self.options.memory_entries
    }

    /// Entries held in memory (the buffer, and the one being flushed).
    pub fn memory_entries(&self) -> usize {
        let state = self.state.read();
        state.memory.len() + state.flushing.as_ref().map_or(0, |f| f.len())
    }

    /// Run files live.
    pub fn runs(&self) -> usize {
        self.state.read().runs.len()
    }

    /// Number of entries stored, for stats: approximate, as it counts
    /// duplicates across runs and trimmed entries not yet merged away.
    pub fn len(&self) -> u64 {
        let state = self.state.read();
        let memory = state.memory.len() + state.flushing.as_ref().map_or(0, |f| f.len());
        memory as u64 + state.runs.iter().map(|r| r.meta.count).sum::<u64>()
    }

    /// Whether [`DelayIndex::len`] is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes everything inserted so far durable and records `covered` (the
    /// caller guarantees every delayed record below it has been inserted; a
    /// lower value than the current one is ignored). Writes one run for the
    /// in-memory entries (none if there are none, but `covered` is still
    /// persisted) and merges runs when there are too many.
    ///
    /// On error nothing inserted is lost from memory and the durable state is
    /// the previous one or, if only the final directory fsync failed, the new one.
    pub fn flush(&self, covered: Seq) -> Result<()> {
        let mut writer = self.writer.lock();
        let (batch, floor, old_runs, covered) = {
            let mut state = self.state.write();
            let batch = Arc::new(std::mem::take(&mut state.memory));
            state.flushing = Some(batch.clone());
            (
                batch,
                state.floor,
                state.runs.clone(),
                covered.max(state.covered),
            )
        };
        let mut created = Vec::new();
        let result = self.write_runs(&mut writer, &batch, floor, &old_runs, &mut created);
        let (runs, retired) = match result {
            Ok(v) => v,
            Err(e) => {
                self.abandon(&created);
                let mut state = self.state.write();
                state.flushing = None;
                state.memory.extend(batch.iter().copied());
                return Err(e);
            }
        };
        let manifest = Manifest {
            covered,
            floor,
            next_id: writer.next_id,
            runs: runs.iter().map(|r| r.meta).collect(),
        };
        match self.write_manifest(&manifest) {
            Err(ManifestError::NotRenamed(e)) => {
                self.abandon(&created);
                let mut state = self.state.write();
                state.flushing = None;
                state.memory.extend(batch.iter().copied());
                Err(e)
            }
            other => {
                {
                    let mut state = self.state.write();
                    state.flushing = None;
                    state.runs = Arc::new(runs);
                    state.covered = covered;
                }
                self.retire(&retired, other)
            }
        }
    }

    /// Writes the flushed batch as a run and merges runs if there are too
    /// many; returns the new run list and the runs it no longer names.
    fn write_runs(
        &self,
        writer: &mut Writer,
        batch: &BTreeSet<Entry>,
        floor: Seq,
        old_runs: &[Arc<Run>],
        created: &mut Vec<u64>,
    ) -> Result<(Runs, Runs)> {
        // Runs wholly below the floor go now rather than waiting for a merge.
        let (mut runs, mut retired): (Vec<_>, Vec<_>) = old_runs
            .iter()
            .cloned()
            .partition(|r| r.meta.max_seq >= floor);
        if !batch.is_empty() {
            let id = writer.next_id;
            writer.next_id += 1;
            created.push(id);
            let entries = batch.iter().copied().filter(|&(_, seq)| seq >= floor);
            if let Some(run) = self.write_run(id, entries.map(Ok))? {
                runs.push(Arc::new(run));
            }
        }
        if runs.len() > self.options.max_runs {
            // Merging the smallest runs down to half the bound keeps merges
            // size-tiered: a big run is rewritten only once enough small ones
            // have grown to its size.
            let target = (self.options.max_runs / 2).max(1);
            let take = (runs.len() + 1 - target).max(2);
            runs.sort_by_key(|r| r.meta.count);
            let inputs: Vec<Arc<Run>> = runs.drain(..take).collect();
            let id = writer.next_id;
            writer.next_id += 1;
            created.push(id);
            let cursors = inputs
                .iter()
                .map(|run| Source::Run(RunCursor::at(run, 0, MERGE_CHUNK)))
                .collect();
            let merged = self.write_run(id, Merge::new(cursors, floor)?)?;
            runs.extend(merged.map(Arc::new));
            retired.extend(inputs);
            runs.sort_by_key(|r| r.meta.id);
        }
        Ok((runs, retired))
    }

    /// Writes sorted, duplicate-free entries to a new run file, complete and
    /// (when `fsync`) durable; `None`, and no file, if there are none.
    fn write_run(
        &self,
        id: u64,
        entries: impl Iterator<Item = Result<Entry>>,
    ) -> Result<Option<Run>> {
        let path = run_path(&self.dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let mut out = BufWriter::with_capacity(64 * 1024, &file);
        let mut meta = RunMeta {
            id,
            count: 0,
            min_seq: Seq::MAX,
            max_seq: 0,
        };
        for entry in entries {
            let (at, seq) = entry?;
            out.write_all(&encode(at, seq))?;
            meta.count += 1;
            meta.min_seq = meta.min_seq.min(seq);
            meta.max_seq = meta.max_seq.max(seq);
        }
        out.flush()?;
        drop(out);
        if meta.count == 0 {
            drop(file);
            fs::remove_file(&path)?;
            return Ok(None);
        }
        if self.fsync {
            file.sync_data()?;
        }
        Ok(Some(Run { meta, file }))
    }

    /// Best effort: files a failed flush created are unreferenced and would
    /// be deleted at the next open anyway.
    fn abandon(&self, ids: &[u64]) {
        for &id in ids {
            let _ = fs::remove_file(run_path(&self.dir, id));
        }
    }

    /// Deletes the runs a new manifest no longer names, once it is durable.
    /// If it may not be (its directory fsync failed), the old manifest could
    /// come back after an OS crash, so its runs stay until the next open
    /// sorts out which manifest won.
    fn retire(&self, runs: &[Arc<Run>], manifest: Result<(), ManifestError>) -> Result<()> {
        if let Err(ManifestError::NotSynced(e)) = manifest {
            return Err(e);
        }
        // Readers holding these runs keep reading them through their open
        // handles; only the names go.
        for run in runs {
            let path = run_path(&self.dir, run.meta.id);
            if let Err(e) = fs::remove_file(&path) {
                // Harmless: unreferenced, it is deleted at the next open.
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a retired delay run");
            }
        }
        Ok(())
    }

    fn write_manifest(&self, manifest: &Manifest) -> Result<(), ManifestError> {
        let tmp = self.dir.join(MANIFEST_TMP);
        write_and_rename(
            &tmp,
            &self.dir.join(MANIFEST),
            &manifest.encode(),
            self.fsync,
        )
        .map_err(|e| ManifestError::NotRenamed(e.into()))?;
        if self.fsync {
            sync_dir(&self.dir).map_err(|e| ManifestError::NotSynced(e.into()))?;
        }
        Ok(())
    }

    /// Entries strictly after `after` (in `(deliver_at, seq)` order) with
    /// `deliver_at <= until`, in order, at most `max`, never below the trim
    /// floor. A cursor that has seen nothing is `(0, 0)`: no delayed message
    /// is due at time 0, so nothing can hide behind it.
    pub fn range(&self, after: Entry, until: Millis, max: usize) -> Result<Vec<Entry>> {
        if max == 0 || after.0 > until {
            return Ok(Vec::new());
        }
        let (memory, flushing, runs, floor) = {
            let state = self.state.read();
            let floor = state.floor;
            // Copying at most `max` keeps the lock short and the copy bounded.
            let memory: Vec<Entry> = state
                .memory
                .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .take_while(|&&(at, _)| at <= until)
                .filter(|&&(_, seq)| seq >= floor)
                .take(max)
                .copied()
                .collect();
            (memory, state.flushing.clone(), state.runs.clone(), floor)
        };
        let chunk = max.clamp(16, QUERY_CHUNK);
        let mut sources: Vec<Source<'_>> = Vec::with_capacity(runs.len() + 2);
        sources.push(Source::Memory(Box::new(memory.into_iter())));
        if let Some(flushing) = &flushing {
            sources.push(Source::Memory(Box::new(
                flushing
                    .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                    .copied(),
            )));
        }
        for run in runs.iter() {
            sources.push(Source::Run(RunCursor::seek(run, after, chunk)?));
        }
        let mut merge = Merge::new(sources, floor)?;
        let mut out = Vec::with_capacity(max.min(QUERY_CHUNK));
        while out.len() < max {
            match merge.next().transpose()? {
                Some(entry) if entry.0 <= until => out.push(entry),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The earliest entry strictly after `after`, if any (to know when to wake).
    pub fn first_after(&self, after: Entry) -> Result<Option<Entry>> {
        Ok(self.range(after, Millis::MAX, 1)?.into_iter().next())
    }

    /// Retention removed every seq below `first`: such entries are never
    /// returned again, and they leave the disk when their runs are merged (a
    /// run wholly below goes at once). The floor is persisted before this
    /// returns; a lower `first` than the current floor changes nothing.
    pub fn trim(&self, first: Seq) -> Result<()> {
        let writer = self.writer.lock();
        let (manifest, runs, retired) = {
            let mut state = self.state.write();
            if first <= state.floor {
                return Ok(());
            }
            // Queries filter by the floor from here on, whatever happens to
            // the manifest below.
            state.floor = first;
            state.memory.retain(|&(_, seq)| seq >= first);
            let (runs, retired): (Vec<_>, Vec<_>) = state
                .runs
                .iter()
                .cloned()
                .partition(|r| r.meta.max_seq >= first);
            let manifest = Manifest {
                covered: state.covered,
                floor: first,
                next_id: writer.next_id,
                runs: runs.iter().map(|r| r.meta).collect(),
            };
            (manifest, runs, retired)
        };
        match self.write_manifest(&manifest) {
            Err(ManifestError::NotRenamed(e)) => Err(e),
            other => {
                self.state.write().runs = Arc::new(runs);
                self.retire(&retired, other)
            }
        }
    }
}

enum ManifestError {
    /// The old manifest stands.
    NotRenamed(Error),
    /// The new manifest is in place but may not survive an OS crash.
    NotSynced(Error),
}

/// The durable root of the index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Manifest {
    covered: Seq,
    floor: Seq,
    next_id: u64,
    runs: Vec<RunMeta>,
}

impl Manifest {
    /// Big-endian throughout:
    ///
    /// ```text
    /// magic "CDLYIX01" | covered u64 | floor u64 | next_id u64 | runs u32
    /// runs x (id u64 | count u64 | min_seq u64 | max_seq u64)
    /// crc32 u32 of everything before it
    /// ```
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 28 + self.runs.len() * 32 + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.covered.to_be_bytes());
        out.extend_from_slice(&self.floor.to_be_bytes());
        out.extend_from_slice(&self.next_id.to_be_bytes());
        out.extend_from_slice(&(self.runs.len() as u32).to_be_bytes());
        for run in &self.runs {
            out.extend_from_slice(&run.id.to_be_bytes());
            out.extend_from_slice(&run.count.to_be_bytes());
            out.extend_from_slice(&run.min_seq.to_be_bytes());
            out.extend_from_slice(&run.max_seq.to_be_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Manifest> {
        let corrupt = |what: &str| Error::Corrupt(format!("delay index manifest: {what}"));
        if bytes.len() < 8 + 28 + 4 {
            return Err(corrupt("too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_be_bytes() != crc {
            return Err(corrupt("checksum mismatch"));
        }
        if &body[..8] != MAGIC {
            return Err(corrupt("unknown format"));
        }
        let mut fields = body[8..].chunks_exact(8);
        let mut u64_field = || {
            fields
                .next()
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        };
        let covered = u64_field().ok_or_else(|| corrupt("truncated"))?;
        let floor = u64_field().ok_or_else(|| corrupt("truncated"))?;
        let next_id = u64_field().ok_or_else(|| corrupt("truncated"))?;
        let count_at = 8 + 24;
        let count = u32::from_be_bytes(body[count_at..count_at + 4].try_into().expect("4 bytes"));
        let list = &body[count_at + 4..];
        if list.len() != count as usize * 32 {
            return Err(corrupt("run list length mismatch"));
        }
        let runs: Vec<RunMeta> = list
            .chunks_exact(32)
            .map(|b| {
                let at = |i: usize| u64::from_be_bytes(b[i * 8..i * 8 + 8].try_into().expect("8"));
                RunMeta {
                    id: at(0),
                    count: at(1),
                    min_seq: at(2),
                    max_seq: at(3),
                }
            })
            .collect();
        if runs.iter().any(|r| r.id >= next_id) {
            return Err(corrupt("run id not below next_id"));
        }
        Ok(Manifest {
            covered,
            floor,
            next_id,
            runs,
        })
    }
}

fn encode(at: Millis, seq: Seq) -> [u8; RECORD] {
    let mut out = [0; RECORD];
    out[..8].copy_from_slice(&at.to_be_bytes());
    out[8..].copy_from_slice(&seq.to_be_bytes());
    out
}

fn decode(bytes: &[u8]) -> Entry {
    (
        u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
        u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
    )
}

fn run_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.{RUN_EXT}"))
}

/// Deletes what a crash may have left: runs the manifest does not name and a
/// partial `MANIFEST.tmp`. Other files are not the index's and stay.
fn remove_unreferenced(dir: &Path, manifest: &Manifest) -> Result<()> {
    let live: BTreeSet<PathBuf> = manifest.runs.iter().map(|r| run_path(dir, r.id)).collect();
    for item in fs::read_dir(dir)? {
        let item = item?;
        if !item.file_type()?.is_file() {
            continue;
        }
        let path = item.path();
        let ours = path.file_name().is_some_and(|n| n == MANIFEST_TMP)
            || path.extension().is_some_and(|e| e == RUN_EXT);
        if ours && !live.contains(&path) {
            tracing::debug!(path = %path.display(), "removing an unreferenced delay index file");
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// A forward reader over a run, one bounded chunk at a time.
struct RunCursor<'a> {
    run: &'a Run,
    /// Index of the next record to read from the file.
    next: u64,
    chunk: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> RunCursor<'a> {
    fn at(run: &'a Run, index: u64, chunk: usize) -> Self {
        RunCursor {
            run,
            next: index,
            chunk,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Positioned at the first record strictly after `after`, found by binary
    /// search with one small read per probe.
    fn seek(run: &'a Run, after: Entry, chunk: usize) -> Result<Self> {
        let (mut lo, mut hi) = (0, run.meta.count);
        let mut record = [0u8; RECORD];
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            run.file.read_exact_at(&mut record, mid * RECORD as u64)?;
            if decode(&record) <= after {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(Self::at(run, lo, chunk))
    }

    fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.pos == self.buf.len() {
            let left = self.run.meta.count - self.next;
            if left == 0 {
                return Ok(None);
            }
            let records = left.min(self.chunk as u64);
            self.buf.resize(records as usize * RECORD, 0);
            self.run
                .file
                .read_exact_at(&mut self.buf, self.next * RECORD as u64)?;
            self.next += records;
            self.pos = 0;
        }
        let entry = decode(&self.buf[self.pos..self.pos + RECORD]);
        self.pos += RECORD;
        Ok(Some(entry))
    }
}

/// One sorted, duplicate-free input of a [`Merge`].
enum Source<'a> {
    Memory(Box<dyn Iterator<Item = Entry> + 'a>),
    Run(RunCursor<'a>),
}

impl Source<'_> {
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        match self {
            Source::Memory(iter) => Ok(iter.next()),
            Source::Run(cursor) => cursor.next_entry(),
        }
    }
}

/// Merges sorted sources into one sorted stream without duplicates or entries
/// below the floor. Sources are few (the buffers and at most `max_runs + 1`
/// runs), so a linear scan for the least head beats a heap.
struct Merge<'a> {
    sources: Vec<Source<'a>>,
    heads: Vec<Option<Entry>>,
    last: Option<Entry>,
    floor: Seq,
}

impl<'a> Merge<'a> {
    fn new(mut sources: Vec<Source<'a>>, floor: Seq) -> Result<Self> {
        let heads = sources
            .iter_mut()
            .map(Source::next_entry)
            .collect::<Result<_>>()?;
        Ok(Merge {
            sources,
            heads,
            last: None,
            floor,
        })
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            let (i, entry) = self
                .heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.map(|e| (i, e)))
                .min_by_key(|&(_, e)| e)?;
            match self.sources[i].next_entry() {
                Ok(head) => self.heads[i] = head,
                Err(e) => {
                    self.heads[i] = None;
                    return Some(Err(e));
                }
            }
            if entry.1 < self.floor || self.last == Some(entry) {
                continue;
            }
            self.last = Some(entry);
            return Some(Ok(entry));
        }
    }
}
