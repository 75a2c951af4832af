//! Topic tails: following a topic without a subscription.
//!
//! Every topic with listeners has one hub. While the hub has listeners, one
//! reader task waits on the log's watch, reads each new run of records once
//! (off the async workers, in bounded batches), names the messages and
//! broadcasts them as one shared `Arc<[Message]>` to every listener. The
//! reader stops when the last listener goes away; the next one restarts it.
//!
//! A listener is a plain future (no task, no thread): when it is live it only
//! awaits the broadcast. A listener behind the hub (it started in the past, or
//! lagged out of the broadcast) reads the log itself in bounded batches until
//! it is close to the hub, subscribes, reads what is left below the hub's
//! position as of that subscription, and then takes the broadcast from its
//! own cursor on. Nothing is lost that way: the log is durable.
//!
//! Seqs may jump (retention, or a hole in the log): messages are handed out in
//! contiguous runs, and a listener whose next message is past its cursor is
//! told with a [`TailEvent::Gap`] first.
//!
//! Memory: the broadcast keeps at most [`BROADCAST_BATCHES`] batches of at
//! most [`READ_MESSAGES`] messages / about [`READ_BYTES`] bytes, whatever the
//! listeners do; a batch is freed once every listener has taken it.
//!
//! Hubs live in a registry keyed by the topic's address. A hub and a tail hold
//! the topic only weakly (which also keeps the address from being reused), so
//! a deleted topic goes away, its log's watch closes, and its tails end with
//! [`Error::TopicNotFound`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use courier_core::{Error, Message, MessageBatch, Result, Seq, Tail, TailEvent};
use parking_lot::Mutex;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::topic::Topic;

/// Most messages one log read returns.
const READ_MESSAGES: usize = 1000;
/// About the most record bytes one log read returns (at least one message).
const READ_BYTES: usize = 1 << 20;
/// Batches the broadcast keeps for listeners that are behind.
const BROADCAST_BATCHES: usize = 32;
/// A listener this many seqs behind the hub (or closer) subscribes to it and
/// reads the rest itself; one further behind reads without subscribing, so
/// that it does not lag out of the broadcast while catching up.
const JOIN_DISTANCE: u64 = READ_MESSAGES as u64;

type Shared = Arc<[Message]>;

/// Every topic's hub, by the topic's address. Entries of dropped topics are
/// pruned when a new hub is added.
static HUBS: Mutex<BTreeMap<usize, Arc<Hub>>> = Mutex::new(BTreeMap::new());

/// Counters of a topic's tails, for tests and diagnostics.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TailStats {
    /// Log reads of the shared reader.
    pub hub_reads: u64,
    /// Log reads of listeners catching up on their own.
    pub catch_up_reads: u64,
    /// Shared reader tasks running (0 or 1, briefly 2 while one restarts).
    pub readers: u64,
    /// Tails of the topic that have not ended.
    pub listeners: usize,
}

/// Follows `topic` from `from` (see [`courier_core::Engine::tail`]): yields
/// `Err(ShuttingDown)` once `cancel` fires and `Err(TopicNotFound)` once the
/// topic is deleted, then ends.
pub(crate) fn follow(topic: Arc<Topic>, from: Seq, cancel: CancellationToken) -> Tail {
    let hub = hub_for(&topic);
    drop(topic);
    let mut listener = Listener::new(hub, from, cancel);
    // A listener at the live edge subscribes at once, so that what is
    // published from now on reaches it through the hub even before it is polled.
    if let Err(e) = listener.subscribe() {
        listener.fail(e);
    }
    Box::pin(futures_util::stream::unfold(listener, |mut l| async move {
        l.next().await.map(|item| (item, l))
    }))
}

/// The tail counters of `topic` (zeros if it never had a tail).
pub(crate) fn stats(topic: &Arc<Topic>) -> TailStats {
    let hub = HUBS.lock().get(&key(topic)).cloned();
    hub.map_or_else(TailStats::default, |hub| TailStats {
        hub_reads: hub.hub_reads.load(Ordering::Relaxed),
        catch_up_reads: hub.catch_up_reads.load(Ordering::Relaxed),
        readers: hub.readers.load(Ordering::Relaxed),
        listeners: hub.state.lock().listeners,
    })
}

fn key(topic: &Arc<Topic>) -> usize {
    Arc::as_ptr(topic) as usize
}

