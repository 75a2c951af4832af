//! The writer thread of a topic log: the only code that writes its segments.
//!
//! Group commit: it blocks for one request, then takes every request already
//! queued, encodes them all into one buffer, writes it with one `pwrite`,
//! fsyncs once, publishes the new durable end to readers and answers them all.
//! While it fsyncs, the next group queues up, so the number of fsyncs per second
//! stays bounded by the disk while the messages per fsync grow with the load.
//! The answers are sent by the [`replier`] thread, so waking the publishers
//! overlaps with the next group's write and fsync.
//!
//! It is a plain thread rather than a tokio task because it spends its life in
//! blocking syscalls (`pwrite`, `fdatasync`).
//!
//! Raising the next seq ([`Cmd::Raise`]) goes through it too, in order with the
//! appends: it commits what is staged, then continues the log in a new segment
//! based at the floor (sealing the active segment, or replacing it if it holds
//! no record), so the seqs in between are a hole that nothing is written for.
//!
//! With pre-allocation it also keeps zero-filled space ahead of itself in the
//! active segment: after a commit leaves less than half of
//! [`LogOptions::preallocate`](super::LogOptions::preallocate) ahead, a
//! short-lived thread zero-fills and syncs the next stretch
//! ([`segment::zero_fill`]). That stretch starts a quarter of it past the
//! writer's end, and the writer never writes into a stretch being filled: a
//! commit that would reach it first stops the fill (and so waits for at most
//! one 256 KiB step). A stretch left unfilled that way, or a gap between the
//! end and a stretch, is written as in a plain file: slower, not wrong. After
//! such a stop no fill starts before the writer has gone [`BACKOFF_STRETCHES`]
//! times the pre-allocation further: the log is written faster than zeros can
//! be laid ahead of it, so its groups are large and an inode update per commit
//! costs them little, while waiting for fills would not.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use courier_core::{Error, Millis, Result, Seq};
use tokio::sync::oneshot;

use super::segment::{self, log_path};
use super::{record, replier, Active, AppendRecord, Appended, SealedInfo, Shared};

/// A group stops taking requests beyond this many encoded bytes, so one commit
/// does not delay its first publishers behind an unbounded write.
const GROUP_BYTES: usize = 4 << 20;

/// After zero-filling failed (say the disk is full), wait this long before
/// trying again; the segment grows as it is written meanwhile.
const ZERO_FILL_RETRY: Duration = Duration::from_secs(10);

/// After a commit had to stop a fill, the writer goes this many times the
/// pre-allocation further before it starts another. (Measured with batches
/// of 100 × 256 B from 16 connections, about 200 MB/s: without a pause,
/// commits kept reaching fills and throughput fell by a fifth.)
const BACKOFF_STRETCHES: u64 = 16;

pub(super) enum Cmd {
    Append {
        records: Vec<AppendRecord>,
        /// The publish time by the engine's clock.
        now: Millis,
        reply: oneshot::Sender<Result<Appended>>,
    },
    /// Continue the log at `floor` at least (see [`Writer::raise`]).
    /// Answered on a plain channel: the caller blocks, maybe outside tokio.
    Raise {
        floor: Seq,
        reply: mpsc::Sender<Result<()>>,
    },
    Close(oneshot::Sender<Result<()>>),
}

