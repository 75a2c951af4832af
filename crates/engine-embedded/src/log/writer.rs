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
//! With pre-allocation, it also owns the spare segment file: once the log has
//! been appended to, it has a short-lived thread zero-fill the next segment
//! file ([`segment::prepare_spare`]) and renames it into place when it rolls.
//! If none is ready then, the new segment is a plain file that grows as it is
//! written, and is left for a spare (rolled early) as soon as one is ready.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use courier_core::clock::wall_now;
use courier_core::{Error, Millis, Result, Seq};
use tokio::sync::oneshot;

use super::segment::{self, log_path};
use super::{record, replier, Active, AppendRecord, Appended, SealedInfo, Shared};

/// A group stops taking requests beyond this many encoded bytes, so one commit
/// does not delay its first publishers behind an unbounded write.
const GROUP_BYTES: usize = 4 << 20;

/// After preparing a spare failed (say the disk is full), wait this long
/// before trying again; segments are plain files meanwhile.
const SPARE_RETRY: Duration = Duration::from_secs(10);

pub(super) enum Cmd {
    Append {
        records: Vec<AppendRecord>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    Close(oneshot::Sender<Result<()>>),
}

/// The next segment file, zero-filled off the writer thread.
enum Spare {
    /// Not wanted yet (nothing appended since open), or taken, or preparing
    /// it failed and is not to be tried again before `retry`.
    Idle { retry: Option<Instant> },
    Preparing {
        job: JoinHandle<io::Result<File>>,
        cancel: Arc<AtomicBool>,
    },
    /// Complete and synced, named [`segment::SPARE`].
    Ready(File),
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    file: Arc<File>,
    base: Seq,
    /// Length of the active segment that is written and synced.
    durable_len: u64,
    /// Size of the active segment's file: beyond `durable_len` when it was
    /// pre-allocated (the rest is zeros).
    capacity: u64,
    spare: Spare,
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
    pub(super) fn new(
        shared: Arc<Shared>,
        last_published: Millis,
        capacity: u64,
        spare: Option<File>,
    ) -> Writer {
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
            spare: match spare {
                Some(file) => Spare::Ready(file),
                None => Spare::Idle { retry: None },
            },
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
                    Cmd::Append { records, reply } => self.stage(records, reply),
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
                self.stop_spare();
                let result = match &self.failed {
                    Some(why) => Err(Error::Storage(why.clone())),
                    None => Ok(()),
                };
                let _ = reply.send(result);
                // Whatever raced with close is refused, never half-written.
                while let Ok(cmd) = rx.try_recv() {
                    match cmd {
                        Cmd::Append { reply, .. } => {
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

    fn stage(&mut self, records: Vec<AppendRecord>, reply: oneshot::Sender<Result<Appended>>) {
        if let Some(why) = &self.failed {
            let _ = reply.send(Err(Error::Storage(why.clone())));
            return;
        }
        self.want_spare();
        let pending = self.durable_count + self.positions.len() as u64;
        let segment_bytes = self.shared.opts.segment_bytes;
        let full = pending > 0 && self.durable_len + self.buf.len() as u64 >= segment_bytes;
        // A segment that grows as it is written (no spare was ready when it
        // began) gives way to a spare as soon as one is.
        let early =
            !full && self.shared.preallocate && self.capacity < segment_bytes && self.spare_ready();
        if full || early {
            self.commit();
            if self.failed.is_none() {
                let rolled = if pending > 0 {
                    self.roll()
                } else {
                    self.replace_empty_active()
                };
                if let Err(e) = rolled {
                    self.fail(format!("rolling segment failed: {e}"));
                }
            }
            if let Some(why) = &self.failed {
                let _ = reply.send(Err(Error::Storage(why.clone())));
                return;
            }
        }
        let last = self.last_published;
        let published_at = *self.group_time.get_or_insert_with(|| wall_now().max(last));
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
        let written = self
            .file
            .write_all_at(&self.buf, self.durable_len)
            .and_then(|()| {
                if self.shared.opts.fsync {
                    self.file.sync_data()
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
    }

    /// Seals the active segment (its data is already synced by `commit`) and
    /// starts the next one. The segment is cut to its records and its index
    /// made durable before the new file exists, which is what lets recovery
    /// trust every segment but the last.
    fn roll(&mut self) -> Result<()> {
        let fsync = self.shared.opts.fsync;
        if self.capacity > self.durable_len {
            self.file.set_len(self.durable_len)?;
            if fsync {
                self.file.sync_all()?;
            }
            self.capacity = self.durable_len;
        }
        let positions = self.shared.state.read().active.positions.clone();
        segment::write_index(&self.shared.dir, self.base, &positions, fsync)?;
        let base = self.next_seq;
        let (file, capacity) = self.new_segment_file(base, false)?;
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
                log_len: old.len,
                idx_len: old.positions.len() as u64 * 4,
            });
        }
        self.file = file;
        self.base = base;
        self.durable_len = 0;
        self.capacity = capacity;
        self.durable_count = 0;
        self.want_spare();
        Ok(())
    }

    /// Replaces the active segment, which holds no record and is a plain
    /// file, by the spare. The rename is atomic: a crash leaves one empty
    /// segment file or the other.
    fn replace_empty_active(&mut self) -> Result<()> {
        let (file, capacity) = self.new_segment_file(self.base, true)?;
        let file = Arc::new(file);
        self.shared.state.write().active.file = file.clone();
        self.file = file;
        self.capacity = capacity;
        self.want_spare();
        Ok(())
    }

    /// The file of segment `base`, durably named: the spare if one is ready
    /// (returned with its size), else a new empty file. `replace` allows
    /// replacing an existing (empty) file of that name.
    fn new_segment_file(&mut self, base: Seq, replace: bool) -> Result<(File, u64)> {
        let shared = self.shared.clone();
        let dir = &shared.dir;
        let path = log_path(dir, base);
        let made = match self.take_spare() {
            Some(spare) => {
                if !replace && fs::symlink_metadata(&path).is_ok() {
                    return Err(Error::Storage(format!(
                        "segment file {} already exists",
                        path.display()
                    )));
                }
                let len = spare.metadata()?.len();
                fs::rename(dir.join(segment::SPARE), &path)?;
                (spare, len)
            }
            None => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                (file, 0)
            }
        };
        if shared.opts.fsync {
            segment::sync_dir(dir)?;
        }
        Ok(made)
    }

    /// Starts preparing a spare if pre-allocation is on and there is none.
    fn want_spare(&mut self) {
        if !self.shared.preallocate {
            return;
        }
        let Spare::Idle { retry } = &self.spare else {
            return;
        };
        if retry.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let dir = self.shared.dir.clone();
        let size = self.shared.opts.segment_bytes;
        let spawned = std::thread::Builder::new()
            .name("courier-log-spare".into())
            .spawn(move || segment::prepare_spare(&dir, size, &stop));
        match spawned {
            Ok(job) => self.spare = Spare::Preparing { job, cancel },
            Err(e) => self.spare_failed(e),
        }
    }

    /// Whether a spare is ready, collecting a finished preparation.
    fn spare_ready(&mut self) -> bool {
        if matches!(&self.spare, Spare::Preparing { job, .. } if job.is_finished()) {
            let Spare::Preparing { job, .. } =
                std::mem::replace(&mut self.spare, Spare::Idle { retry: None })
            else {
                unreachable!("checked above");
            };
            match job.join() {
                Ok(Ok(file)) => self.spare = Spare::Ready(file),
                Ok(Err(e)) => self.spare_failed(e),
                Err(_) => self.spare_failed(io::Error::other("the preparer panicked")),
            }
        }
        matches!(self.spare, Spare::Ready(_))
    }

    fn take_spare(&mut self) -> Option<File> {
        if !self.spare_ready() {
            return None;
        }
        match std::mem::replace(&mut self.spare, Spare::Idle { retry: None }) {
            Spare::Ready(file) => Some(file),
            _ => unreachable!("checked by spare_ready"),
        }
    }

    fn spare_failed(&mut self, e: io::Error) {
        tracing::warn!(
            dir = %self.shared.dir.display(),
            "preparing the next segment file failed: {e}; new segments grow as they are written meanwhile"
        );
        self.spare = Spare::Idle {
            retry: Some(Instant::now() + SPARE_RETRY),
        };
    }

    /// Stops a preparation under way and waits for its thread. A spare that is
    /// complete stays on disk for the next open.
    fn stop_spare(&mut self) {
        if let Spare::Preparing { job, cancel } =
            std::mem::replace(&mut self.spare, Spare::Idle { retry: None })
        {
            cancel.store(true, Ordering::Relaxed);
            let _ = job.join();
        }
    }

    fn fail(&mut self, why: String) {
        tracing::error!(dir = %self.shared.dir.display(), "{why}; the log refuses appends until reopened");
        // Best effort: drop what may be half-written so a reopen does not have
        // to. (A pre-allocated segment keeps its size; recovery zeroes its tail.)
        if self.capacity <= self.durable_len {
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
        self.stop_spare();
    }
}
