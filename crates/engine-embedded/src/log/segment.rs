//! Segment files: `<base seq, 20 digits>.log` holds the framed records whose
//! seqs start at the base; `<base>.idx` holds one u32 LE file position per
//! record, so finding a seq is one short pread.
//!
//! Invariant: a segment that is not the last one is complete on disk: the
//! writer fsyncs its data and writes and fsyncs its index before creating the
//! next segment. Only the last segment can have a torn tail, and its index
//! lives in memory (it is rebuilt by scanning on open), so recovery reads one
//! segment whatever the size of the log.
//!
//! A sealed segment's record count is the length of its index / 4, not the
//! distance to the next segment's base: after a lost tail the log may go on
//! at a higher seq (see the log's module docs), leaving a hole between them.
//! An index is trusted when its last position holds a record with the
//! expected seq that ends the file (sealed segments are cut to their records).
//!
//! Pre-allocation (on by default, see [`super::LogOptions::preallocate`]):
//! the active segment's file usually extends past its records into space that
//! was filled with zeros (written, not just `fallocate`d, and fsynced) before
//! it was needed, so that an append overwrites existing blocks and its
//! `fdatasync` need not write the inode. Its records end at the first frame
//! that does not check (zeros never do, see [`frame`]); the rest of the file is
//! free space. A segment is truncated to its records when it is sealed, so
//! sealed segments look the same either way.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use courier_core::{Error, Millis, Result, Seq};
use parking_lot::Mutex;

use super::{frame, record};

pub(crate) fn log_path(dir: &Path, base: Seq) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

pub(crate) fn idx_path(dir: &Path, base: Seq) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

/// Zeros written per call while zero-filling or wiping a torn tail.
const ZERO_CHUNK: usize = 256 << 10;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
/// While zero-filling, flush every this many bytes, so writeback comes in
/// small steps rather than bursts that queue ahead of the log's own fsyncs
/// (with 4 MiB, commits next to a fill often took 2-7 ms instead of ~0.2).
const SYNC_EVERY: u64 = 256 << 10;

/// Writes zeros over `file[from..to]` and syncs them (growing the file if it
/// ends before `to`). Stops early with [`io::ErrorKind::Interrupted`] once
/// `cancel` is set. The caller must not write to that range meanwhile.
pub(crate) fn zero_fill(file: &File, from: u64, to: u64, cancel: &AtomicBool) -> io::Result<()> {
    let mut at = from;
    let mut synced = from;
    while at < to {
        if cancel.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let n = (to - at).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
        if at - synced >= SYNC_EVERY || at == to {
            file.sync_data()?;
            synced = at;
        }
    }
    Ok(())
}

/// Overwrites with zeros whatever is not zero in `file[from..to]` (the tail of
/// a pre-allocated segment after its last intact record: a torn write must not
/// survive to be completed, by chance, by later appends). Returns how many
/// bytes it overwrote; the caller syncs.
pub(crate) fn wipe_tail(file: &File, from: u64, to: u64) -> io::Result<u64> {
    const READ: usize = 1 << 20;
    let mut buf = vec![0u8; READ];
    let mut wiped = 0;
    let mut at = from;
    while at < to {
        let n = (to - at).min(READ as u64) as usize;
        let buf = &mut buf[..n];
        file.read_exact_at(buf, at)?;
        // OR-folding vectorizes; the positions are only looked for when needed.
        if buf.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            let first = buf.iter().position(|&b| b != 0).expect("a non-zero byte");
            let last = buf.iter().rposition(|&b| b != 0).expect("a non-zero byte");
            let mut pos = first;
            while pos <= last {
                let k = (last + 1 - pos).min(ZERO_CHUNK);
                file.write_all_at(&ZEROS[..k], at + pos as u64)?;
                pos += k;
            }
            wiped += (last + 1 - first) as u64;
        }
        at += n as u64;
    }
    Ok(wiped)
}