/// Zero-filling of the active segment ahead of the writer, off its thread.
enum ZeroFill {
    /// None under way.
    Idle,
    /// Filling failed: none starts before `until`.
    Failed { until: Instant },
    /// A commit had to stop a fill: none starts before the active segment
    /// holds `until_len` bytes.
    Backoff { until_len: u64 },
    /// A thread writes and syncs zeros over `from..to` of the active file.
    Running {
        job: JoinHandle<io::Result<()>>,
        from: u64,
        to: u64,
        cancel: Arc<AtomicBool>,
    },
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    file: Arc<File>,
    base: Seq,
    /// Length of the active segment that is written and synced.
    durable_len: u64,
    /// End of the active file's space known to be zeros (or holes, which
    /// read as zeros) or records: beyond `durable_len` when pre-allocated.
    capacity: u64,
    zero_fill: ZeroFill,
    /// Records of the active segment that are durable.
    durable_count: u64,
    /// The seq the next staged record gets.
    next_seq: Seq,
    /// Encoded records of the current group.
    buf: Vec<u8>,
    /// File positions of the records in `buf`.
    positions: Vec<u32>,
    waiting: Vec<(oneshot::Sender<Result<Appended>>, Result<Appended>)>,
    last_published: Millis,
    group_time: Option<Millis>,
    /// Set after a failed write or fsync: what reached the disk is then
    /// unknown, so the log refuses further appends until it is reopened.
    failed: Option<String>,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>, last_published: Millis, capacity: u64) -> Writer {
        let (file, base, len, count, next_seq) = {
            let st = shared.state.read();
            (
                st.active.file.clone(),
                st.active.base,
                st.active.len,
                st.active.positions.len() as u64,
                st.next_seq,
            )
        };
        Writer {
            shared,
            file,
            base,
            durable_len: len,
            capacity: capacity.max(len),
            zero_fill: ZeroFill::Idle,
            durable_count: count,
            next_seq,
            buf: Vec::with_capacity(1 << 20),
            positions: Vec::new(),
            waiting: Vec::new(),
            last_published,
            group_time: None,
            failed: None,
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Cmd>) {
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            let mut closing = None;
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Append {
                        records,
                        now,
                        reply,
                    } => self.stage(records, now, reply),
                    Cmd::Raise { floor, reply } => {
                        let _ = reply.send(self.raise(floor));
                    }
                    Cmd::Close(reply) => {
                        closing = Some(reply);
                        break;
                    }
                }
                if self.buf.len() < GROUP_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            self.commit();
            if let Some(reply) = closing {
                // Before answering: the directory may be removed right after.
                self.finish_zero_fill(true);
                // Every seq below next_seq has been given out: a restart must
                // not give them again, whatever happens to the tail meanwhile.
                let persisted = self.shared.persist_next_seq();
                let result = match &self.failed {
                    Some(why) => Err(Error::Storage(why.clone())),
                    None => persisted,
                };
                let _ = reply.send(result);
                // Whatever raced with close is refused, never half-written.
                while let Ok(cmd) = rx.try_recv() {
                    match cmd {
                        Cmd::Append { reply, .. } => {
                            let _ = reply.send(Err(Error::ShuttingDown));
                        }
                        Cmd::Raise { reply, .. } => {
                            let _ = reply.send(Err(Error::ShuttingDown));
                        }
                        Cmd::Close(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
                return;
            }
        }
        // Every handle was dropped; what was queued has been committed above.
    }

    fn stage(
        &mut self,
        records: Vec<AppendRecord>,
        now: Millis,
        reply: oneshot::Sender<Result<Appended>>,
    ) {
        if let Some(why) = &self.failed {
            let _ = reply.send(Err(Error::Storage(why.clone())));
            return;
        }
        let pending = self.durable_count + self.positions.len() as u64;
        let full = pending > 0
            && self.durable_len + self.buf.len() as u64 >= self.shared.opts.segment_bytes;
        if full {
            self.commit();
            if self.failed.is_none() {
                if let Err(e) = self.roll(self.next_seq) {
                    self.fail(format!("rolling segment failed: {e}"));
                }
            }
            if let Some(why) = &self.failed {
                let _ = reply.send(Err(Error::Storage(why.clone())));
                return;
            }
        }
        let last = self.last_published;
        let published_at = *self.group_time.get_or_insert_with(|| now.max(last));
        self.last_published = published_at;
        let (buf_mark, pos_mark) = (self.buf.len(), self.positions.len());
        let first_seq = self.next_seq;
        for (i, rec) in records.iter().enumerate() {
            let pos = self.durable_len + self.buf.len() as u64;
            let staged = u32::try_from(pos)
                .map_err(|_| Error::Storage("segment would exceed 4 GiB".into()))
                .and_then(|pos| {
                    self.positions.push(pos);
                    record::encode(&mut self.buf, first_seq + i as u64, published_at, rec)
                });
            if let Err(e) = staged {
                self.buf.truncate(buf_mark);
                self.positions.truncate(pos_mark);
                let _ = reply.send(Err(e));
                return;
            }
        }
        self.next_seq += records.len() as u64;
        self.waiting.push((
            reply,
            Ok(Appended {
                first_seq,
                published_at,
            }),
        ));
    }

    /// Writes and syncs the staged group, makes it visible, answers its publishers.
    fn commit(&mut self) {
        self.group_time = None;
        if self.buf.is_empty() {
            return;
        }
        let end = self.durable_len + self.buf.len() as u64;
        self.finish_zero_fill(false);
        if matches!(self.zero_fill, ZeroFill::Running { from, .. } if end > from) {
            self.finish_zero_fill(true);
            if matches!(self.zero_fill, ZeroFill::Idle) {
                self.zero_fill = ZeroFill::Backoff {
                    until_len: end + BACKOFF_STRETCHES * self.shared.opts.preallocate,
                };
            }
        }
        let written = self
            .file
            .write_all_at(&self.buf, self.durable_len)
            .and_then(|()| {
                if self.shared.opts.fsync {
                    crate::timed_fsync("log", || self.file.sync_data())
                } else {
                    Ok(())
                }
            });
        if let Err(e) = written {
            self.fail(format!("log write failed: {e}"));
            return;
        }
        self.durable_len += self.buf.len() as u64;
        self.capacity = self.capacity.max(self.durable_len);
        self.durable_count += self.positions.len() as u64;
        {
            let mut st = self.shared.state.write();
            st.active.positions.extend_from_slice(&self.positions);
            st.active.len = self.durable_len;
            st.next_seq = self.next_seq;
        }
        self.shared.watch.send_replace(self.next_seq);
        self.buf.clear();
        if self.buf.capacity() > 2 * GROUP_BYTES {
            self.buf.shrink_to(GROUP_BYTES);
        }
        self.positions.clear();
        let capacity = self.waiting.len();
        let batch = std::mem::replace(&mut self.waiting, Vec::with_capacity(capacity));
        replier::answer(batch);
        self.zero_ahead();
    }

    /// Seals the active segment (its data is already synced by `commit`) and
    /// starts the next one at `base` (`next_seq`, or above it for a hole). The
    /// segment is cut to its records and its index made durable before the new
    /// file exists, which is what lets recovery trust every segment but the last.
    fn roll(&mut self, base: Seq) -> Result<()> {
        let fsync = self.shared.opts.fsync;
        self.finish_zero_fill(true);
        if matches!(self.zero_fill, ZeroFill::Backoff { .. }) {
            // It counts bytes of this segment.
            self.zero_fill = ZeroFill::Idle;
        }
        if self.file.metadata()?.len() > self.durable_len {
            self.file.set_len(self.durable_len)?;
            if fsync {
                self.file.sync_all()?;
            }
        }
        let positions = self.shared.state.read().active.positions.clone();
        segment::write_index(&self.shared.dir, self.base, &positions, fsync)?;
        let path = log_path(&self.shared.dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        if fsync {
            crate::fsutil::sync_dir(&self.shared.dir)?;
        }
        let file = Arc::new(file);
        {
            let mut st = self.shared.state.write();
            let capacity = st.active.positions.len();
            let old = std::mem::replace(
                &mut st.active,
                Active {
                    base,
                    file: file.clone(),
                    positions: Vec::with_capacity(capacity),
                    len: 0,
                },
            );
            st.sealed.push_back(SealedInfo {
                base: old.base,
                count: old.positions.len() as u64,
                log_len: old.len,
                idx_len: old.positions.len() as u64 * 4,
            });
            st.next_seq = st.next_seq.max(base);
        }
        self.file = file;
        self.base = base;
        self.next_seq = self.next_seq.max(base);
        self.durable_len = 0;
        self.capacity = 0;
        self.durable_count = 0;
        Ok(())
    }

    /// Replaces the active segment, which holds no record, by an empty one at
    /// `base`. The new file exists before the old one is removed: a crash in
    /// between leaves an empty sealed segment, which reads as nothing.
    fn restart_at(&mut self, base: Seq) -> Result<()> {
        let fsync = self.shared.opts.fsync;
        self.finish_zero_fill(true);
        if matches!(self.zero_fill, ZeroFill::Backoff { .. }) {
            // It counts bytes of the old segment.
            self.zero_fill = ZeroFill::Idle;
        }
        let dir = &self.shared.dir;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(log_path(dir, base))?;
        if fsync {
            crate::fsutil::sync_dir(dir)?;
        }
        let file = Arc::new(file);
        {
            let mut st = self.shared.state.write();
            st.active = Active {
                base,
                file: file.clone(),
                positions: Vec::new(),
                len: 0,
            };
            st.next_seq = st.next_seq.max(base);
        }
        let old = self.base;
        self.file = file;
        self.base = base;
        self.next_seq = self.next_seq.max(base);
        self.durable_len = 0;
        self.capacity = 0;
        self.durable_count = 0;
        fs::remove_file(log_path(dir, old))?;
        if fsync {
            crate::fsutil::sync_dir(dir)?;
        }
        Ok(())
    }

    /// Makes the next append get `floor` at least: commits what is staged,
    /// then, if the log ends below `floor`, continues it in a new segment
    /// based at `floor`. The seqs in between are lost for good (a hole).
    fn raise(&mut self, floor: Seq) -> Result<()> {
        self.commit();
        if let Some(why) = &self.failed {
            return Err(Error::Storage(why.clone()));
        }
        if floor <= self.next_seq {
            return Ok(());
        }
        let shared = self.shared.clone();
        // first_seq may move too; retention is the other one that moves it.
        let _serial = shared.retention.lock();
        let from = self.next_seq;
        tracing::warn!(
            dir = %shared.dir.display(),
            lost = floor - from,
            "seqs {from}..{floor} were given out but their records are lost; the log continues at {floor}"
        );
        let moved = if self.durable_count == 0 {
            self.restart_at(floor)
        } else {
            self.roll(floor)
        };
        if let Err(e) = moved {
            self.fail(format!("continuing the log at seq {floor} failed: {e}"));
            return Err(e);
        }
        // Nothing retained before: nothing is after the hole either.
        let empty = {
            let mut st = shared.state.write();
            let empty = st.first_seq >= from;
            if empty {
                st.first_seq = floor;
            }
            empty
        };
        shared.watch.send_replace(floor);
        if empty {
            super::write_seq_file(&shared.dir, super::FIRST_SEQ_FILE, floor, shared.opts.fsync)?;
        }
        Ok(())
    }

    /// Starts zero-filling the next stretch of the active segment if
    /// pre-allocation is on and less than half of it is left ahead.
    fn zero_ahead(&mut self) {
        let ahead = self.shared.opts.preallocate;
        if ahead == 0 {
            return;
        }
        self.finish_zero_fill(false);
        let end = self.durable_len;
        let waiting = match self.zero_fill {
            ZeroFill::Idle => false,
            ZeroFill::Failed { until } => Instant::now() < until,
            ZeroFill::Backoff { until_len } => end < until_len,
            ZeroFill::Running { .. } => true,
        };
        if waiting {
            return;
        }
        if self.capacity >= end + ahead / 2 {
            return;
        }
        // A quarter ahead of the end, so that the commits made while the
        // zeros are written do not reach them (they would have to stop them).
        let from = self.capacity.max(end + ahead / 4);
        let to = (end + ahead).min(self.shared.opts.segment_bytes);
        if from >= to {
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let file = self.file.clone();
        let spawned = std::thread::Builder::new()
            .name("courier-log-zero".into())
            .spawn(move || segment::zero_fill(&file, from, to, &stop));
        match spawned {
            Ok(job) => {
                self.zero_fill = ZeroFill::Running {
                    job,
                    from,
                    to,
                    cancel,
                }
            }
            Err(e) => self.zero_fill_failed(e),
        }
    }

    /// Collects a zero-fill that has finished, or with `stop`, one under way
    /// (stopping it first). Afterwards nothing else writes to the file.
    fn finish_zero_fill(&mut self, stop: bool) {
        let ZeroFill::Running { job, cancel, .. } = &self.zero_fill else {
            return;
        };
        if !stop && !job.is_finished() {
            return;
        }
        cancel.store(true, Ordering::Relaxed);
        let ZeroFill::Running { job, to, .. } =
            std::mem::replace(&mut self.zero_fill, ZeroFill::Idle)
        else {
            unreachable!("matched above");
        };
        match job.join() {
            Ok(Ok(())) => self.capacity = self.capacity.max(to),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => self.zero_fill_failed(e),
            Err(_) => self.zero_fill_failed(io::Error::other("the zero-filling thread panicked")),
        }
    }

    fn zero_fill_failed(&mut self, e: io::Error) {
        tracing::warn!(
            dir = %self.shared.dir.display(),
            "zero-filling ahead of the log failed: {e}; the segment grows as it is written meanwhile"
        );
        self.zero_fill = ZeroFill::Failed {
            until: Instant::now() + ZERO_FILL_RETRY,
        };
    }

    fn fail(&mut self, why: String) {
        tracing::error!(dir = %self.shared.dir.display(), "{why}; the log refuses appends until reopened");
        self.finish_zero_fill(true);
        // Best effort: drop what may be half-written so a reopen does not have
        // to. (A pre-allocated segment keeps its size; recovery zeroes its tail.)
        if self.shared.opts.preallocate == 0 {
            let _ = self.file.set_len(self.durable_len);
        }
        self.buf.clear();
        self.positions.clear();
        for (reply, _) in self.waiting.drain(..) {
            let _ = reply.send(Err(Error::Storage(why.clone())));
        }
        self.failed = Some(why);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish_zero_fill(true);
    }
}
