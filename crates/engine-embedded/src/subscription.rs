//! A live subscription: the state machine of `courier_core::subscription`
//! behind a lock, fed from its topic's log, with every change journaled.
//!
//! Lock order: a subscription's `state` lock is taken alone, or inside nothing
//! but the engine's registry read lock; journal appends made under it only
//! queue bytes, and log reads under it are page-cache preads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier_core::subscription::{Event, Scanned, SubState};
use courier_core::{
    Clock, Delivery, Error, Message, PullRequest, Result, SeekTarget, Seq, SubscriptionInfo,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
use crate::topic::Topic;

/// Most bytes of message bodies read ahead in one scan.
const SCAN_BYTES: usize = 8 << 20;

/// One journal entry: event number `no` of subscription `sub`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JournalEntry {
    pub sub: u64,
    pub no: u64,
    pub event: Event,
}

pub(crate) struct Subscription {
    pub name: String,
    pub id: u64,
    pub topic: Arc<Topic>,
    pub dlq_topic: String,
    pub state: Mutex<SubState>,
    /// Something changed that may let a waiting pull lease (ack, nack, expiry…).
    pub notify: Notify,
    /// Messages ran out of attempts and wait to be dead-lettered.
    pub exhausted: Notify,
    /// Cancelled when the subscription is deleted.
    pub cancel: CancellationToken,
    /// The event number of the last checkpoint written.
    checkpointed: AtomicU64,
    journal: Journal,
    clock: Clock,
}

impl Subscription {
    pub fn new(
        name: String,
        id: u64,
        topic: Arc<Topic>,
        state: SubState,
        journal: Journal,
        clock: Clock,
        cancel: CancellationToken,
    ) -> Self {
        let dlq_topic = state.config().dead_letter_topic_for(&name);
        let checkpointed = AtomicU64::new(state.applied());
        Self {
            cancel,
            checkpointed,
            name,
            id,
            topic,
            dlq_topic,
            state: Mutex::new(state),
            notify: Notify::new(),
            exhausted: Notify::new(),
            journal,
            clock,
        }
    }

    /// Journals an event that `state` has just applied. Called under the state
    /// lock so the journal order is the apply order.
    pub fn record(&self, state: &SubState, event: Event) {
        let entry = JournalEntry {
            sub: self.id,
            no: state.applied(),
            event,
        };
        let bytes = postcard::to_stdvec(&entry).expect("events always encode");
        self.journal.append_nowait(bytes);
    }

    pub fn checkpointed(&self) -> u64 {
        self.checkpointed.load(Ordering::Acquire)
    }

    pub fn set_checkpointed(&self, applied: u64) {
        self.checkpointed.store(applied, Ordering::Release);
    }

    /// Waits until everything journaled so far is durable.
    pub async fn sync(&self) -> Result<()> {
        // An empty entry is a barrier: replay skips it, and `append` returns once
        // it (and so everything queued before it) is on disk.
        self.journal.append(Vec::new()).await
    }

    /// Leases what is available now, without waiting.
    pub fn try_lease(&self, consumer: &str, max: usize) -> Result<Vec<Delivery>> {
        let log = &self.topic.log;
        let mut read: HashMap<Seq, Message> = HashMap::new();
        let (seqs, deadline, attempts) = {
            let mut st = self.state.lock();
            let now = self.clock.now();
            self.expire_locked(&mut st, now);
            let want = max.min(st.room(consumer));
            if want == 0 {
                return Ok(Vec::new());
            }
            let first = log.first_seq();
            if st.next() < first {
                let e = st.emit(Event::Trimmed { first });
                self.record(&st, e);
            }
            let n = st.scan_wanted(now, want);
            if n > 0 && st.next() < log.next_seq() {
                let batch = log.read(st.next(), n, SCAN_BYTES)?;
                if let Some(last) = batch.last() {
                    let to = last.seq + 1;
                    let ordered = st.config().ordered;
                    let meta = batch
                        .iter()
                        .filter(|m| m.deliver_at.is_some() || (ordered && m.key.is_some()))
                        .map(|m| Scanned {
                            seq: m.seq,
                            key: if ordered { m.key.clone() } else { None },
                            deliver_at: m.deliver_at,
                        })
                        .collect();
                    if let Some(e) = st.scanned(to, now, meta) {
                        self.record(&st, e);
                    }
                    read.extend(batch.into_iter().map(|m| (m.seq, m)));
                }
            }
            let Some(event) = st.lease(now, consumer, want) else {
                return Ok(Vec::new());
            };
            let Event::Leased { seqs, deadline, .. } = &event else {
                unreachable!("lease emits Leased")
            };
            let (seqs, deadline) = (seqs.clone(), *deadline);
            let attempts: Vec<u32> = seqs
                .iter()
                .map(|s| st.pending(*s).map_or(1, |p| p.attempts))
                .collect();
            self.record(&st, event);
            (seqs, deadline, attempts)
        };
        let mut out = Vec::with_capacity(seqs.len());
        let mut gone = false;
        for (seq, attempt) in seqs.into_iter().zip(attempts) {
            let message = match read.remove(&seq) {
                Some(m) => m,
                None => match log.read_one(seq)? {
                    Some(m) => m,
                    None => {
                        gone = true;
                        continue;
                    }
                },
            };
            out.push(Delivery {
                message: self.topic.named(message),
                attempt,
                lease_deadline: deadline,
            });
        }
        if gone {
            // Retention removed messages that were waiting for a redelivery.
            let mut st = self.state.lock();
            let e = st.emit(Event::Trimmed {
                first: log.first_seq(),
            });
            self.record(&st, e);
        }
        Ok(out)
    }

