//! A topic's durable log: segment files of CRC-framed records in one directory,
//! appended by a group-commit writer thread and read with `pread`.
//!
//! Layout of a topic directory:
//! - `<base>.log`: records with seqs from `base` on (see [`record`] and [`frame`]);
//! - `<base>.idx`: one u32 position per record of a sealed segment (see [`segment`]);
//! - `first_seq`: the oldest retained seq, so trimmed messages stay trimmed;
//! - `next_seq`: a floor for the next seq, written by [`TopicLog::persist_next_seq`]
//!   and on close, so that seqs are never given twice.
//!
//! Invariants:
//! - Readers only see durable records: `next_seq` and the active segment's
//!   in-memory index advance together, after the writer's fsync.
//! - Seqs are contiguous within a segment, and a segment's base is the seq of
//!   its first record (or of the record it will get first, for an empty active
//!   segment); a sealed segment's record count comes from its index.
//! - Seqs only grow, and a seq is never given to two records, even when
//!   records are lost: when the tail of the log was lost while it was stopped
//!   (cut after a crash, or corrupt), its recovered end can fall below seqs
//!   already given out, and the log then continues at the persisted `next_seq`
//!   floor, or at one raised by [`TopicLog::ensure_next_seq_at_least`], in a
//!   new segment. The seqs in between are a *hole* between two segments: no
//!   record is written for them, and readers skip them. Holes only ever lie
//!   between segments.
//! - Memory per topic is the active segment's index (4 bytes per record) plus
//!   a few bytes per segment; sealed segments are read through their index files.
//!
//! Pre-allocation ([`LogOptions::preallocate`], on by default): the writer
//! keeps zero-filled file space ahead of itself in the active segment, filled
//! and synced by a short-lived thread a few hundred KiB at a time, so that
//! commits overwrite existing blocks: on file systems where an `fdatasync` that
//! extends a file must also write its inode (ext4, notably), this cuts the
//! commit latency by about a third. The log's logical end is then the end of
//! its last intact record, not the file size. Disk use: at most `preallocate`
//! bytes of zeros per topic beyond its records ([`TopicLog::usage`] counts
//! records and indexes only); idle topics cost no zero-filling, since filling
//! follows commits; each byte of the log is written twice (zeros, then records).

pub(crate) mod frame;
mod record;
pub(crate) mod replier;
mod segment;
mod writer;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use courier_core::{Error, Headers, Message, Millis, Result, Retention, Seq};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use segment::{log_path, Sealed};
use writer::{Cmd, Writer};

/// Positions in the index are u32, so a segment must stay below 4 GiB; the
/// writer rolls once a segment reaches `segment_bytes`, so leave room for a batch.
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

const FIRST_SEQ_FILE: &str = "first_seq";
const NEXT_SEQ_FILE: &str = "next_seq";

#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is sealed and a new one started once it reaches this size
    /// (capped at 1 GiB). Retention frees space a whole segment at a time.
    pub segment_bytes: u64,
    /// fdatasync before acknowledging an append.
    pub fsync: bool,
    /// Zero-filled file space kept ahead of the writer in the active segment
    /// (see the module docs), capped at `segment_bytes`; 0 lets the file grow
    /// with each append instead.
    pub preallocate: u64,
}

/// Measured best of 0, 1 and 4 MiB with 64 single-message publishers
/// (docs/benchmarks.md), and little disk even with thousands of written topics.
pub const DEFAULT_PREALLOCATE: u64 = 1 << 20;

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            fsync: true,
            preallocate: DEFAULT_PREALLOCATE,
        }
    }
}

/// A message to append; the log assigns its seq and published_at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendRecord {
    pub id: String,
    pub key: Option<String>,
    pub headers: Headers,
    pub body: Bytes,
    pub deliver_at: Option<Millis>,
}

/// The seqs `first_seq..first_seq + n` were given to the `n` records of an
/// append, all published at `published_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first_seq: Seq,
    pub published_at: Millis,
}

/// A handle on one topic's log; clones share the log and its writer thread.
///
/// The writer stops when [`TopicLog::close`] is called or the last clone is
/// dropped (after committing what was queued).
#[derive(Clone)]
pub struct TopicLog {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Cmd>,
}

