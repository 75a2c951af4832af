//! The state journal: a write-ahead log of opaque entries (the broker's
//! subscription state events), replayed over the last checkpoint on start.
//!
//! Files are `<number, 20 digits>.journal` in one directory, each a sequence
//! of frames in the log's format (`[len][crc32][payload]`). Entries land in the
//! files in exactly the order `append`/`append_nowait` were called, because both
//! feed one FIFO queue drained by one writer thread, which group-commits: one
//! write and one fsync for everything queued, answered from the
//! [`replier`](crate::log::replier) thread.
//!
//! Only the newest file is written to, so only it can have a torn tail; `open`
//! cuts any damaged tail it finds (in an older file it also warns, since
//! entries after the damage in that file are lost).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use courier_core::{Error, Result};
use tokio::sync::oneshot;

use crate::fsutil::sync_dir;
use crate::log::{frame, replier};

/// A group stops taking entries beyond this many bytes, bounding one commit's latency.
const GROUP_BYTES: usize = 4 << 20;

/// A handle on the journal; clones share its writer thread.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Cmd>,
    dir: PathBuf,
    /// Number of the file being written; files below it are complete.
    active: Arc<AtomicU64>,
    fsync: bool,
}

enum Cmd {
    Entry(Vec<u8>, Option<oneshot::Sender<Result<()>>>),
    Rotate(oneshot::Sender<Result<u64>>),
    Close(oneshot::Sender<Result<()>>),
}

fn file_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.journal"))
}

