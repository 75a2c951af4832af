//! The embedded engine's subscription state machine: which messages of a topic a subscription
//! has settled, which are leased to whom, which wait for a retry or a delivery
//! time, and which are blocked behind an earlier message of the same ordering key.
//!
//! It does no I/O and reads no clock: an engine feeds it what it read from the
//! log and the current time, and every change happens through [`SubState::apply`]
//! of an [`Event`]. Engines journal those events and replay them over a
//! [`Snapshot`] after a restart, which is why `apply` must stay deterministic
//! (decisions that need randomness or time are taken before, and carried in
//! the event).
//!
//! # Invariants
//! - Every sequence below `next` that is not in `pending` is settled (acked,
//!   dead-lettered, trimmed by retention or skipped by a seek). Nothing at or
//!   above `next` has been looked at. So memory is bounded by what is tracked
//!   (in flight, waiting for a retry or a delivery time, blocked behind a key),
//!   never by the backlog.
//! - Each pending entry is in exactly one index that matches its state:
//!   `leases` (leased), `ready` (waiting and deliverable once its time comes),
//!   `exhausted` (out of attempts or rejected, to be dead-lettered), `dying`
//!   (being dead-lettered), or none (blocked behind an earlier message of its key).
//! - In an ordered subscription only the lowest pending sequence of a key can be
//!   leased, and only while no other message of the key is (one can be when a
//!   replayed dead letter sorted before it), so one message per key is in
//!   flight and keys are delivered in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use courier_core::types::{Millis, Outcome, RetryPolicy, Seq, SubscriptionConfig};

/// What an engine read from the log about one message, when it is more than
/// a plain message: it has an ordering key (recorded only for ordered
/// subscriptions) or a delivery time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scanned {
    pub seq: Seq,
    pub key: Option<String>,
    pub deliver_at: Option<Millis>,
}

/// Every change to a subscription's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Messages `next..to` were read from the log and are now tracked, ready at
    /// `at` (or at their delivery time). `meta` holds the non-plain ones.
    Scanned {
        to: Seq,
        at: Millis,
        meta: Vec<Scanned>,
        /// Ranges `[from, to)` inside the scan not to track: delayed messages
        /// that the topic's delay index hands over when due, and holes left
        /// by a lost log tail.
        skip: Vec<(Seq, Seq)>,
        /// How many of the skipped messages were left to the delay index
        /// (the rest of `skip` are holes).
        deferred: u64,
    },
    /// Delayed messages came due in the topic's delay index: tracked from
    /// now on (those at or above `floor` and below `next`), and the index has
    /// been consumed up to `cursor`.
    Due {
        seqs: Vec<(Seq, Millis)>,
        cursor: (Millis, Seq),
    },
    Leased {
        consumer: String,
        deadline: Millis,
        seqs: Vec<Seq>,
    },
    Acked {
        seqs: Vec<Seq>,
    },
    /// Leased messages go back to waiting until the given time (a nack or an
    /// expired lease), remembering why for the dead letter.
    Retry {
        at: Vec<(Seq, Millis)>,
        error: Option<String>,
    },
    Extended {
        deadline: Millis,
        seqs: Vec<Seq>,
    },
    /// The messages were stored in the dead-letter topic and are settled here,
    /// those still out of attempts: a seek or a replay may have brought a
    /// fresh copy back while they were being stored.
    DeadLettered {
        seqs: Vec<Seq>,
    },
    /// Everything below `to` counts as settled, everything from it on is delivered.
    Seeked {
        to: Seq,
    },
    /// Retention removed everything below `first` from the topic.
    Trimmed {
        first: Seq,
    },
    /// The subscription's settings changed (its topic, start and ordering never do).
    Reconfigured {
        ack_deadline_ms: u64,
        max_in_flight: u32,
        max_in_flight_per_consumer: u32,
        retry: RetryPolicy,
        dead_letter_topic: Option<String>,
    },
    /// Dead letters put back with fresh attempts; `dlq_cursor` is the last
    /// dead-letter-topic sequence replayed.
    Replayed {
        seqs: Vec<(Seq, Option<String>)>,
        at: Millis,
        dlq_cursor: Seq,
    },
    // New variants go last: journals encode the variant's index, so older
    // journals stay readable.
    /// Leased messages given back untried: the lease's attempt is taken back
    /// and they are deliverable at once, ahead of what became deliverable
    /// after them (waiting since time 0).
    Released {
        seqs: Vec<Seq>,
    },
    /// Leased messages the consumer rejected: dead-lettered whatever attempts
    /// remain (even when the retry policy never dead-letters), with `error`
    /// as their last error.
    Rejected {
        seqs: Vec<Seq>,
        error: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum EntryState {
    Waiting {
        at: Millis,
    },
    Leased {
        consumer: Arc<str>,
        deadline: Millis,
        /// The number of the event that granted this lease: unique within
        /// the subscription, so it fences tokens of earlier leases.
        lease: u64,
    },
    /// Being moved to the dead-letter topic; never journaled nor in a
    /// snapshot (see [`SubState::snapshot`]), so its form may change.
    Dying {
        /// It was rejected: if the dead-lettering does not finish it goes
        /// back to `Rejected`, not to waiting.
        rejected: bool,
    },
    // New variants go last: snapshots encode the variant's index, so older
    // snapshots stay readable.
    /// Rejected by the consumer: to be dead-lettered whatever its attempts.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// The number of the event that began tracking this message (scan, due
    /// or replay): names this incarnation of it, so its dead letter gets the
    /// same id however often a crash makes the engine store it again.
    born: u64,
    attempts: u32,
    key: Option<Arc<str>>,
    state: EntryState,
    /// Shared: one nack or expiry gives the same text to many messages, and
    /// the entry stays small (it is moved whenever its map node changes).
    last_error: Option<Arc<str>>,
}

/// A pending message as the engine needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingView {
    pub seq: Seq,
    pub born: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub lease_deadline: Option<Millis>,
}