fn hub_for(topic: &Arc<Topic>) -> Arc<Hub> {
    let mut hubs = HUBS.lock();
    if let Some(hub) = hubs.get(&key(topic)) {
        // The hub's weak reference keeps the address from being reused, so a
        // hub found at a live topic's address is that topic's.
        return hub.clone();
    }
    hubs.retain(|_, hub| hub.topic.strong_count() > 0);
    let hub = Arc::new(Hub {
        topic: Arc::downgrade(topic),
        name: topic.name.clone(),
        state: Mutex::new(HubState::default()),
        idle: Notify::new(),
        hub_reads: AtomicU64::new(0),
        catch_up_reads: AtomicU64::new(0),
        readers: AtomicU64::new(0),
    });
    hubs.insert(key(topic), hub.clone());
    hub
}

/// One topic's shared reader and its listeners.
struct Hub {
    topic: Weak<Topic>,
    name: String,
    state: Mutex<HubState>,
    /// Wakes the reader when the last listener leaves.
    idle: Notify,
    hub_reads: AtomicU64,
    catch_up_reads: AtomicU64,
    readers: AtomicU64,
}

#[derive(Default)]
struct HubState {
    listeners: usize,
    /// The running reader's broadcast; `None` while no reader runs.
    tx: Option<broadcast::Sender<Shared>>,
    /// The reader's next seq: every message from here on goes out on `tx`.
    /// Moves only together with a send, under this lock.
    position: Seq,
    /// Numbers reader runs, so a stopped run never clears a newer one.
    generation: u64,
    /// Why the last reader run ended, if not for lack of listeners.
    end: Option<End>,
}

#[derive(Debug, Clone)]
enum End {
    /// The topic was deleted.
    Gone,
    /// A log read failed.
    Failed(String),
}

impl End {
    fn of(e: &Error) -> End {
        match e {
            Error::TopicNotFound(_) => End::Gone,
            e => End::Failed(e.to_string()),
        }
    }

    fn error(&self, topic: &str) -> Error {
        match self {
            End::Gone => Error::TopicNotFound(topic.to_string()),
            End::Failed(why) => Error::Storage(format!("tail of '{topic}': {why}")),
        }
    }
}

impl Hub {
    fn enter(&self) {
        self.state.lock().listeners += 1;
    }

    fn leave(&self) {
        let mut st = self.state.lock();
        st.listeners -= 1;
        if st.listeners == 0 {
            self.idle.notify_one();
        }
    }

    /// Subscribes a listener at `cursor` to the broadcast if it is within
    /// [`JOIN_DISTANCE`] of the hub, starting the reader if none runs.
    /// Returns the receiver and the seq from which it carries every message.
    fn subscribe(
        self: &Arc<Self>,
        cursor: Seq,
        cancel: &CancellationToken,
    ) -> Result<Option<(broadcast::Receiver<Shared>, Seq)>> {
        let mut st = self.state.lock();
        if let Some(End::Gone) = st.end {
            return Err(End::Gone.error(&self.name));
        }
        if let Some(tx) = &st.tx {
            if st.position.saturating_sub(cursor) > JOIN_DISTANCE {
                return Ok(None);
            }
            return Ok(Some((tx.subscribe(), st.position)));
        }
        let Some(topic) = self.topic.upgrade() else {
            st.end = Some(End::Gone);
            return Err(End::Gone.error(&self.name));
        };
        // Subscribed before reading next_seq: no commit after it goes unseen.
        let watch = topic.log.watch();
        let position = topic.log.next_seq();
        drop(topic);
        if position.saturating_sub(cursor) > JOIN_DISTANCE {
            return Ok(None);
        }
        let (tx, rx) = broadcast::channel(BROADCAST_BATCHES);
        st.generation += 1;
        st.tx = Some(tx);
        st.position = position;
        st.end = None;
        self.readers.fetch_add(1, Ordering::Relaxed);
        let guard = ReaderGuard {
            hub: self.clone(),
            generation: st.generation,
        };
        tokio::spawn(read_loop(guard, watch, cancel.clone(), position));
        Ok(Some((rx, position)))
    }

    fn end(&self) -> Option<End> {
        self.state.lock().end.clone()
    }
}

/// Marks the reader stopped however its task ends (even by a panic).
struct ReaderGuard {
    hub: Arc<Hub>,
    generation: u64,
}