/// Bases of the segment files in `dir`, ascending.
pub(crate) fn list(dir: &Path) -> Result<Vec<Seq>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = name.strip_suffix(".log").and_then(|s| s.parse().ok()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// What a scan of a segment's log file found.
pub(crate) struct Scanned {
    pub positions: Vec<u32>,
    /// End of the last intact record with the expected seq.
    pub valid_len: u64,
    pub file_len: u64,
    pub last_published_at: Option<Millis>,
}

/// Reads the intact prefix of a segment: records whose checksum matches and
/// whose seqs continue from `base` without a gap.
pub(crate) fn scan(file: &File, base: Seq) -> Result<Scanned> {
    let mut scanner = frame::Scanner::new(file.try_clone()?)?;
    let mut positions = Vec::new();
    let mut last_published_at = None;
    while let Some((pos, payload)) = scanner.next_frame()? {
        let expected = base + positions.len() as u64;
        if record::seq_of(payload) != Some(expected) {
            // A checked frame with the wrong seq: treat it as the start of damage.
            return Ok(Scanned {
                positions,
                valid_len: pos,
                file_len: scanner.file_len(),
                last_published_at,
            });
        }
        let pos = u32::try_from(pos).map_err(|_| Error::Corrupt("segment over 4 GiB".into()))?;
        positions.push(pos);
        last_published_at = record::published_at_of(payload);
    }
    Ok(Scanned {
        positions,
        valid_len: scanner.valid_len(),
        file_len: scanner.file_len(),
        last_published_at,
    })
}

pub(crate) fn encode_index(positions: &[u32]) -> Vec<u8> {
    positions.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// Writes a segment's index file, fsynced when `fsync`.
pub(crate) fn write_index(dir: &Path, base: Seq, positions: &[u32], fsync: bool) -> Result<()> {
    let tmp = dir.join(format!("{base:020}.idx.tmp"));
    crate::fsutil::write_and_rename(&tmp, &idx_path(dir, base), &encode_index(positions), fsync)?;
    Ok(())
}

/// A sealed (not last) segment, opened for reading.
pub(crate) struct Sealed {
    pub base: Seq,
    /// Records present: fewer than the log's state expects only if the
    /// segment was damaged since the log was opened.
    pub count: u64,
    pub log: File,
    idx: File,
    /// End of the last record.
    pub log_len: u64,
}

impl Sealed {
    /// Opens a sealed segment expected to hold `expected` records, rebuilding
    /// its index if it is missing or does not match.
    fn open(dir: &Path, base: Seq, expected: u64, fsync: bool) -> Result<Sealed> {
        let log = File::open(log_path(dir, base))?;
        let log_len = log.metadata()?.len();
        if let Ok(idx) = File::open(idx_path(dir, base)) {
            if idx.metadata()?.len() == expected * 4 && index_fits(&log, log_len, &idx, base)? {
                return Ok(Sealed {
                    base,
                    count: expected,
                    log,
                    idx,
                    log_len,
                });
            }
        }
        let scanned = scan(&log, base)?;
        if scanned.positions.len() as u64 != expected || scanned.valid_len != scanned.file_len {
            tracing::warn!(
                segment = base,
                expected,
                found = scanned.positions.len(),
                "sealed segment is damaged; serving its intact prefix"
            );
        } else {
            tracing::info!(segment = base, "rebuilt missing segment index");
        }
        write_index(dir, base, &scanned.positions, fsync)?;
        let idx = File::open(idx_path(dir, base))?;
        Ok(Sealed {
            base,
            count: scanned.positions.len() as u64,
            log,
            idx,
            log_len: scanned.valid_len,
        })
    }

    /// Positions of records `first..first + n`.
    pub(crate) fn positions(&self, first: u64, n: u64) -> Result<Vec<u32>> {
        let mut raw = vec![0u8; n as usize * 4];
        self.idx.read_exact_at(&mut raw, first * 4)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
}

/// Whether the index `idx` of a sealed segment matches its log: its last
/// position must hold a frame with the seq that the index length implies, and
/// that frame must end the file. One short read, so that a truncated or stale
/// index is not taken for a smaller segment (which would read as a hole).
fn index_fits(log: &File, log_len: u64, idx: &File, base: Seq) -> Result<bool> {
    let idx_len = idx.metadata()?.len();
    if idx_len % 4 != 0 {
        return Ok(false);
    }
    let count = idx_len / 4;
    if count == 0 {
        return Ok(log_len == 0);
    }
    let mut raw = [0u8; 4];
    idx.read_exact_at(&mut raw, idx_len - 4)?;
    let pos = u32::from_le_bytes(raw) as u64;
    let mut head = [0u8; frame::HEADER + 8];
    if pos + head.len() as u64 > log_len {
        return Ok(false);
    }
    log.read_exact_at(&mut head, pos)?;
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as u64;
    let seq = u64::from_le_bytes(head[frame::HEADER..].try_into().expect("8 bytes"));
    Ok(pos + frame::HEADER as u64 + len == log_len && seq == base + count - 1)
}

/// The number of records of a sealed segment, from its index; an index that
/// is missing or does not match its log (see [`index_fits`]) is rebuilt by
/// scanning the segment. Used when the log is opened.
pub(crate) fn sealed_count(dir: &Path, base: Seq, fsync: bool) -> Result<u64> {
    let log = File::open(log_path(dir, base))?;
    let log_len = log.metadata()?.len();
    match File::open(idx_path(dir, base)) {
        Ok(idx) => {
            if index_fits(&log, log_len, &idx, base)? {
                return Ok(idx.metadata()?.len() / 4);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let scanned = scan(&log, base)?;
    if scanned.valid_len != scanned.file_len {
        tracing::warn!(
            segment = base,
            found = scanned.positions.len(),
            "sealed segment is damaged; serving its intact prefix"
        );
    } else {
        tracing::info!(segment = base, "rebuilt missing or stale segment index");
    }
    write_index(dir, base, &scanned.positions, fsync)?;
    Ok(scanned.positions.len() as u64)
}

/// A small most-recently-used cache of open sealed segments, so reads of old
/// data do not reopen files each time while the number of open files stays bounded.
pub(crate) struct Cache {
    dir: PathBuf,
    fsync: bool,
    open: Mutex<Vec<Arc<Sealed>>>,
}

const CACHED_SEGMENTS: usize = 8;

impl Cache {
    pub(crate) fn new(dir: PathBuf, fsync: bool) -> Cache {
        Cache {
            dir,
            fsync,
            open: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn get(&self, base: Seq, expected: u64) -> Result<Arc<Sealed>> {
        {
            let mut open = self.open.lock();
            if let Some(i) = open.iter().position(|s| s.base == base) {
                let seg = open.remove(i);
                open.push(seg.clone());
                return Ok(seg);
            }
        }
        // Opened without the lock: a rebuild scans a whole segment.
        let seg = Arc::new(Sealed::open(&self.dir, base, expected, self.fsync)?);
        let mut open = self.open.lock();
        if !open.iter().any(|s| s.base == base) {
            if open.len() >= CACHED_SEGMENTS {
                open.remove(0);
            }
            open.push(seg.clone());
        }
        Ok(seg)
    }

    pub(crate) fn forget_below(&self, base: Seq) {
        self.open.lock().retain(|s| s.base >= base);
    }
}