fn list(dir: &Path) -> Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name.strip_suffix(".journal").and_then(|s| s.parse().ok()) {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

impl Journal {
    /// Opens (creating) the journal in `dir` and returns every intact entry of
    /// every file, oldest first. New entries go to the end of the newest file.
    pub fn open(dir: &Path, fsync: bool) -> Result<(Journal, Vec<Vec<u8>>)> {
        fs::create_dir_all(dir)?;
        let mut numbers = list(dir)?;
        if numbers.is_empty() {
            File::create(file_path(dir, 1))?;
            sync_dir(dir)?;
            numbers.push(1);
        }
        let mut entries = Vec::new();
        let mut active = None;
        for (i, &number) in numbers.iter().enumerate() {
            let path = file_path(dir, number);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut scanner = frame::Scanner::new(file.try_clone()?)?;
            while let Some((_, payload)) = scanner.next_frame()? {
                entries.push(payload.to_vec());
            }
            let (valid, len) = (scanner.valid_len(), scanner.file_len());
            let last = i + 1 == numbers.len();
            if valid < len {
                if last {
                    tracing::warn!(file = %path.display(), cut_bytes = len - valid, "cutting torn tail of the journal");
                } else {
                    tracing::error!(file = %path.display(), cut_bytes = len - valid, "journal file damaged before its end; entries after the damage are lost");
                }
                file.set_len(valid)?;
                file.sync_all()?;
            }
            if last {
                active = Some((number, file, valid));
            }
        }
        let (number, file, len) = active.expect("at least one file");
        let active = Arc::new(AtomicU64::new(number));
        let writer = Writer {
            dir: dir.to_path_buf(),
            fsync,
            file,
            number,
            len,
            buf: Vec::with_capacity(64 << 10),
            waiting: Vec::new(),
            failed: None,
            active: active.clone(),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("courier-journal".into())
            .spawn(move || writer.run(rx))?;
        let journal = Journal {
            inner: Arc::new(Inner {
                tx,
                dir: dir.to_path_buf(),
                active,
                fsync,
            }),
        };
        Ok((journal, entries))
    }

    /// Appends `entry` and returns once it is durable.
    pub async fn append(&self, entry: Vec<u8>) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Entry(entry, Some(reply)))
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Queues `entry` behind everything appended before it. It is written and
    /// fsynced with the writer's next group, which starts at once when the
    /// writer is idle. Dropped (with a warning) once the journal is closed.
    pub fn append_nowait(&self, entry: Vec<u8>) {
        if self.inner.tx.send(Cmd::Entry(entry, None)).is_err() {
            tracing::warn!("journal entry dropped: the journal is closed");
        }
    }

    /// Starts a new file and returns its number: entries queued before this
    /// call are durable in the previous files, entries queued after go to the
    /// new one. A checkpoint taken after `rotate` returns `n` makes the files
    /// below `n` removable with [`Journal::remove_before`].
    pub async fn rotate(&self) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Rotate(reply))
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Number of the file entries are currently appended to.
    pub fn current_file(&self) -> u64 {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Deletes the files numbered below `file` (never the one being written).
    pub fn remove_before(&self, file: u64) -> Result<()> {
        let limit = file.min(self.current_file());
        let mut removed = false;
        for number in list(&self.inner.dir)? {
            if number >= limit {
                break;
            }
            match fs::remove_file(file_path(&self.inner.dir, number)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => removed = true,
            }
        }
        if removed && self.inner.fsync {
            sync_dir(&self.inner.dir)?;
        }
        Ok(())
    }

    /// Commits what is queued and stops the writer; later appends fail with
    /// [`Error::ShuttingDown`].
    pub async fn close(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        if self.inner.tx.send(Cmd::Close(reply)).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

/// The journal's writer thread (a thread, since it lives in blocking syscalls).
struct Writer {
    dir: PathBuf,
    fsync: bool,
    file: File,
    number: u64,
    /// Length of the file that is written (and synced).
    len: u64,
    buf: Vec<u8>,
    waiting: Vec<(oneshot::Sender<Result<()>>, Result<()>)>,
    /// After a failed write or fsync the file's content is unknown: every
    /// later request fails until the journal is reopened.
    failed: Option<String>,
    active: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            let mut closing = None;
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Entry(entry, reply) => self.stage(&entry, reply),
                    Cmd::Rotate(reply) => {
                        self.commit();
                        let _ = reply.send(self.rotate());
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
                let _ = reply.send(self.check());
                while let Ok(cmd) = rx.try_recv() {
                    match cmd {
                        Cmd::Entry(_, Some(reply)) => {
                            let _ = reply.send(Err(Error::ShuttingDown));
                        }
                        Cmd::Close(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                        Cmd::Entry(_, None) => {
                            tracing::warn!("journal entry dropped: the journal is closed");
                        }
                        Cmd::Rotate(reply) => {
                            let _ = reply.send(Err(Error::ShuttingDown));
                        }
                    }
                }
                return;
            }
        }
    }

    fn check(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(Error::Storage(why.clone())),
            None => Ok(()),
        }
    }

    fn stage(&mut self, entry: &[u8], reply: Option<oneshot::Sender<Result<()>>>) {
        if let Err(e) = self.check() {
            match reply {
                Some(reply) => {
                    let _ = reply.send(Err(e));
                }
                None => tracing::warn!("journal entry dropped: {e}"),
            }
            return;
        }
        let start = frame::begin(&mut self.buf);
        self.buf.extend_from_slice(entry);
        if let Err(e) = frame::finish(&mut self.buf, start) {
            self.buf.truncate(start);
            match reply {
                Some(reply) => {
                    let _ = reply.send(Err(e));
                }
                None => tracing::error!("journal entry dropped: {e}"),
            }
            return;
        }
        self.waiting.extend(reply.map(|r| (r, Ok(()))));
    }

    fn commit(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let written = self.file.write_all_at(&self.buf, self.len).and_then(|()| {
            if self.fsync {
                crate::timed_fsync("journal", || self.file.sync_data())
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let why = format!("journal write failed: {e}");
            tracing::error!("{why}; the journal refuses entries until reopened");
            let _ = self.file.set_len(self.len);
            self.buf.clear();
            for (reply, _) in self.waiting.drain(..) {
                let _ = reply.send(Err(Error::Storage(why.clone())));
            }
            self.failed = Some(why);
            return;
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
        if self.buf.capacity() > 2 * GROUP_BYTES {
            self.buf.shrink_to(GROUP_BYTES);
        }
        let capacity = self.waiting.len();
        let batch = std::mem::replace(&mut self.waiting, Vec::with_capacity(capacity));
        replier::answer(batch);
    }

    fn rotate(&mut self) -> Result<u64> {
        self.check()?;
        let number = self.number + 1;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(file_path(&self.dir, number))?;
        if self.fsync {
            sync_dir(&self.dir)?;
        }
        self.file = file;
        self.number = number;
        self.len = 0;
        self.active.store(number, Ordering::Release);
        Ok(number)
    }
}