/// What the writer thread and readers share.
struct Shared {
    dir: PathBuf,
    opts: LogOptions,
    state: RwLock<State>,
    cache: segment::Cache,
    watch: watch::Sender<Seq>,
    /// Serializes the runs of retention and the writer's raising of next_seq
    /// (both move first_seq); readers never take it.
    retention: Mutex<()>,
    /// The `next_seq` floor last written to its file; the lock serializes writes.
    persisted_next: Mutex<Seq>,
}

impl Shared {
    /// Writes the current `next_seq` to the `next_seq` file, unless it is
    /// there already.
    fn persist_next_seq(&self) -> Result<()> {
        let mut persisted = self.persisted_next.lock();
        let next = self.state.read().next_seq;
        if next > *persisted {
            write_seq_file(&self.dir, NEXT_SEQ_FILE, next, self.opts.fsync)?;
            *persisted = next;
        }
        Ok(())
    }
}

/// The durable shape of the log, as readers may see it.
///
/// A `parking_lot::RwLock` rather than a tokio lock: it is held for a few
/// field reads or one `extend`, never across I/O.
struct State {
    first_seq: Seq,
    next_seq: Seq,
    sealed: VecDeque<SealedInfo>,
    active: Active,
}

struct SealedInfo {
    base: Seq,
    /// Records in the segment: `base..base + count`. The next segment may
    /// start above `base + count` (a hole).
    count: u64,
    log_len: u64,
    idx_len: u64,
}

struct Active {
    base: Seq,
    file: Arc<File>,
    /// Positions of the durable records of the active segment.
    positions: Vec<u32>,
    /// Durable length of the active segment.
    len: u64,
}

/// Where a seq lives, as found under the state lock.
enum Place {
    Active,
    Sealed { base: Seq, count: u64 },
}

impl State {
    /// The first record with a seq at or above `seq`: where it lives and its
    /// seq, skipping holes and segments below `seq`. `None` if there is none.
    /// (It may be below `first_seq` if its file is still there.)
    fn seek(&self, seq: Seq) -> Option<(Place, Seq)> {
        if seq >= self.next_seq {
            return None;
        }
        let mut seq = seq;
        if seq < self.active.base {
            let mut i = self.sealed.partition_point(|s| s.base <= seq);
            if i == 0 {
                // Below every segment: start at the first one.
                match self.sealed.front() {
                    Some(s) => seq = s.base,
                    None => seq = self.active.base,
                }
            } else {
                i -= 1;
            }
            while let Some(s) = self.sealed.get(i) {
                if seq < s.base + s.count {
                    return Some((
                        Place::Sealed {
                            base: s.base,
                            count: s.count,
                        },
                        seq,
                    ));
                }
                i += 1;
                seq = self.sealed.get(i).map_or(self.active.base, |n| n.base);
            }
        }
        (seq < self.next_seq).then_some((Place::Active, seq))
    }

    /// The seq of the last record in the segments, if any.
    fn last_record(&self) -> Option<Seq> {
        if self.next_seq > self.active.base {
            return Some(self.next_seq - 1);
        }
        self.sealed
            .iter()
            .rev()
            .find(|s| s.count > 0)
            .map(|s| s.base + s.count - 1)
    }

    /// Records at or above `first_seq`.
    fn retained(&self) -> u64 {
        let segments = self
            .sealed
            .iter()
            .map(|s| (s.base, s.count))
            .chain([(self.active.base, self.active.positions.len() as u64)]);
        segments
            .map(|(base, count)| count - self.first_seq.saturating_sub(base).min(count))
            .sum()
    }
}

/// A contiguous run of records to read with one pread.
struct Chunk {
    file: ChunkFile,
    seq: Seq,
    start: u64,
    end: u64,
    count: usize,
    /// The run stopped early because of the byte budget.
    limited: bool,
}

enum ChunkFile {
    Active(Arc<File>),
    Sealed(Arc<Sealed>),
}

impl ChunkFile {
    fn file(&self) -> &File {
        match self {
            ChunkFile::Active(f) => f,
            ChunkFile::Sealed(s) => &s.log,
        }
    }
}