impl ReaderGuard {
    /// Stops this run under the state lock; its listeners see the broadcast close.
    fn stop(&self, st: &mut HubState, end: Option<End>) {
        if st.generation == self.generation && st.tx.is_some() {
            st.tx = None;
            st.end = end;
        }
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut st = self.hub.state.lock();
        self.stop(&mut st, None);
        self.hub.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shared reader: reads what the log commits from `next` on and
/// broadcasts it, until no listener is left, the topic is gone, a read
/// fails, or the engine shuts down.
async fn read_loop(
    guard: ReaderGuard,
    mut watch: watch::Receiver<Seq>,
    cancel: CancellationToken,
    mut next: Seq,
) {
    let hub = guard.hub.clone();
    loop {
        let committed = *watch.borrow_and_update();
        if committed > next {
            hub.hub_reads.fetch_add(1, Ordering::Relaxed);
            let read = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                read = read_log(hub.topic.clone(), next, READ_MESSAGES) => read,
            };
            let mut st = hub.state.lock();
            let read = match read {
                Ok(read) => read,
                Err(e) => return guard.stop(&mut st, Some(End::of(&e))),
            };
            let Some(tx) = st.tx.as_ref().filter(|_| st.generation == guard.generation) else {
                return;
            };
            // An empty read means nothing below `committed` is retained any
            // more; listeners see the jump as a gap with the next message.
            next = match read.messages.last() {
                Some(last) => last.seq + 1,
                None => read.end.max(next),
            };
            for run in runs(read.messages) {
                // No receiver is not an error: listeners may be catching up.
                let _ = tx.send(run);
            }
            st.position = next;
            if st.listeners == 0 {
                return guard.stop(&mut st, None);
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = hub.idle.notified() => {
                let mut st = hub.state.lock();
                if st.listeners == 0 {
                    return guard.stop(&mut st, None);
                }
            }
            changed = watch.changed() => {
                if changed.is_err() {
                    // The log is gone: its topic was dropped.
                    return guard.stop(&mut hub.state.lock(), Some(End::Gone));
                }
            }
        }
    }
}

/// What one log read found.
struct Read {
    /// The log's next_seq before the read: an empty read means nothing from
    /// the cursor up to here is retained.
    end: Seq,
    /// Named messages, in seq order (not necessarily contiguous).
    messages: Vec<Message>,
}

/// Reads up to `max` messages from `from` on a blocking thread and names them.
/// `Err(TopicNotFound)` once the topic is gone (dropped, or its files removed).
async fn read_log(topic: Weak<Topic>, from: Seq, max: usize) -> Result<Read> {
    let read = tokio::task::spawn_blocking(move || {
        let topic = topic
            .upgrade()
            .ok_or_else(|| Error::TopicNotFound(String::new()))?;
        let end = topic.log.next_seq();
        let messages = match topic.log.read(from, max, READ_BYTES) {
            Ok(messages) => messages,
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::TopicNotFound(String::new()));
            }
            Err(e) => return Err(e),
        };
        let messages = messages.into_iter().map(|m| topic.named(m)).collect();
        Ok(Read { end, messages })
    });
    read.await
        .map_err(|e| Error::Storage(format!("tail read failed: {e}")))?
}

/// Splits messages into runs of contiguous seqs.
fn runs(messages: Vec<Message>) -> Vec<Shared> {
    let mut out = Vec::new();
    let mut run: Vec<Message> = Vec::new();
    for m in messages {
        if run.last().is_some_and(|last| last.seq + 1 != m.seq) {
            out.push(Shared::from(std::mem::take(&mut run)));
        }
        run.push(m);
    }
    if !run.is_empty() {
        out.push(Shared::from(run));
    }
    out
}

/// One tail's state, driven by polling its stream.
struct Listener {
    hub: Arc<Hub>,
    /// The next seq this tail hands out.
    cursor: Seq,
    /// The hub's broadcast, once subscribed.
    rx: Option<broadcast::Receiver<Shared>>,
    /// `rx` carries every message from this seq on; below it the listener reads.
    live_from: Seq,
    pending: VecDeque<TailEvent>,
    cancel: CancellationToken,
    /// Counted in the hub's listeners.
    joined: bool,
    /// An error to yield before ending.
    failed: Option<Error>,
    done: bool,
}

