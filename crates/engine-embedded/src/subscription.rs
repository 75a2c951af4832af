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

use crate::state::{Event, Scanned, SubState};
use courier_core::{
    Clock, Delivery, LeaseToken, Message, Outcome, PullRequest, Result, SeekTarget, Seq,
    SubscriptionConfig, SubscriptionInfo,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
use crate::topic::Topic;

/// Most bytes of message bodies read ahead in one scan.
const SCAN_BYTES: usize = 8 << 20;
/// Reads of the log per lease attempt, at most: bounds how long the state
/// lock is held while looking past messages that cannot be delivered yet.
const SCAN_ROUNDS: usize = 8;
/// Messages read per round once a round found nothing deliverable.
const SCAN_AHEAD: usize = 1024;
/// Delayed messages taken from the delay index per lease attempt, at most.
const DUE_BATCH: usize = 4096;

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

/// Adds `[from, to)` to sorted, disjoint ranges, merging with the last.
fn push_range(ranges: &mut Vec<(Seq, Seq)>, from: Seq, to: Seq) {
    match ranges.last_mut() {
        Some(last) if last.1 >= from => last.1 = last.1.max(to),
        _ => ranges.push((from, to)),
    }
}

/// The embedded engine's lease token: `<seq>-<lease number>`.
pub(crate) fn token(seq: Seq, lease: u64) -> LeaseToken {
    // One per delivery: itoa and one exact allocation instead of `format!`.
    let (mut a, mut b) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (seq, lease) = (a.format(seq), b.format(lease));
    let mut s = String::with_capacity(seq.len() + 1 + lease.len());
    s.push_str(seq);
    s.push('-');
    s.push_str(lease);
    LeaseToken::new(s)
}

fn parse_token(token: &LeaseToken) -> Option<(Seq, u64)> {
    let (seq, lease) = token.as_str().split_once('-')?;
    Some((seq.parse().ok()?, lease.parse().ok()?))
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
        let checkpointed = AtomicU64::new(state.applied());
        Self {
            cancel,
            checkpointed,
            name,
            id,
            topic,
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

    /// Where this subscription's dead letters go (its settings can change).
    pub fn dlq_topic(&self) -> String {
        self.state.lock().config().dead_letter_topic_for(&self.name)
    }

    /// Takes on new settings (already saved in the engine's metadata); push
    /// settings included, which change nothing else.
    pub async fn reconfigure(&self, config: SubscriptionConfig) -> Result<()> {
        {
            let mut st = self.state.lock();
            if let Some(e) = st.reconfigure(&config) {
                self.record(&st, e);
            }
        }
        // Fewer attempts may leave messages out of them; more room may free pulls.
        self.exhausted.notify_one();
        self.notify.notify_waiters();
        self.sync().await
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

    /// Leases what is available now, without waiting. The flag says whether
    /// the log holds more to look at right away: the scan looks past messages
    /// that cannot be delivered yet (delayed, or behind their key) a bounded
    /// amount per call, so the state lock is never held for long, and a pull
    /// that found nothing goes on scanning instead of waiting.
    pub fn try_lease(&self, consumer: &str, max: usize) -> Result<(Vec<Delivery>, bool)> {
        let log = &self.topic.log;
        let mut read: HashMap<Seq, Message> = HashMap::new();
        let mut more = false;
        let (seqs, deadline, attempts, lease) = {
            let mut st = self.state.lock();
            let now = self.clock.now();
            self.expire_locked(&mut st, now);
            let want = max.min(st.room(consumer));
            if want == 0 {
                return Ok((Vec::new(), false));
            }
            let first = log.first_seq();
            if st.next() < first {
                let e = st.emit(Event::Trimmed { first });
                self.record(&st, e);
            }
            self.take_due(&mut st, now)?;
            for round in 0..SCAN_ROUNDS {
                let n = st.scan_wanted(now, want);
                if n == 0 || st.next() >= log.next_seq() {
                    break;
                }
                // After a round that found nothing deliverable, read further
                // ahead than asked: what lies ahead is probably more of the same.
                let n = if round == 0 {
                    n
                } else {
                    n.max(SCAN_AHEAD).min(st.track_room())
                };
                let batch = log.read(st.next(), n, SCAN_BYTES)?;
                let Some(last) = batch.last() else { break };
                let to = last.seq + 1;
                let (meta, skip, deferred) = self.scan_meta(&st, &batch);
                if let Some(e) = st.scanned_skipping(to, now, meta, skip, deferred) {
                    self.record(&st, e);
                }
                read.extend(batch.into_iter().map(|m| (m.seq, m)));
                more = st.next() < log.next_seq() && st.track_room() > 0;
            }
            let Some(event) = st.lease(now, consumer, want) else {
                return Ok((Vec::new(), more));
            };
            let Event::Leased { seqs, deadline, .. } = &event else {
                unreachable!("lease emits Leased")
            };
            let (seqs, deadline) = (seqs.clone(), *deadline);
            // The Leased event's number names the lease (see `SubState::lease_status`).
            let lease = st.applied();
            let attempts: Vec<u32> = seqs
                .iter()
                .map(|s| st.pending(*s).map_or(1, |p| p.attempts))
                .collect();
            self.record(&st, event);
            (seqs, deadline, attempts, lease)
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
                token: token(seq, lease),
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
        Ok((out, more))
    }

    /// What the state machine must know of a scanned batch: ordering keys
    /// (ordered subscriptions) and delivery times, and which messages to leave
    /// untracked (holes in the log).
    ///
    /// An unordered subscription leaves a message due after its delay cursor
    /// to the topic's delay index, which hands it over when it comes due
    /// ([`take_due`](Self::take_due)), so delayed messages cost no memory
    /// while they wait. The entry is made here too, before the skip is
    /// recorded: the publisher's entry may not be in yet. An ordered
    /// subscription tracks them, since a delayed message holds its key.
    fn scan_meta(&self, st: &SubState, batch: &[Message]) -> (Vec<Scanned>, Vec<(Seq, Seq)>, u64) {
        let ordered = st.config().ordered;
        let cursor = st.delay_cursor();
        let left_to_index =
            |m: &Message| !ordered && m.deliver_at.is_some_and(|at| (at, m.seq) > cursor);
        let mut meta = Vec::new();
        let mut skip: Vec<(Seq, Seq)> = Vec::new();
        let mut entries = Vec::new();
        let mut expect = st.next();
        for m in batch {
            // Holes in the log (a lost tail) are skipped too.
            let from = if m.seq > expect { expect } else { m.seq };
            if left_to_index(m) {
                entries.push((m.deliver_at.expect("checked"), m.seq));
                push_range(&mut skip, from, m.seq + 1);
            } else {
                if m.seq > expect {
                    push_range(&mut skip, expect, m.seq);
                }
                if m.deliver_at.is_some() || (ordered && m.key.is_some()) {
                    meta.push(Scanned {
                        seq: m.seq,
                        key: if ordered { m.key.clone() } else { None },
                        deliver_at: m.deliver_at,
                    });
                }
            }
            expect = m.seq + 1;
        }
        if !entries.is_empty() {
            self.topic.delays.insert(&entries);
        }
        (meta, skip, entries.len() as u64)
    }

    /// Takes the delayed messages that came due from the topic's delay
    /// index (unordered subscriptions only; see [`scan_meta`](Self::scan_meta)).
    fn take_due(&self, st: &mut SubState, now: u64) -> Result<()> {
        if st.config().ordered || self.topic.delays.is_empty() {
            return Ok(());
        }
        let cursor = st.delay_cursor();
        if cursor >= (now, Seq::MAX) {
            return Ok(());
        }
        let limit = st.track_room().min(DUE_BATCH);
        if limit == 0 {
            return Ok(());
        }
        let entries = self.topic.delays.range(cursor, now, limit)?;
        let to = match entries.last() {
            Some(&last) if entries.len() == limit => last,
            _ => (now, Seq::MAX),
        };
        let (floor, next) = (st.floor(), st.next());
        let due = entries
            .into_iter()
            .filter(|&(_, seq)| seq >= floor && seq < next && st.pending(seq).is_none())
            .map(|(at, seq)| (seq, at))
            .collect();
        if let Some(e) = st.due(due, to) {
            self.record(st, e);
        }
        Ok(())
    }

    /// When something next becomes deliverable or a lease expires.
    pub fn next_wake(&self, st: &SubState) -> Option<u64> {
        let index = if st.config().ordered {
            None
        } else {
            // A read error here only costs an early wake-up.
            self.topic
                .delays
                .first_after(st.delay_cursor())
                .ok()
                .flatten()
                .map(|(at, _)| at)
        };
        match (st.next_wake(), index) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
            let (out, more) = self.try_lease(&request.consumer, request.max_messages)?;
            let now = tokio::time::Instant::now();
            if !out.is_empty() || now >= give_up {
                return Ok(out);
            }
            if more {
                // More of the log to look past: let others have the lock, then go on.
                tokio::task::yield_now().await;
                continue;
            }
            let wake = self
                .next_wake(&self.state.lock())
                .map_or(give_up, |at| self.clock.instant_at(at).min(give_up));
            tokio::select! {
                _ = appended.changed() => {}
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake.max(now + Duration::from_millis(1))) => {}
            }
        }
    }

    /// The outcome of each token, and the sequences whose leases they hold
    /// (each once). Expired leases are collected first: a lease past its
    /// deadline is lost even if no one has noticed yet.
    fn check_tokens(&self, st: &mut SubState, tokens: &[LeaseToken]) -> (Vec<Outcome>, Vec<Seq>) {
        self.expire_locked(st, self.clock.now());
        let mut seqs = Vec::with_capacity(tokens.len());
        // A stale token of a message is lease_lost whatever else the call
        // holds, since the message's current lease is another; the current
        // token given twice is ok twice and acts once (seqs are deduplicated).
        let outcomes = tokens
            .iter()
            .map(|t| match parse_token(t) {
                Some((seq, lease)) => {
                    let outcome = st.lease_status(seq, lease);
                    if outcome.is_ok() {
                        seqs.push(seq);
                    }
                    outcome
                }
                None => Outcome::NotFound,
            })
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        (outcomes, seqs)
    }

    /// Checks `tokens`, lets `act` turn the messages they hold into an event,
    /// and journals it. Returns each token's outcome and how many acted.
    fn settle(
        &self,
        tokens: &[LeaseToken],
        act: impl FnOnce(&mut SubState, &[Seq], u64) -> Option<Event>,
    ) -> (Vec<Outcome>, usize) {
        let mut st = self.state.lock();
        let (outcomes, held) = self.check_tokens(&mut st, tokens);
        if let Some(e) = act(&mut st, &held, self.clock.now()) {
            self.record(&st, e);
        }
        (outcomes, held.len())
    }

    /// Settles the messages whose current leases `tokens` name; returns once
    /// that is durable.
    pub async fn ack(&self, tokens: &[LeaseToken]) -> Result<Vec<Outcome>> {
        let (outcomes, acked) = self.settle(tokens, |st, held, _| st.ack(held));
        if acked > 0 {
            self.notify.notify_waiters();
            self.sync().await?;
        }
        Ok(outcomes)
    }

    pub async fn nack(
        &self,
        tokens: &[LeaseToken],
        delay: Option<Duration>,
        error: Option<String>,
    ) -> Result<Vec<Outcome>> {
        let (outcomes, nacked) = self.settle(tokens, |st, held, now| {
            st.nack(held, now, delay, error, &mut rand::random::<f64>)
        });
        if nacked > 0 {
            // The only settlement the state does not count; the facade is a
            // no-op unless the process installed a recorder.
            metrics::counter!("courier_messages_nacked_total", "subscription" => self.name.clone())
                .increment(nacked as u64);
            self.exhausted.notify_one();
            self.notify.notify_waiters();
            self.sync().await?;
        }
        Ok(outcomes)
    }

    /// Gives leased messages back untried: deliverable at once, with the
    /// attempt count they had before the lease.
    pub async fn release(&self, tokens: &[LeaseToken]) -> Result<Vec<Outcome>> {
        let (outcomes, released) = self.settle(tokens, |st, held, _| st.release(held));
        if released > 0 {
            self.notify.notify_waiters();
            self.sync().await?;
        }
        Ok(outcomes)
    }

    /// Dead-letters leased messages whatever attempts remain. Returns once
    /// the decision is durable; the dead-letter worker stores them (as it
    /// does messages out of attempts, so a crash neither loses nor doubles them).
    pub async fn reject(
        &self,
        tokens: &[LeaseToken],
        error: Option<String>,
    ) -> Result<Vec<Outcome>> {
        let (outcomes, rejected) = self.settle(tokens, |st, held, _| st.reject(held, error));
        if rejected > 0 {
            self.exhausted.notify_one();
            self.notify.notify_waiters();
            self.sync().await?;
        }
        Ok(outcomes)
    }

    pub async fn extend(&self, tokens: &[LeaseToken], by: Duration) -> Result<Vec<Outcome>> {
        let (outcomes, extended) = self.settle(tokens, |st, held, now| st.extend(held, now, by).0);
        if extended > 0 {
            self.sync().await?;
        }
        Ok(outcomes)
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
            backlog: unread + st.tracked() as u64 + st.deferred(),
            in_flight: st.in_flight() as u64,
            waiting: st.waiting() as u64,
            delivered_total: counters.delivered,
            acked_total: counters.acked,
            dead_lettered_total: counters.dead_lettered,
        }
    }
}