impl TopicLog {
    /// Opens or creates the log in `dir`.
    ///
    /// Recovery reads only the last segment: it keeps the records whose
    /// checksums match and whose seqs follow on. What follows them is either
    /// cut off, or, with pre-allocation, overwritten with zeros where it is not
    /// zeros already (so a torn write is never served, and cannot later pass
    /// for records once appends have overwritten part of it).
    ///
    /// If the records kept end below the persisted `next_seq` floor (records
    /// lost from the tail), the log continues at that floor, leaving a hole
    /// (see [`TopicLog::ensure_next_seq_at_least`]).
    pub fn open(dir: &Path, opts: LogOptions) -> Result<TopicLog> {
        let segment_bytes = opts.segment_bytes.clamp(1, MAX_SEGMENT_BYTES);
        let opts = LogOptions {
            segment_bytes,
            preallocate: opts.preallocate.min(segment_bytes),
            ..opts
        };
        fs::create_dir_all(dir)?;
        let persisted_first = read_seq_file(dir, FIRST_SEQ_FILE);
        let persisted_next = read_seq_file(dir, NEXT_SEQ_FILE);
        let mut bases = segment::list(dir)?;
        if bases.is_empty() {
            let base = persisted_first.unwrap_or(1).max(1);
            File::create(log_path(dir, base))?;
            crate::fsutil::sync_dir(dir)?;
            bases.push(base);
        }
        let last = *bases.last().expect("at least one segment");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(log_path(dir, last))?;
        let scanned = segment::scan(&file, last)?;
        // Size of the active file: more than the records when pre-allocated.
        let mut capacity = scanned.file_len;
        if scanned.valid_len < scanned.file_len {
            if opts.preallocate > 0 {
                // The tail is free space, and must be zeros so that nothing
                // in it can ever pass for records.
                let wiped = segment::wipe_tail(&file, scanned.valid_len, scanned.file_len)?;
                if wiped > 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        segment = last,
                        kept = scanned.positions.len(),
                        wiped_bytes = wiped,
                        "zeroing torn or corrupt tail of the log"
                    );
                    if opts.fsync {
                        file.sync_data()?;
                    }
                }
            } else {
                tracing::warn!(
                    dir = %dir.display(),
                    segment = last,
                    kept = scanned.positions.len(),
                    cut_bytes = scanned.file_len - scanned.valid_len,
                    "cutting torn or corrupt tail of the log"
                );
                file.set_len(scanned.valid_len)?;
                file.sync_all()?;
                capacity = scanned.valid_len;
            }
        }
        // The active segment's index lives in memory; a stale file would only mislead.
        match fs::remove_file(segment::idx_path(dir, last)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut sealed = VecDeque::with_capacity(bases.len());
        for &base in &bases[..bases.len() - 1] {
            let count = segment::sealed_count(dir, base, opts.fsync)?;
            let log_len = fs::metadata(log_path(dir, base))?.len();
            sealed.push_back(SealedInfo {
                base,
                count,
                log_len,
                idx_len: count * 4,
            });
        }
        let next_seq = last + scanned.positions.len() as u64;
        let first_seq = persisted_first.unwrap_or(0).max(bases[0]).min(next_seq);
        let state = State {
            first_seq,
            next_seq,
            sealed,
            active: Active {
                base: last,
                file: Arc::new(file),
                positions: scanned.positions,
                len: scanned.valid_len,
            },
        };
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            cache: segment::Cache::new(dir.to_path_buf(), opts.fsync),
            opts,
            state: RwLock::new(state),
            watch: watch::Sender::new(next_seq),
            retention: Mutex::new(()),
            persisted_next: Mutex::new(persisted_next.unwrap_or(0)),
        });
        let (tx, rx) = mpsc::channel();
        let log = TopicLog {
            inner: Arc::new(Inner {
                shared: shared.clone(),
                tx,
            }),
        };
        // Keeps published_at from going backwards across a restart.
        let last_record = log.inner.shared.state.read().last_record();
        let last_published = match (scanned.last_published_at, last_record) {
            (Some(t), _) => t,
            (None, Some(seq)) => log.published_at(seq).ok().flatten().map_or(0, |(_, t)| t),
            (None, None) => 0,
        };
        let writer = Writer::new(shared, last_published, capacity);
        std::thread::Builder::new()
            .name("courier-log-writer".into())
            .spawn(move || writer.run(rx))?;
        if let Some(floor) = persisted_next.filter(|&floor| floor > next_seq) {
            log.ensure_next_seq_at_least(floor)?;
        }
        Ok(log)
    }

    /// Makes sure the next append gets a seq of at least `floor`: if the log
    /// ends below it, the log continues in a new segment based at `floor`, and
    /// the seqs from the old end up to `floor` become a hole, for good (no
    /// record is written for them, reads skip them, and a warning says how
    /// many were lost). Does nothing if `next_seq >= floor`.
    ///
    /// For the seqs the log gave out before its tail was lost, as known from
    /// outside (say from subscriptions' acks). Goes through the writer thread,
    /// in order with appends, and blocks until it is done: call it off the
    /// async workers, typically right after opening. Fails with
    /// [`Error::ShuttingDown`] once the log is closed.
    pub fn ensure_next_seq_at_least(&self, floor: Seq) -> Result<()> {
        if self.next_seq() >= floor {
            return Ok(());
        }
        let (reply, rx) = mpsc::channel();
        self.inner
            .tx
            .send(Cmd::Raise { floor, reply })
            .map_err(|_| Error::ShuttingDown)?;
        rx.recv().map_err(|_| Error::ShuttingDown)?
    }

    /// Writes the current `next_seq` to the log's `next_seq` file (atomically,
    /// and durably if the log fsyncs), unless it is there already. On open, the
    /// log continues at that floor at least, so that the seqs it gave out are
    /// never given again even if the tail of the log is lost. [`close`](Self::close)
    /// writes it too. It blocks on file I/O: call it off the async workers
    /// (say from a periodic checkpoint).
    pub fn persist_next_seq(&self) -> Result<()> {
        self.inner.shared.persist_next_seq()
    }

    /// Appends `records` in order with contiguous seqs and returns once they
    /// are durable. The writer shares one write and one fsync among every
    /// append queued at the time. Dropping the future does not cancel the append.
    pub async fn append(&self, records: Vec<AppendRecord>) -> Result<Appended> {
        self.append_at(records, courier_core::clock::wall_now())
            .await
    }

    /// Like [`append`](Self::append), stamping the records with `now` (the
    /// engine's clock) unless that would take publish times backwards.
    pub async fn append_at(&self, records: Vec<AppendRecord>, now: Millis) -> Result<Appended> {
        if records.is_empty() {
            return Ok(Appended {
                first_seq: self.next_seq(),
                published_at: courier_core::clock::wall_now(),
            });
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Append {
                records,
                now,
                reply,
            })
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Reads up to `max` messages with seq >= max(`from`, first_seq), stopping
    /// once about `max_bytes` of records are read (but returning at least one).
    /// Their seqs increase strictly; they are contiguous except across a hole
    /// (see the module docs), which is skipped.
    /// The bodies share one buffer per segment run instead of being copied.
    pub fn read(&self, from: Seq, max: usize, max_bytes: usize) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        let mut seq = from;
        let mut bytes_left = max_bytes;
        while out.len() < max {
            let Some(chunk) = self.plan(seq, max - out.len(), bytes_left, out.is_empty())? else {
                break;
            };
            if chunk.count == 0 {
                break;
            }
            let mut buf = vec![0u8; (chunk.end - chunk.start) as usize];
            chunk.file.file().read_exact_at(&mut buf, chunk.start)?;
            let buf = Bytes::from(buf);
            let mut at = 0;
            for i in 0..chunk.count as u64 {
                let (message, len) = record::decode(&buf, at)?;
                if message.seq != chunk.seq + i {
                    return Err(Error::Corrupt(format!(
                        "expected seq {} in {}, found {}",
                        chunk.seq + i,
                        self.inner.shared.dir.display(),
                        message.seq
                    )));
                }
                at += len;
                out.push(message);
            }
            bytes_left = bytes_left.saturating_sub(buf.len());
            seq = chunk.seq + chunk.count as u64;
            if chunk.limited {
                break;
            }
        }
        Ok(out)
    }

    /// Plans the next run of records to read from the first one at or after
    /// `seq`, within one segment.
    fn plan(
        &self,
        seq: Seq,
        max: usize,
        bytes_left: usize,
        at_least_one: bool,
    ) -> Result<Option<Chunk>> {
        let shared = &self.inner.shared;
        // A retention run may delete a sealed segment between the state lookup
        // and opening it; the next attempt then starts at the new first_seq.
        let mut attempts = 0;
        loop {
            let (seq, base, count) = {
                let st = shared.state.read();
                let Some((place, seq)) = st.seek(seq.max(st.first_seq)) else {
                    return Ok(None);
                };
                match place {
                    Place::Active => {
                        let a = &st.active;
                        let i = (seq - a.base) as usize;
                        let n = max.min(a.positions.len() - i);
                        let window = &a.positions[i..a.positions.len().min(i + n + 1)];
                        let (start, end, count) = span(window, a.len, n, bytes_left, at_least_one);
                        return Ok(Some(Chunk {
                            file: ChunkFile::Active(a.file.clone()),
                            seq,
                            start,
                            end,
                            count,
                            limited: count < n,
                        }));
                    }
                    Place::Sealed { base, count } => (seq, base, count),
                }
            };
            let seg = match shared.cache.get(base, count) {
                Ok(seg) => seg,
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => {
                    attempts += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let i = seq - base;
            if i >= seg.count {
                return Err(Error::Corrupt(format!(
                    "seq {seq} is missing from damaged segment {base} in {}",
                    shared.dir.display()
                )));
            }
            let remaining = seg.count - i;
            let n = (max as u64).min(remaining) as usize;
            let window = seg.positions(i, (n as u64 + 1).min(remaining))?;
            let (start, end, count) = span(&window, seg.log_len, n, bytes_left, at_least_one);
            return Ok(Some(Chunk {
                file: ChunkFile::Sealed(seg),
                seq,
                start,
                end,
                count,
                limited: count < n,
            }));
        }
    }

    /// The message with this seq, if it is retained and durable (`None` for a
    /// seq in a hole).
    pub fn read_one(&self, seq: Seq) -> Result<Option<Message>> {
        if seq < self.first_seq() {
            return Ok(None);
        }
        Ok(self.read(seq, 1, 0)?.pop().filter(|m| m.seq == seq))
    }

    /// No seq below it is retained; equals `next_seq` when nothing is retained.
    /// (The oldest retained record may be above it, after a hole.)
    pub fn first_seq(&self) -> Seq {
        self.inner.shared.state.read().first_seq
    }

    /// The seq the next durable record gets; readers see every record below it.
    pub fn next_seq(&self) -> Seq {
        self.inner.shared.state.read().next_seq
    }

    /// The first retained seq published at or after `t` (`next_seq` if none):
    /// a binary search over seqs, two short preads per probe, since
    /// published_at never decreases along the log. A probe in a hole reads
    /// the first record after it.
    pub fn seq_for_time(&self, t: Millis) -> Result<Seq> {
        let (mut lo, mut hi) = {
            let st = self.inner.shared.state.read();
            (st.first_seq, st.next_seq)
        };
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.published_at(mid)? {
                Some((seq, at)) if at < t => lo = seq + 1,
                _ => hi = mid,
            }
        }
        // `lo` may be in a hole: the answer is the record after it.
        let st = self.inner.shared.state.read();
        Ok(st
            .seek(lo.max(st.first_seq))
            .map_or(st.next_seq, |(_, seq)| seq))
    }

    /// The first record at or after `seq`: its seq, where it starts and the
    /// file holding it; `None` if there is none.
    fn locate(&self, seq: Seq) -> Result<Option<(Seq, ChunkFile, u64)>> {
        let shared = &self.inner.shared;
        let (seq, base, count) = {
            let st = shared.state.read();
            match st.seek(seq) {
                None => return Ok(None),
                Some((Place::Active, seq)) => {
                    let pos = st.active.positions[(seq - st.active.base) as usize];
                    let file = ChunkFile::Active(st.active.file.clone());
                    return Ok(Some((seq, file, pos as u64)));
                }
                Some((Place::Sealed { base, count }, seq)) => (seq, base, count),
            }
        };
        let seg = shared.cache.get(base, count)?;
        if seq - base >= seg.count {
            return Err(Error::Corrupt(format!(
                "seq {seq} is missing from damaged segment {base}"
            )));
        }
        let pos = seg.positions(seq - base, 1)?[0] as u64;
        Ok(Some((seq, ChunkFile::Sealed(seg), pos)))
    }

    /// The seq and publish time of the first record at or after `seq`, if
    /// any. A seq trimmed meanwhile by retention counts as older than anything
    /// retained, so a search racing retention moves on.
    fn published_at(&self, seq: Seq) -> Result<Option<(Seq, Millis)>> {
        let read = |seq| -> Result<Option<(Seq, Millis)>> {
            let Some((seq, file, pos)) = self.locate(seq)? else {
                return Ok(None);
            };
            let mut prefix = [0u8; record::TIME_PREFIX];
            file.file().read_exact_at(&mut prefix, pos)?;
            let at = u64::from_le_bytes(prefix[frame::HEADER + 8..].try_into().expect("8 bytes"));
            Ok(Some((seq, at)))
        };
        match read(seq) {
            Err(_) if seq < self.first_seq() => Ok(Some((seq, 0))),
            result => result,
        }
    }

    /// Applies `retention` as of `now` and returns the new first_seq.
    ///
    /// Each limit moves first_seq (persisted before any file is deleted); only
    /// sealed segments entirely below it are deleted, so the disk usage can
    /// exceed `max_bytes` by up to one segment. `max_messages` counts records
    /// (not the seqs of a hole); `max_bytes` counts record bytes in `.log` files.
    pub fn enforce_retention(&self, retention: &Retention, now: Millis) -> Result<Seq> {
        let shared = &self.inner.shared;
        let _serial = shared.retention.lock();
        let (first, next) = {
            let st = shared.state.read();
            (st.first_seq, st.next_seq)
        };
        let mut target = first;
        if let Some(max) = retention.max_messages {
            target = target.max(self.seq_for_count(max));
        }
        if let Some(age) = retention.max_age {
            let cutoff = now.saturating_sub(age.as_millis() as u64);
            target = target.max(self.seq_for_time(cutoff)?);
        }
        if let Some(max) = retention.max_bytes {
            target = target.max(self.seq_for_bytes(max)?);
        }
        // A cut in a hole moves on to the record after it.
        let target = {
            let st = shared.state.read();
            st.seek(target.min(next))
                .map_or(st.next_seq, |(_, seq)| seq)
                .max(st.first_seq)
        };
        if target > first {
            shared.state.write().first_seq = target;
            write_seq_file(&shared.dir, FIRST_SEQ_FILE, target, shared.opts.fsync)?;
        }
        let doomed: Vec<SealedInfo> = {
            let mut st = shared.state.write();
            let mut doomed = Vec::new();
            while let Some(s) = st.sealed.front() {
                if s.base + s.count > st.first_seq {
                    break;
                }
                doomed.extend(st.sealed.pop_front());
            }
            doomed
        };
        if let Some(last) = doomed.last() {
            shared.cache.forget_below(last.base + 1);
            for seg in &doomed {
                for path in [
                    log_path(&shared.dir, seg.base),
                    segment::idx_path(&shared.dir, seg.base),
                ] {
                    match fs::remove_file(&path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                        _ => {}
                    }
                }
            }
            if shared.opts.fsync {
                crate::fsutil::sync_dir(&shared.dir)?;
            }
        }
        Ok(self.first_seq())
    }

    /// The smallest seq from which the log holds at most `max` records.
    fn seq_for_count(&self, max: u64) -> Seq {
        let st = self.inner.shared.state.read();
        let segments = st
            .sealed
            .iter()
            .map(|s| (s.base, s.count))
            .chain([(st.active.base, st.active.positions.len() as u64)]);
        let mut left = max;
        for (base, count) in segments.rev() {
            if count >= left {
                return base + count - left;
            }
            left -= count;
        }
        0
    }

    /// The smallest seq from which the retained records fit in `max_bytes`.
    fn seq_for_bytes(&self, max_bytes: u64) -> Result<Seq> {
        let segments: Vec<(Seq, u64, u64)> = {
            let st = self.inner.shared.state.read();
            let mut v: Vec<_> = st
                .sealed
                .iter()
                .map(|s| (s.base, s.count, s.log_len))
                .collect();
            v.push((
                st.active.base,
                st.active.positions.len() as u64,
                st.active.len,
            ));
            v
        };
        let mut later = 0u64;
        for &(base, count, len) in segments.iter().rev() {
            if later + len <= max_bytes {
                later += len;
                continue;
            }
            // The cut falls in this segment: keep the records starting at or
            // after `threshold`.
            let threshold = len - (max_bytes - later);
            let (mut lo, mut hi) = (0u64, count);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let pos = self.locate(base + mid)?.map_or(u64::MAX, |(_, _, pos)| pos);
                if pos < threshold {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            return Ok(base + lo);
        }
        Ok(segments[0].0)
    }

    /// (records retained, bytes of records and indexes). This is the size of
    /// the segment and index files on disk, except that the active segment
    /// counts only its records: with pre-allocation its file is larger (see
    /// the module docs).
    pub fn usage(&self) -> (u64, u64) {
        let st = self.inner.shared.state.read();
        let sealed: u64 = st.sealed.iter().map(|s| s.log_len + s.idx_len).sum();
        (st.retained(), sealed + st.active.len)
    }

    /// A watch of `next_seq`, updated after each durable commit.
    pub fn watch(&self) -> watch::Receiver<Seq> {
        self.inner.shared.watch.subscribe()
    }

    /// Commits what is queued, writes the `next_seq` floor (see
    /// [`persist_next_seq`](Self::persist_next_seq)), then stops the writer;
    /// appends made after this fail with [`Error::ShuttingDown`]. Reads keep working.
    pub async fn close(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        if self.inner.tx.send(Cmd::Close(reply)).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

/// Chooses how many of the `n` records starting at `window[0]` to read so
/// that they take at most `bytes_left` bytes (one at least when
/// `at_least_one`). `window` holds the positions of those records and maybe
/// the next one; `seg_end` ends the last record of the segment.
/// Returns (start, end, count).
fn span(
    window: &[u32],
    seg_end: u64,
    n: usize,
    bytes_left: usize,
    at_least_one: bool,
) -> (u64, u64, usize) {
    let start = window[0] as u64;
    let end_of = |k: usize| window.get(k).map_or(seg_end, |&p| p as u64);
    let fits = |k: usize| end_of(k) - start <= bytes_left as u64;
    // Largest k in 0..=n that fits; k = 0 always does.
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let count = if lo == 0 && at_least_one && n > 0 {
        1
    } else {
        lo
    };
    (start, end_of(count), count)
}

/// A seq kept in a small file of the log's directory (`first_seq`, `next_seq`).
fn read_seq_file(dir: &Path, name: &str) -> Option<Seq> {
    let text = fs::read_to_string(dir.join(name)).ok()?;
    match text.trim().parse() {
        Ok(seq) => Some(seq),
        Err(_) => {
            tracing::warn!(dir = %dir.display(), "ignoring unreadable {name} file");
            None
        }
    }
}

/// Replaces the file `name` with one holding `seq`: written to a temporary
/// file, synced, renamed over it, and the directory synced (when `fsync`).
fn write_seq_file(dir: &Path, name: &str, seq: Seq, fsync: bool) -> Result<()> {
    crate::fsutil::replace_file(
        dir,
        name,
        &format!("{name}.tmp"),
        format!("{seq}\n").as_bytes(),
        fsync,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_respects_budget_and_minimum() {
        let window = [0u32, 10, 20, 30];
        assert_eq!(span(&window, 40, 4, 1000, true), (0, 40, 4));
        assert_eq!(span(&window, 40, 3, 1000, true), (0, 30, 3));
        assert_eq!(span(&window, 40, 4, 25, true), (0, 20, 2));
        assert_eq!(span(&window, 40, 4, 5, true), (0, 10, 1));
        assert_eq!(span(&window, 40, 4, 5, false), (0, 0, 0));
    }
}