    /// Moves expired leases back to waiting; wakes the dead-letter worker when
    /// some ran out of attempts.
    pub fn expire_locked(&self, st: &mut SubState, now: u64) {
        if let Some(e) = st.expire(now, &mut rand::random::<f64>) {
            self.record(st, e);
            self.exhausted.notify_one();
        }
    }

    /// A waiting pull: returns as soon as something can be leased, or empty at the deadline.
    pub async fn pull(&self, request: &PullRequest) -> Result<Vec<Delivery>> {
        let give_up = tokio::time::Instant::now() + request.wait;
        let mut appended = self.topic.log.watch();
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            appended.borrow_and_update();
            let out = self.try_lease(&request.consumer, request.max_messages)?;
            let now = tokio::time::Instant::now();
            if !out.is_empty() || now >= give_up {
                return Ok(out);
            }
            let wake = self
                .state
                .lock()
                .next_wake()
                .map_or(give_up, |at| self.clock.instant_at(at).min(give_up));
            tokio::select! {
                _ = appended.changed() => {}
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake.max(now + Duration::from_millis(1))) => {}
            }
        }
    }

    /// Settles `seqs`; returns once that is durable. Also when nothing was
    /// pending: a concurrent ack of the same message may have settled it
    /// without having reached the disk yet.
    pub async fn ack(&self, seqs: &[Seq]) -> Result<()> {
        let changed = {
            let mut st = self.state.lock();
            st.ack(seqs).map(|e| self.record(&st, e)).is_some()
        };
        if changed {
            self.notify.notify_waiters();
        }
        self.sync().await
    }

    pub async fn nack(
        &self,
        seqs: &[Seq],
        delay: Option<Duration>,
        error: Option<String>,
    ) -> Result<()> {
        let changed = {
            let mut st = self.state.lock();
            let now = self.clock.now();
            st.nack(seqs, now, delay, error, &mut rand::random::<f64>)
                .map(|e| self.record(&st, e))
                .is_some()
        };
        if changed {
            self.exhausted.notify_one();
            self.notify.notify_waiters();
        }
        self.sync().await
    }

    pub async fn extend(&self, seqs: &[Seq], by: Duration) -> Result<()> {
        let lost = {
            let mut st = self.state.lock();
            let now = self.clock.now();
            // A lease that has run out is lost even if no one has collected it yet.
            self.expire_locked(&mut st, now);
            let (event, lost) = st.extend(seqs, now, by);
            if let Some(e) = event {
                self.record(&st, e);
            }
            lost
        };
        self.sync().await?;
        match lost.first() {
            Some(&seq) => Err(Error::NotLeased {
                subscription: self.name.clone(),
                seq,
            }),
            None => Ok(()),
        }
    }

    pub async fn seek(&self, target: SeekTarget) -> Result<()> {
        let log = &self.topic.log;
        let to = match target {
            SeekTarget::Seq(seq) => seq,
            SeekTarget::Time(t) => log.seq_for_time(t)?,
        }
        .clamp(log.first_seq(), log.next_seq());
        {
            let mut st = self.state.lock();
            let e = st.emit(Event::Seeked { to });
            self.record(&st, e);
        }
        self.notify.notify_waiters();
        self.sync().await
    }

    pub fn info(&self) -> SubscriptionInfo {
        let st = self.state.lock();
        let unread = self.topic.log.next_seq().saturating_sub(st.next());
        let counters = st.counters();
        SubscriptionInfo {
            name: self.name.clone(),
            config: st.config().clone(),
            ack_floor: st.ack_floor(),
            backlog: unread + st.tracked() as u64,
            in_flight: st.in_flight() as u64,
            waiting: st.waiting() as u64,
            delivered_total: counters.delivered,
            acked_total: counters.acked,
            dead_lettered_total: counters.dead_lettered,
        }
    }
}