/// Monotonic counters kept with the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub delivered: u64,
    pub acked: u64,
    pub dead_lettered: u64,
}

/// The persisted form of a [`SubState`]: small, because pending is bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub applied: u64,
    pub next: Seq,
    pub floor: Seq,
    pub delay_cursor: (Millis, Seq),
    pub deferred: u64,
    pub dlq_cursor: Seq,
    pub counters: Counters,
    entries: Vec<(Seq, Entry)>,
}

#[derive(Debug, Clone)]
pub struct SubState {
    config: SubscriptionConfig,
    /// Number of events applied: the journal position of this state.
    applied: u64,
    next: Seq,
    /// Nothing below this is delivered from the delay index (the start, the
    /// last seek target, or what retention removed).
    floor: Seq,
    /// How far the topic's delay index has been consumed, in (deliver_at, seq)
    /// order. A scanned message due after the cursor's time is left to the index.
    delay_cursor: (Millis, Seq),
    /// Messages left to the delay index and not taken back yet (counted in
    /// the backlog; retention may remove some, see [`deferred`](Self::deferred)).
    deferred: u64,
    pending: BTreeMap<Seq, Entry>,
    ready: BTreeSet<(Millis, Seq)>,
    leases: BTreeSet<(Millis, Seq)>,
    exhausted: BTreeSet<Seq>,
    dying: BTreeSet<Seq>,
    keys: HashMap<Arc<str>, BTreeSet<Seq>>,
    by_consumer: HashMap<Arc<str>, u32>,
    /// Leased messages per ordering key: a key with one delivers nothing else.
    /// Only its head is, except after a replay sorted before a leased head.
    busy_keys: HashMap<Arc<str>, u32>,
    dlq_cursor: Seq,
    counters: Counters,
}

/// How many messages a subscription tracks at most beyond those in flight
/// (waiting for a delivery time or a retry, blocked behind a key). Reading
/// ahead stops there, which is what bounds memory for any backlog.
pub const TRACK_LIMIT: usize = 100_000;

impl SubState {
    /// A fresh subscription whose first message to deliver is `start`.
    pub fn new(config: SubscriptionConfig, start: Seq) -> Self {
        Self {
            config,
            applied: 0,
            next: start.max(1),
            floor: start.max(1),
            delay_cursor: (0, 0),
            deferred: 0,
            pending: BTreeMap::new(),
            ready: BTreeSet::new(),
            leases: BTreeSet::new(),
            exhausted: BTreeSet::new(),
            dying: BTreeSet::new(),
            keys: HashMap::new(),
            by_consumer: HashMap::new(),
            busy_keys: HashMap::new(),
            dlq_cursor: 0,
            counters: Counters::default(),
        }
    }