impl Listener {
    fn new(hub: Arc<Hub>, from: Seq, cancel: CancellationToken) -> Listener {
        hub.enter();
        Listener {
            hub,
            cursor: from,
            rx: None,
            live_from: from,
            pending: VecDeque::new(),
            cancel,
            joined: true,
            failed: None,
            done: false,
        }
    }

    /// Subscribes to the hub if close enough to it.
    fn subscribe(&mut self) -> Result<()> {
        if let Some((rx, position)) = self.hub.subscribe(self.cursor, &self.cancel)? {
            self.rx = Some(rx);
            self.live_from = position;
        }
        Ok(())
    }

    fn fail(&mut self, e: Error) {
        self.failed = Some(e);
        self.rx = None;
        self.leave();
    }

    fn leave(&mut self) {
        if std::mem::take(&mut self.joined) {
            self.hub.leave();
        }
    }

    async fn next(&mut self) -> Option<Result<TailEvent>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if self.failed.is_none() && self.cancel.is_cancelled() {
                self.fail(Error::ShuttingDown);
            }
            if let Some(e) = self.failed.take() {
                self.done = true;
                return Some(Err(e));
            }
            let step = match &self.rx {
                None => self.catch_up().await,
                Some(_) if self.cursor < self.live_from => self.catch_up().await,
                Some(_) => self.receive().await,
            };
            if let Err(e) = step {
                self.fail(e);
            }
        }
    }

    /// Reads the log from the cursor: up to the hub's position once
    /// subscribed, a batch at a time until close to the hub before.
    async fn catch_up(&mut self) -> Result<()> {
        let max = match self.rx {
            Some(_) => (self.live_from - self.cursor).min(READ_MESSAGES as u64) as usize,
            None => {
                self.subscribe()?;
                if self.rx.is_some() {
                    return Ok(());
                }
                READ_MESSAGES
            }
        };
        self.hub.catch_up_reads.fetch_add(1, Ordering::Relaxed);
        let read = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Err(Error::ShuttingDown),
            read = read_log(self.hub.topic.clone(), self.cursor, max) => read,
        };
        let read = read.map_err(|e| End::of(&e).error(&self.hub.name))?;
        if read.messages.is_empty() {
            // Nothing is retained from the cursor up to `end`.
            if self.cursor < read.end {
                self.pending.push_back(TailEvent::Gap {
                    from: self.cursor,
                    to: read.end,
                });
                self.cursor = read.end;
            }
            return Ok(());
        }
        for run in runs(read.messages) {
            self.take(MessageBatch::new(run));
        }
        Ok(())
    }

    /// Waits for the hub's next batch.
    async fn receive(&mut self) -> Result<()> {
        let rx = self.rx.as_mut().expect("subscribed");
        let received = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Err(Error::ShuttingDown),
            received = rx.recv() => received,
        };
        match received {
            Ok(run) => self.take(MessageBatch::new(run)),
            // Fell behind the broadcast: catch up from the log, then rejoin.
            Err(RecvError::Lagged(_)) => self.rx = None,
            Err(RecvError::Closed) => {
                self.rx = None;
                if let Some(end) = self.hub.end() {
                    return Err(end.error(&self.hub.name));
                }
                // The reader stopped between runs; the next subscribe restarts it.
            }
        }
        Ok(())
    }

    /// Queues the part of a contiguous run from the cursor on, after a gap
    /// if it starts past the cursor.
    fn take(&mut self, run: MessageBatch) {
        let batch = run.from_seq(self.cursor);
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return;
        };
        if first.seq > self.cursor {
            self.pending.push_back(TailEvent::Gap {
                from: self.cursor,
                to: first.seq,
            });
        }
        self.cursor = last.seq + 1;
        self.pending.push_back(TailEvent::Messages(batch));
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: Seq) -> Message {
        Message {
            seq,
            id: String::new(),
            published_at: 0,
            deliver_at: None,
            key: None,
            headers: Default::default(),
            body: Default::default(),
        }
    }

    #[test]
    fn runs_split_at_holes() {
        let seqs = |runs: Vec<Shared>| -> Vec<Vec<Seq>> {
            runs.iter()
                .map(|r| r.iter().map(|m| m.seq).collect())
                .collect()
        };
        assert!(runs(Vec::new()).is_empty());
        let split = runs([3, 4, 5, 9, 10, 12].map(message).to_vec());
        assert_eq!(seqs(split), vec![vec![3, 4, 5], vec![9, 10], vec![12]]);
    }
}