    pub fn restore(config: SubscriptionConfig, snapshot: Snapshot) -> Self {
        let mut state = Self::new(config, snapshot.next);
        state.applied = snapshot.applied;
        state.floor = snapshot.floor;
        state.delay_cursor = snapshot.delay_cursor;
        state.deferred = snapshot.deferred;
        state.dlq_cursor = snapshot.dlq_cursor;
        state.counters = snapshot.counters;
        for (seq, entry) in snapshot.entries {
            state.insert(seq, entry);
        }
        state
    }

    pub fn snapshot(&self) -> Snapshot {
        let entries = self
            .pending
            .iter()
            .map(|(&seq, e)| {
                let mut e = e.clone();
                // A dead-lettering that did not finish is redone after a restart:
                // the entry is still exhausted (or rejected), so it lands in
                // `exhausted` again.
                if let EntryState::Dying { rejected } = e.state {
                    e.state = if rejected {
                        EntryState::Rejected
                    } else {
                        EntryState::Waiting { at: 0 }
                    };
                }
                (seq, e)
            })
            .collect();
        Snapshot {
            applied: self.applied,
            next: self.next,
            floor: self.floor,
            delay_cursor: self.delay_cursor,
            deferred: self.deferred,
            dlq_cursor: self.dlq_cursor,
            counters: self.counters,
            entries,
        }
    }

    pub fn config(&self) -> &SubscriptionConfig {
        &self.config
    }
    pub fn applied(&self) -> u64 {
        self.applied
    }
    /// The first sequence not yet read from the log.
    pub fn next(&self) -> Seq {
        self.next
    }
    /// Every sequence below this is settled.
    pub fn ack_floor(&self) -> Seq {
        self.pending
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next)
            .min(self.next)
    }
    pub fn floor(&self) -> Seq {
        self.floor
    }
    pub fn delay_cursor(&self) -> (Millis, Seq) {
        self.delay_cursor
    }
    /// Messages waiting in the delay index for this subscription. Exact but
    /// for retention removing some while they wait: never more than could be
    /// there (everything read and untracked since the floor).
    pub fn deferred(&self) -> u64 {
        let read = self.next.saturating_sub(self.floor);
        self.deferred
            .min(read.saturating_sub(self.pending.len() as u64))
    }
    /// Room left for tracking more messages.
    pub fn track_room(&self) -> usize {
        TRACK_LIMIT.saturating_sub(self.pending.len())
    }
    pub fn dlq_cursor(&self) -> Seq {
        self.dlq_cursor
    }
    pub fn counters(&self) -> Counters {
        self.counters
    }
    pub fn tracked(&self) -> usize {
        self.pending.len()
    }
    pub fn in_flight(&self) -> usize {
        self.leases.len()
    }
    /// Tracked messages neither leased nor being dead-lettered.
    pub fn waiting(&self) -> usize {
        self.pending.len() - self.leases.len() - self.dying.len()
    }
    pub fn pending(&self, seq: Seq) -> Option<PendingView> {
        self.pending.get(&seq).map(|e| PendingView {
            seq,
            born: e.born,
            attempts: e.attempts,
            last_error: e.last_error.as_deref().map(str::to_string),
            lease_deadline: match e.state {
                EntryState::Leased { deadline, .. } => Some(deadline),
                _ => None,
            },
        })
    }
    /// Whether `lease` is the current lease of `seq`, and if not, why.
    pub fn lease_status(&self, seq: Seq, lease: u64) -> Outcome {
        match self.pending.get(&seq) {
            None => Outcome::NotFound,
            Some(Entry {
                state: EntryState::Leased { lease: l, .. },
                ..
            }) if *l == lease => Outcome::Ok,
            // Leases of this incarnation are numbered after its birth: an
            // earlier number is a token from before a replay or seek.
            Some(e) if e.attempts == 0 && lease <= e.born => Outcome::NotLeased,
            Some(_) => Outcome::LeaseLost,
        }
    }

    pub fn is_leased(&self, seq: Seq) -> bool {
        matches!(
            self.pending.get(&seq),
            Some(Entry {
                state: EntryState::Leased { .. },
                ..
            })
        )
    }

    /// How many more messages may be leased now to `consumer`.
    pub fn room(&self, consumer: &str) -> usize {
        let total = (self.config.max_in_flight as usize).saturating_sub(self.leases.len());
        let mine = self.by_consumer.get(consumer).copied().unwrap_or(0) as usize;
        let per = (self.config.max_in_flight_per_consumer as usize).saturating_sub(mine);
        total.min(per)
    }

    /// How many new messages the engine should read from the log (starting at
    /// [`next`](Self::next)) so that `want` can be leased now.
    pub fn scan_wanted(&self, now: Millis, want: usize) -> usize {
        let ready_now = self.ready.range(..=(now, Seq::MAX)).take(want).count();
        let room = TRACK_LIMIT.saturating_sub(self.pending.len());
        want.saturating_sub(ready_now).min(room)
    }

    /// The earliest time at which something becomes deliverable or a lease expires.
    pub fn next_wake(&self) -> Option<Millis> {
        let ready = self.ready.first().map(|&(at, _)| at);
        let lease = self.leases.first().map(|&(at, _)| at);
        match (ready, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Leases up to `max` deliverable messages to `consumer`.
    pub fn lease(&mut self, now: Millis, consumer: &str, max: usize) -> Option<Event> {
        let n = max.min(self.room(consumer));
        let seqs: Vec<Seq> = self
            .ready
            .range(..=(now, Seq::MAX))
            .take(n)
            .map(|&(_, seq)| seq)
            .collect();
        if seqs.is_empty() {
            return None;
        }
        let deadline = after(now, self.config.ack_deadline);
        Some(self.emit(Event::Leased {
            consumer: consumer.to_string(),
            deadline,
            seqs,
        }))
    }

    /// Expired leases go back to waiting for their backoff. `unit` yields
    /// uniform random numbers in `[0, 1)` for the jitter.
    pub fn expire(&mut self, now: Millis, unit: &mut dyn FnMut() -> f64) -> Option<Event> {
        let expired: Vec<(Millis, Seq)> = self.leases.range(..=(now, Seq::MAX)).copied().collect();
        if expired.is_empty() {
            return None;
        }
        // The backoff runs from the lease's deadline, not from whenever the
        // expiry is noticed.
        let at = expired
            .iter()
            .flat_map(|&(deadline, seq)| self.retry_times(&[seq], deadline, None, unit))
            .collect();
        Some(self.emit(Event::Retry {
            at,
            error: Some("lease expired".to_string()),
        }))
    }

    /// Gives leased messages back; the others in `seqs` are ignored.
    pub fn nack(
        &mut self,
        seqs: &[Seq],
        now: Millis,
        delay: Option<Duration>,
        error: Option<String>,
        unit: &mut dyn FnMut() -> f64,
    ) -> Option<Event> {
        let leased: Vec<Seq> = seqs
            .iter()
            .copied()
            .filter(|s| self.is_leased(*s))
            .collect();
        if leased.is_empty() {
            return None;
        }
        let at = self.retry_times(&leased, now, delay, unit);
        Some(self.emit(Event::Retry { at, error }))
    }

    fn retry_times(
        &self,
        seqs: &[Seq],
        now: Millis,
        delay: Option<Duration>,
        unit: &mut dyn FnMut() -> f64,
    ) -> Vec<(Seq, Millis)> {
        let policy = &self.config.retry;
        seqs.iter()
            .map(|&seq| {
                let attempts = self.pending[&seq].attempts;
                let wait = match delay {
                    _ if policy.exhausted(attempts) => Duration::ZERO,
                    Some(d) => d,
                    None => policy.backoff(attempts, unit()),
                };
                (seq, after(now, wait))
            })
            .collect()
    }

    /// Gives leased messages back untried (see [`Event::Released`]); the
    /// others in `seqs` are ignored.
    pub fn release(&mut self, seqs: &[Seq]) -> Option<Event> {
        let seqs: Vec<Seq> = seqs
            .iter()
            .copied()
            .filter(|s| self.is_leased(*s))
            .collect();
        (!seqs.is_empty()).then(|| self.emit(Event::Released { seqs }))
    }

    /// Marks leased messages for dead-lettering at once (see
    /// [`Event::Rejected`]); the others in `seqs` are ignored.
    pub fn reject(&mut self, seqs: &[Seq], error: Option<String>) -> Option<Event> {
        let seqs: Vec<Seq> = seqs
            .iter()
            .copied()
            .filter(|s| self.is_leased(*s))
            .collect();
        (!seqs.is_empty()).then(|| self.emit(Event::Rejected { seqs, error }))
    }

    /// Settles the pending messages among `seqs` (leased or waiting).
    pub fn ack(&mut self, seqs: &[Seq]) -> Option<Event> {
        let seqs: Vec<Seq> = seqs
            .iter()
            .copied()
            .filter(|s| {
                matches!(self.pending.get(s), Some(e) if !matches!(e.state, EntryState::Dying { .. }))
            })
            .collect();
        (!seqs.is_empty()).then(|| self.emit(Event::Acked { seqs }))
    }

    /// Extends leases; returns the event and the sequences that were not leased.
    pub fn extend(&mut self, seqs: &[Seq], now: Millis, by: Duration) -> (Option<Event>, Vec<Seq>) {
        let (leased, lost): (Vec<Seq>, Vec<Seq>) = seqs.iter().partition(|s| self.is_leased(**s));
        let deadline = after(now, by);
        let event = (!leased.is_empty()).then(|| {
            self.emit(Event::Extended {
                deadline,
                seqs: leased,
            })
        });
        (event, lost)
    }

    /// Marks messages out of attempts (or rejected) as being dead-lettered and returns them
    /// with their attempts and last error. The engine stores them in the
    /// dead-letter topic, then applies [`Event::DeadLettered`], or
    /// [`abort_dead_letter`](Self::abort_dead_letter) if that failed.
    pub fn take_exhausted(&mut self, max: usize) -> Vec<PendingView> {
        let seqs: Vec<Seq> = self.exhausted.iter().take(max).copied().collect();
        seqs.into_iter()
            .map(|seq| {
                self.unplace(seq);
                let entry = self
                    .pending
                    .get_mut(&seq)
                    .expect("indexed entry is pending");
                entry.state = EntryState::Dying {
                    rejected: entry.state == EntryState::Rejected,
                };
                self.dying.insert(seq);
                PendingView {
                    seq,
                    born: entry.born,
                    attempts: entry.attempts,
                    last_error: entry.last_error.as_deref().map(str::to_string),
                    lease_deadline: None,
                }
            })
            .collect()
    }

    pub fn abort_dead_letter(&mut self, seqs: &[Seq]) {
        for &seq in seqs {
            if self.dying.remove(&seq) {
                let entry = self.pending.get_mut(&seq).expect("dying entry is pending");
                entry.state = match entry.state {
                    EntryState::Dying { rejected: true } => EntryState::Rejected,
                    _ => EntryState::Waiting { at: 0 },
                };
                self.place(seq);
            }
        }
    }

    /// Builds the event for messages read from the log up to `to` (exclusive).
    pub fn scanned(&mut self, to: Seq, now: Millis, meta: Vec<Scanned>) -> Option<Event> {
        self.scanned_skipping(to, now, meta, Vec::new(), 0)
    }

    /// Like [`scanned`](Self::scanned), leaving the `skip` ranges untracked.
    pub fn scanned_skipping(
        &mut self,
        to: Seq,
        now: Millis,
        meta: Vec<Scanned>,
        skip: Vec<(Seq, Seq)>,
        deferred: u64,
    ) -> Option<Event> {
        (to > self.next).then(|| {
            self.emit(Event::Scanned {
                to,
                at: now,
                meta,
                skip,
                deferred,
            })
        })
    }

    /// Takes delayed messages that came due from the delay index (`due` in
    /// index order, ending at `cursor`).
    pub fn due(&mut self, due: Vec<(Seq, Millis)>, cursor: (Millis, Seq)) -> Option<Event> {
        (cursor > self.delay_cursor).then(|| self.emit(Event::Due { seqs: due, cursor }))
    }

    /// Takes on the mutable settings of `config`. Push settings are taken as
    /// they are, with no event: the state machine never reads them, and a
    /// restart takes them from the engine's metadata with the rest of the
    /// configuration.
    pub fn reconfigure(&mut self, config: &SubscriptionConfig) -> Option<Event> {
        self.config.push = config.push.clone();
        let event = Event::Reconfigured {
            ack_deadline_ms: u64::try_from(config.ack_deadline.as_millis()).unwrap_or(u64::MAX),
            max_in_flight: config.max_in_flight,
            max_in_flight_per_consumer: config.max_in_flight_per_consumer,
            retry: config.retry.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
        };
        let mut changed = self.config.clone();
        changed.ack_deadline = config.ack_deadline;
        changed.max_in_flight = config.max_in_flight;
        changed.max_in_flight_per_consumer = config.max_in_flight_per_consumer;
        changed.retry = config.retry.clone();
        changed.dead_letter_topic = config.dead_letter_topic.clone();
        (changed != self.config).then(|| self.emit(event))
    }

    /// Applies `event` and returns it, for the engine to journal.
    pub fn emit(&mut self, event: Event) -> Event {
        self.apply(&event);
        event
    }

    /// The one place state changes.
    pub fn apply(&mut self, event: &Event) {
        self.applied += 1;
        match event {
            Event::Scanned {
                to,
                at,
                meta,
                skip,
                deferred,
            } => {
                self.deferred += deferred;
                let mut meta = meta.iter().peekable();
                let mut skip = skip.iter().peekable();
                for seq in self.next..*to {
                    while skip.peek().is_some_and(|&&(_, end)| end <= seq) {
                        skip.next();
                    }
                    if skip.peek().is_some_and(|&&(start, _)| start <= seq) {
                        continue;
                    }
                    let (key, deliver_at) = match meta.peek() {
                        Some(m) if m.seq == seq => {
                            let m = meta.next().expect("peeked");
                            (m.key.as_deref().map(Arc::from), m.deliver_at)
                        }
                        _ => (None, None),
                    };
                    let key = if self.config.ordered { key } else { None };
                    let at = deliver_at.map_or(*at, |d| d.max(*at));
                    self.insert(
                        seq,
                        Entry {
                            born: self.applied,
                            attempts: 0,
                            key,
                            state: EntryState::Waiting { at },
                            last_error: None,
                        },
                    );
                }
                self.next = self.next.max(*to);
            }
            Event::Due { seqs, cursor } => {
                for &(seq, at) in seqs {
                    if seq < self.floor || seq >= self.next || self.pending.contains_key(&seq) {
                        continue;
                    }
                    self.deferred = self.deferred.saturating_sub(1);
                    self.insert(
                        seq,
                        Entry {
                            born: self.applied,
                            attempts: 0,
                            key: None,
                            state: EntryState::Waiting { at },
                            last_error: None,
                        },
                    );
                }
                self.delay_cursor = self.delay_cursor.max(*cursor);
            }
            Event::Leased {
                consumer,
                deadline,
                seqs,
            } => {
                let consumer: Arc<str> = Arc::from(consumer.as_str());
                let lease = self.applied;
                for &seq in seqs {
                    if !self.pending.contains_key(&seq) {
                        continue;
                    }
                    self.unplace(seq);
                    let entry = self.pending.get_mut(&seq).expect("checked");
                    entry.attempts += 1;
                    entry.state = EntryState::Leased {
                        consumer: consumer.clone(),
                        deadline: *deadline,
                        lease,
                    };
                    self.counters.delivered += 1;
                    self.place(seq);
                }
            }
            Event::Acked { seqs } => {
                for &seq in seqs {
                    if self.remove(seq) {
                        self.counters.acked += 1;
                    }
                }
            }
            Event::Retry { at, error } => {
                let shared_error: Option<Arc<str>> = error.as_deref().map(Arc::from);
                for &(seq, at) in at {
                    if !self.is_leased(seq) {
                        continue;
                    }
                    self.unplace(seq);
                    let entry = self.pending.get_mut(&seq).expect("leased");
                    entry.state = EntryState::Waiting { at };
                    entry.last_error = shared_error.clone();
                    let key = entry.key.clone();
                    self.place(seq);
                    // Its key is free again: a replayed message that sorted
                    // before it goes first.
                    if let Some(key) = key {
                        self.place_head(&key);
                    }
                }
            }
            Event::Extended { deadline, seqs } => {
                for &seq in seqs {
                    if !self.is_leased(seq) {
                        continue;
                    }
                    self.unplace(seq);
                    if let Some(Entry {
                        state: EntryState::Leased { deadline: d, .. },
                        ..
                    }) = self.pending.get_mut(&seq)
                    {
                        *d = *deadline;
                    }
                    self.place(seq);
                }
            }
            Event::DeadLettered { seqs } => {
                for &seq in seqs {
                    // Only what is still out of attempts (being dead-lettered,
                    // or waiting for it when replayed over a snapshot): a seek
                    // or replay may have brought a fresh copy back meanwhile.
                    let dead = self.pending.get(&seq).is_some_and(|e| match e.state {
                        EntryState::Dying { .. } | EntryState::Rejected => true,
                        EntryState::Waiting { .. } => self.config.retry.exhausted(e.attempts),
                        EntryState::Leased { .. } => false,
                    });
                    if dead && self.remove(seq) {
                        self.counters.dead_lettered += 1;
                    }
                }
            }
            Event::Seeked { to } => {
                let keep = (
                    self.applied,
                    self.dlq_cursor,
                    self.counters,
                    self.delay_cursor,
                );
                *self = Self::new(self.config.clone(), *to);
                (
                    self.applied,
                    self.dlq_cursor,
                    self.counters,
                    self.delay_cursor,
                ) = keep;
            }
            Event::Trimmed { first } => {
                self.floor = self.floor.max(*first);
                let gone: Vec<Seq> = self.pending.range(..*first).map(|(&s, _)| s).collect();
                for seq in gone {
                    self.remove(seq);
                }
                self.next = self.next.max(*first);
            }
            Event::Reconfigured {
                ack_deadline_ms,
                max_in_flight,
                max_in_flight_per_consumer,
                retry,
                dead_letter_topic,
            } => {
                // Which index an entry sits in depends on the retry policy
                // (out of attempts or not): take every entry out, change, put back.
                let seqs: Vec<Seq> = self.pending.keys().copied().collect();
                for &seq in &seqs {
                    self.unplace(seq);
                }
                let c = &mut self.config;
                if c.dead_letter_topic != *dead_letter_topic {
                    // The replay cursor counted the old dead-letter topic.
                    self.dlq_cursor = 0;
                }
                c.ack_deadline = Duration::from_millis(*ack_deadline_ms);
                c.max_in_flight = *max_in_flight;
                c.max_in_flight_per_consumer = *max_in_flight_per_consumer;
                c.retry = retry.clone();
                c.dead_letter_topic = dead_letter_topic.clone();
                // Leases first: they mark their keys busy for the others.
                let (leased, rest): (Vec<Seq>, Vec<Seq>) =
                    seqs.into_iter().partition(|s| self.is_leased(*s));
                for seq in leased.into_iter().chain(rest) {
                    self.place(seq);
                }
            }
            Event::Replayed {
                seqs,
                at,
                dlq_cursor,
            } => {
                for (seq, key) in seqs {
                    if *seq >= self.next || self.pending.contains_key(seq) {
                        continue;
                    }
                    let key = if self.config.ordered {
                        key.as_deref().map(Arc::from)
                    } else {
                        None
                    };
                    self.insert(
                        *seq,
                        Entry {
                            born: self.applied,
                            attempts: 0,
                            key,
                            state: EntryState::Waiting { at: *at },
                            last_error: None,
                        },
                    );
                }
                self.dlq_cursor = self.dlq_cursor.max(*dlq_cursor);
            }
            Event::Released { seqs } => {
                for &seq in seqs {
                    if !self.is_leased(seq) {
                        continue;
                    }
                    self.unplace(seq);
                    let entry = self.pending.get_mut(&seq).expect("leased");
                    // The attempt was counted when leased; it was never made.
                    entry.attempts = entry.attempts.saturating_sub(1);
                    entry.state = EntryState::Waiting { at: 0 };
                    let key = entry.key.clone();
                    self.place(seq);
                    if let Some(key) = key {
                        self.place_head(&key);
                    }
                }
            }
            Event::Rejected { seqs, error } => {
                let shared_error: Option<Arc<str>> = error.as_deref().map(Arc::from);
                for &seq in seqs {
                    if !self.is_leased(seq) {
                        continue;
                    }
                    self.unplace(seq);
                    let entry = self.pending.get_mut(&seq).expect("leased");
                    entry.state = EntryState::Rejected;
                    entry.last_error = shared_error.clone();
                    let key = entry.key.clone();
                    self.place(seq);
                    // Its key stays held by it until it is dead-lettered,
                    // unless a replayed message sorted before it.
                    if let Some(key) = key {
                        self.place_head(&key);
                    }
                }
            }
        }
    }

    fn insert(&mut self, seq: Seq, entry: Entry) {
        let old_head = entry.key.as_ref().and_then(|key| {
            let queue = self.keys.entry(key.clone()).or_default();
            let old_head = queue.first().copied();
            queue.insert(seq);
            old_head
        });
        self.pending.insert(seq, entry);
        self.place(seq);
        // A replayed message can sort before the key's current head: the old
        // head is then blocked behind it, unless it is already leased (the
        // replayed message waits for that lease) or being dead-lettered. And a
        // leased message restored after its head blocks that head.
        if let Some(old) = old_head {
            self.unplace(old);
            self.place(old);
        }
    }

    fn place_head(&mut self, key: &Arc<str>) {
        if let Some(head) = self.keys.get(key).and_then(|q| q.first()).copied() {
            self.place(head);
        }
    }

    /// Settles `seq`; unblocks the next message of its key.
    fn remove(&mut self, seq: Seq) -> bool {
        if !self.pending.contains_key(&seq) {
            return false;
        }
        self.unplace(seq);
        let entry = self.pending.remove(&seq).expect("checked");
        if let Some(key) = entry.key {
            if let Some(queue) = self.keys.get_mut(&key) {
                queue.remove(&seq);
                match queue.first().copied() {
                    Some(head) => self.place(head),
                    None => {
                        self.keys.remove(&key);
                    }
                }
            }
        }
        true
    }

    fn is_blocked(&self, seq: Seq, entry: &Entry) -> bool {
        match &entry.key {
            Some(key) => {
                self.keys.get(key).and_then(|q| q.first()) != Some(&seq)
                    || self.busy_keys.contains_key(key)
            }
            None => false,
        }
    }

    /// Puts `seq` in the index its state calls for (idempotent).
    fn place(&mut self, seq: Seq) {
        let entry = &self.pending[&seq];
        match &entry.state {
            EntryState::Leased {
                consumer, deadline, ..
            } => {
                if self.leases.insert((*deadline, seq)) {
                    *self.by_consumer.entry(consumer.clone()).or_default() += 1;
                    if let Some(key) = &entry.key {
                        *self.busy_keys.entry(key.clone()).or_default() += 1;
                    }
                }
            }
            EntryState::Dying { .. } => {
                self.dying.insert(seq);
            }
            EntryState::Rejected => {
                self.exhausted.insert(seq);
            }
            EntryState::Waiting { at } => {
                if self.config.retry.exhausted(entry.attempts) {
                    self.exhausted.insert(seq);
                } else if !self.is_blocked(seq, entry) {
                    self.ready.insert((*at, seq));
                }
            }
        }
    }

    /// Takes `seq` out of whatever index holds it.
    fn unplace(&mut self, seq: Seq) {
        let entry = &self.pending[&seq];
        match &entry.state {
            EntryState::Leased {
                consumer, deadline, ..
            } => {
                if self.leases.remove(&(*deadline, seq)) {
                    if let Some(n) = self.by_consumer.get_mut(consumer) {
                        *n -= 1;
                        if *n == 0 {
                            self.by_consumer.remove(consumer);
                        }
                    }
                    if let Some(key) = &entry.key {
                        if let Some(n) = self.busy_keys.get_mut(key) {
                            *n -= 1;
                            if *n == 0 {
                                self.busy_keys.remove(key);
                            }
                        }
                    }
                }
            }
            EntryState::Dying { .. } => {
                self.dying.remove(&seq);
            }
            EntryState::Rejected => {
                self.exhausted.remove(&seq);
            }
            EntryState::Waiting { at } => {
                self.ready.remove(&(*at, seq));
                self.exhausted.remove(&seq);
            }
        }
    }
}

/// `now + d`, saturating: absurd durations from a client must not wrap into the past.
fn after(now: Millis, d: Duration) -> Millis {
    now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
