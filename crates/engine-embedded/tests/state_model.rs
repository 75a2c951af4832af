//! Model-based property test of the subscription state machine.
//!
//! Random sequences of operations drive a [`SubState`] the way an engine does
//! (publish to a topic, scan, lease, ack, nack, release, reject, expire,
//! extend, dead-letter, seek, trim, replay dead letters, checkpoint and
//! restart) and, in lockstep, a
//! deliberately naive model: one status per topic sequence, recomputed from
//! scratch whenever a question is asked. After every operation the two must
//! agree, and the safety properties of the broker are asserted directly on
//! what the state machine hands out. At the end the system is driven to
//! quiescence: every published message must end up settled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use courier_core::types::{Millis, RetryPolicy, Seq, SubscriptionConfig};
use courier_embedded::state::{Counters, Event, Scanned, Snapshot, SubState, TRACK_LIMIT};
use proptest::prelude::*;

const KEYS: [&str; 3] = ["a", "b", "c"];
const CONSUMERS: [&str; 3] = ["c0", "c1", "c2"];
const ERRORS: [&str; 3] = ["boom", "bad input", "timeout"];
const LEASE_EXPIRED: &str = "lease expired";

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// A message of the topic.
#[derive(Debug, Clone)]
struct Msg {
    key: Option<String>,
    deliver_at: Option<Millis>,
}

/// What the subscription knows about one sequence of the topic.
#[derive(Debug, Clone, PartialEq)]
enum St {
    /// At or above `next`: not read from the log yet.
    Unseen,
    Waiting {
        at: Millis,
        attempts: u32,
        error: Option<String>,
    },
    Leased {
        consumer: String,
        deadline: Millis,
        attempts: u32,
        error: Option<String>,
    },
    /// Rejected by its consumer: to be dead-lettered whatever its attempts.
    Rejected {
        attempts: u32,
        error: Option<String>,
    },
    /// Handed out by `take_exhausted`, dead-letter not finished.
    Dying {
        attempts: u32,
        error: Option<String>,
        /// Goes back to `Rejected` (not to waiting) if it does not finish.
        rejected: bool,
    },
    /// Acked, dead-lettered, trimmed or skipped by a seek.
    Settled,
}

impl St {
    fn is_pending(&self) -> bool {
        matches!(
            self,
            St::Waiting { .. } | St::Leased { .. } | St::Rejected { .. } | St::Dying { .. }
        )
    }
    fn attempts(&self) -> u32 {
        match self {
            St::Waiting { attempts, .. }
            | St::Leased { attempts, .. }
            | St::Rejected { attempts, .. }
            | St::Dying { attempts, .. } => *attempts,
            St::Unseen | St::Settled => 0,
        }
    }
    fn error(&self) -> Option<String> {
        match self {
            St::Waiting { error, .. }
            | St::Leased { error, .. }
            | St::Rejected { error, .. }
            | St::Dying { error, .. } => error.clone(),
            St::Unseen | St::Settled => None,
        }
    }
}

/// Per ordering key: its lowest pending sequence and whether one of its
/// messages is leased.
type Heads = HashMap<String, (Seq, bool)>;

struct Model {
    cfg: SubscriptionConfig,
    /// `st[seq - 1]`, one per published message.
    st: Vec<St>,
    next: Seq,
    counters: Counters,
    dlq_cursor: Seq,
}

impl Model {
    fn st(&self, seq: Seq) -> &St {
        &self.st[(seq - 1) as usize]
    }
    fn set(&mut self, seq: Seq, st: St) {
        self.st[(seq - 1) as usize] = st;
    }
    fn seqs(&self) -> impl Iterator<Item = Seq> {
        1..=self.st.len() as Seq
    }
    fn exhausted(&self, attempts: u32) -> bool {
        let max = self.cfg.retry.max_attempts;
        max > 0 && attempts >= max
    }
    fn pending(&self) -> impl Iterator<Item = (Seq, &St)> {
        self.seqs()
            .map(|s| (s, self.st(s)))
            .filter(|(_, st)| st.is_pending())
    }
    fn leased_count(&self) -> usize {
        self.pending()
            .filter(|(_, st)| matches!(st, St::Leased { .. }))
            .count()
    }
    fn leased_by(&self, consumer: &str) -> usize {
        self.pending()
            .filter(|(_, st)| matches!(st, St::Leased { consumer: c, .. } if c == consumer))
            .count()
    }
    fn room(&self, consumer: &str) -> usize {
        let total = (self.cfg.max_in_flight as usize).saturating_sub(self.leased_count());
        let mine =
            (self.cfg.max_in_flight_per_consumer as usize).saturating_sub(self.leased_by(consumer));
        total.min(mine)
    }
    /// The lowest sequence not settled; everything not read yet counts as unsettled.
    fn ack_floor(&self) -> Seq {
        self.pending()
            .map(|(s, _)| s)
            .next()
            .unwrap_or(self.next)
            .min(self.next)
    }
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

/// Chooses a sequence to act on, by the model's status of it.
#[derive(Debug, Clone)]
enum Pick {
    Leased(usize),
    Waiting(usize),
    Rejected(usize),
    Dying(usize),
    Settled(usize),
    Unseen(usize),
    Raw(u64),
}

#[derive(Debug, Clone)]
enum Op {
    /// Messages with an optional key (index into `KEYS`) and an optional
    /// delivery time relative to now.
    Publish(Vec<(Option<usize>, Option<i64>)>),
    /// Read `scan_wanted(now, want)` messages, plus `extra` (engines read in batches).
    Scan {
        want: usize,
        extra: usize,
    },
    /// A pull: reads what `scan_wanted` asks for first when `scan`.
    Lease {
        consumer: usize,
        max: usize,
        scan: bool,
    },
    Ack(Vec<Pick>),
    Nack {
        picks: Vec<Pick>,
        delay: Option<u64>,
        error: Option<usize>,
        unit: f64,
    },
    Advance(u64),
    /// Time jumps to `next_wake`, as an engine's timer does.
    Wake,
    Expire {
        unit: f64,
    },
    Extend {
        picks: Vec<Pick>,
        by: u64,
    },
    /// Gives leases back untried.
    Release(Vec<Pick>),
    /// Dead-letters leased messages at once.
    Reject {
        picks: Vec<Pick>,
        error: Option<usize>,
    },
    TakeExhausted(usize),
    /// Finishes the oldest dead-letter batch: the first `ok` are stored and
    /// journaled as dead-lettered, the rest aborted.
    FinishDeadLetter {
        ok: usize,
        abort_first: bool,
    },
    Seek(u64),
    Trim(u64),
    Replay(usize),
    Checkpoint,
    /// Crash and restart from the checkpoint plus the journal; unfinished
    /// dead-letter batches were (or not) already stored in the dead-letter topic.
    Restart {
        dlq_written: bool,
    },
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        4 => any::<usize>().prop_map(Pick::Leased),
        2 => any::<usize>().prop_map(Pick::Waiting),
        1 => any::<usize>().prop_map(Pick::Rejected),
        1 => any::<usize>().prop_map(Pick::Dying),
        1 => any::<usize>().prop_map(Pick::Settled),
        1 => any::<usize>().prop_map(Pick::Unseen),
        1 => (0u64..300).prop_map(Pick::Raw),
    ]
}

/// `acks` weighs acks against failures: some runs mostly succeed, others
/// mostly exhaust their attempts, get dead-lettered and replayed.
fn op(acks: u32) -> impl Strategy<Value = Op> {
    use prop::collection::vec;
    prop_oneof![
        5 => vec(
            (prop::option::weighted(0.7, 0..KEYS.len()), prop::option::weighted(0.3, -1_000i64..3_000)),
            1..5
        )
        .prop_map(Op::Publish),
        4 => (0usize..8, prop_oneof![3 => Just(0usize), 1 => 0usize..4])
            .prop_map(|(want, extra)| Op::Scan { want, extra }),
        8 => (0..CONSUMERS.len(), prop_oneof![1 => Just(0usize), 6 => 1usize..6], prop::bool::weighted(0.7))
            .prop_map(|(consumer, max, scan)| Op::Lease { consumer, max, scan }),
        acks => vec(pick(), 1..4).prop_map(Op::Ack),
        4 => (
            vec(pick(), 1..4),
            prop::option::of(0u64..2_000),
            prop::option::of(0..ERRORS.len()),
            0.0f64..1.0
        )
            .prop_map(|(picks, delay, error, unit)| Op::Nack { picks, delay, error, unit }),
        4 => prop_oneof![0u64..200, 0u64..3_000, 0u64..30_000].prop_map(Op::Advance),
        2 => Just(Op::Wake),
        4 => (0.0f64..1.0).prop_map(|unit| Op::Expire { unit }),
        1 => (vec(pick(), 1..3), 0u64..3_000).prop_map(|(picks, by)| Op::Extend { picks, by }),
        3 => vec(pick(), 1..4).prop_map(Op::Release),
        2 => (vec(pick(), 1..3), prop::option::of(0..ERRORS.len()))
            .prop_map(|(picks, error)| Op::Reject { picks, error }),
        3 => (1usize..4).prop_map(Op::TakeExhausted),
        3 => (0usize..4, any::<bool>()).prop_map(|(ok, abort_first)| Op::FinishDeadLetter { ok, abort_first }),
        1 => any::<u64>().prop_map(Op::Seek),
        1 => any::<u64>().prop_map(Op::Trim),
        3 => (1usize..4).prop_map(Op::Replay),
        1 => Just(Op::Checkpoint),
        2 => any::<bool>().prop_map(|dlq_written| Op::Restart { dlq_written }),
    ]
}

fn run() -> impl Strategy<Value = (SubscriptionConfig, Vec<Op>)> {
    (config(), prop_oneof![Just(1u32), Just(2), Just(5)])
        .prop_flat_map(|(cfg, acks)| (Just(cfg), prop::collection::vec(op(acks), 1..200)))
}

fn config() -> impl Strategy<Value = SubscriptionConfig> {
    (
        any::<bool>(),
        50u64..2_000,
        prop_oneof![1u32..4, 4u32..20],
        prop_oneof![1u32..4, 4u32..20],
        (0u64..300, 0u64..2_000),
        prop_oneof![Just(1.0), Just(1.5), Just(2.0)],
        prop_oneof![1 => Just(0u32), 4 => 1u32..4],
        prop_oneof![Just(0.0), Just(0.5), Just(1.0)],
    )
        .prop_map(
            |(
                ordered,
                ack,
                max_in_flight,
                per_consumer,
                (initial, extra),
                multiplier,
                max_attempts,
                jitter,
            )| {
                SubscriptionConfig {
                    topic: "t".into(),
                    ack_deadline: Duration::from_millis(ack),
                    max_in_flight,
                    max_in_flight_per_consumer: per_consumer,
                    retry: RetryPolicy {
                        initial_backoff: Duration::from_millis(initial),
                        max_backoff: Duration::from_millis(initial + extra),
                        multiplier,
                        max_attempts,
                        jitter,
                    },
                    ordered,
                    ..SubscriptionConfig::default()
                }
            },
        )
}

// ---------------------------------------------------------------------------
// The harness: an engine in miniature, checking the state machine against the model
// ---------------------------------------------------------------------------

struct Harness {
    topic: Vec<Msg>,
    /// First sequence retained by the topic.
    first: Seq,
    now: Millis,
    sut: SubState,
    model: Model,
    checkpoint: Snapshot,
    /// Events since the checkpoint.
    journal: Vec<Event>,
    /// The dead-letter topic: (original seq, key); its sequence is index + 1.
    dlq: Vec<(Seq, Option<String>)>,
    /// Dead-letter batches taken and not finished yet, oldest first.
    batches: Vec<Vec<Seq>>,
    /// Ordered mode: the highest sequence of each key delivered for the first time.
    first_delivered: HashMap<String, Seq>,
}

impl Harness {
    fn new(cfg: SubscriptionConfig) -> Self {
        let sut = SubState::new(cfg.clone(), 1);
        let checkpoint = sut.snapshot();
        Self {
            topic: vec![],
            first: 1,
            now: 1_000_000,
            sut,
            model: Model {
                cfg,
                st: vec![],
                next: 1,
                counters: Counters::default(),
                dlq_cursor: 0,
            },
            checkpoint,
            journal: vec![],
            dlq: vec![],
            batches: vec![],
            first_delivered: HashMap::new(),
        }
    }

    fn cfg(&self) -> &SubscriptionConfig {
        &self.model.cfg
    }
    /// The sequence the next published message gets.
    fn end(&self) -> Seq {
        self.topic.len() as Seq + 1
    }
    /// The ordering key as the subscription sees it.
    fn key(&self, seq: Seq) -> Option<&str> {
        if self.cfg().ordered {
            self.topic[(seq - 1) as usize].key.as_deref()
        } else {
            None
        }
    }
    fn record(&mut self, event: Option<Event>) {
        self.journal.extend(event);
    }

    fn heads(&self) -> Heads {
        let mut heads = Heads::new();
        for (seq, st) in self.model.pending() {
            if let Some(key) = self.key(seq) {
                let head = heads.entry(key.to_string()).or_insert((seq, false));
                head.1 |= matches!(st, St::Leased { .. });
            }
        }
        heads
    }

    /// When `seq` may be leased (ignoring flow control), if it may at all: it
    /// waits, has attempts left, and in ordered mode is its key's lowest pending
    /// message while no message of its key is leased.
    fn ready_at(&self, seq: Seq, heads: &Heads) -> Option<Millis> {
        match self.model.st(seq) {
            St::Waiting { at, attempts, .. } if !self.model.exhausted(*attempts) => {
                if let Some(key) = self.key(seq) {
                    let (head, busy) = heads[key];
                    if head != seq || busy {
                        return None;
                    }
                }
                Some(*at)
            }
            _ => None,
        }
    }

    /// Waiting and out of attempts, or rejected. (Normally that is its key's
    /// head; a replayed message sorting before it does not stop its dead-lettering.)
    fn takeable(&self, seq: Seq) -> bool {
        match self.model.st(seq) {
            St::Waiting { attempts, .. } => self.model.exhausted(*attempts),
            St::Rejected { .. } => true,
            _ => false,
        }
    }

    fn next_wake(&self) -> Option<Millis> {
        let heads = self.heads();
        self.model
            .seqs()
            .filter_map(|seq| match self.model.st(seq) {
                St::Leased { deadline, .. } => Some(*deadline),
                _ => self.ready_at(seq, &heads),
            })
            .min()
    }

    fn resolve(&self, picks: &[Pick]) -> Vec<Seq> {
        let with = |f: &dyn Fn(&St) -> bool, i: usize| -> Option<Seq> {
            let seqs: Vec<Seq> = self.model.seqs().filter(|&s| f(self.model.st(s))).collect();
            (!seqs.is_empty()).then(|| seqs[i % seqs.len()])
        };
        picks
            .iter()
            .map(|p| {
                let found = match *p {
                    Pick::Leased(i) => with(&|st| matches!(st, St::Leased { .. }), i),
                    Pick::Waiting(i) => with(&|st| matches!(st, St::Waiting { .. }), i),
                    Pick::Rejected(i) => with(&|st| matches!(st, St::Rejected { .. }), i),
                    Pick::Dying(i) => with(&|st| matches!(st, St::Dying { .. }), i),
                    Pick::Settled(i) => with(&|st| matches!(st, St::Settled), i),
                    Pick::Unseen(i) => with(&|st| matches!(st, St::Unseen), i),
                    Pick::Raw(seq) => Some(seq),
                };
                found.unwrap_or(match *p {
                    Pick::Leased(i)
                    | Pick::Waiting(i)
                    | Pick::Rejected(i)
                    | Pick::Dying(i)
                    | Pick::Settled(i)
                    | Pick::Unseen(i) => i as u64 % (self.end() + 2),
                    Pick::Raw(seq) => seq,
                })
            })
            .collect()
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Publish(msgs) => {
                for &(key, delay) in msgs {
                    let deliver_at = delay.map(|d| (self.now as i64 + d).max(0) as Millis);
                    self.topic.push(Msg {
                        key: key.map(|k| KEYS[k].to_string()),
                        deliver_at,
                    });
                    self.model.st.push(St::Unseen);
                }
            }
            Op::Scan { want, extra } => self.scan_wanted(*want, *extra),
            Op::Lease {
                consumer,
                max,
                scan,
            } => {
                let consumer = CONSUMERS[*consumer];
                if *scan {
                    self.scan_wanted((*max).min(self.model.room(consumer)), 0);
                }
                self.lease(consumer, *max);
            }
            Op::Ack(picks) => {
                let seqs = self.resolve(picks);
                self.ack(&seqs);
            }
            Op::Nack {
                picks,
                delay,
                error,
                unit,
            } => {
                let seqs = self.resolve(picks);
                let leased: Vec<Seq> = seqs
                    .iter()
                    .copied()
                    .filter(|&s| {
                        s >= 1 && s < self.end() && matches!(self.model.st(s), St::Leased { .. })
                    })
                    .collect();
                let delay = delay.map(Duration::from_millis);
                let error = error.map(|e| ERRORS[e].to_string());
                let event = self
                    .sut
                    .nack(&seqs, self.now, delay, error.clone(), &mut || *unit);
                self.retried(event, &leased, delay, error, *unit, false);
            }
            Op::Advance(ms) => self.now += ms,
            Op::Wake => self.now = self.now.max(self.next_wake().unwrap_or(self.now)),
            Op::Expire { unit } => {
                let expired: Vec<Seq> = self
                    .model
                    .pending()
                    .filter(|(_, st)| matches!(st, St::Leased { deadline, .. } if *deadline <= self.now))
                    .map(|(s, _)| s)
                    .collect();
                let event = self.sut.expire(self.now, &mut || *unit);
                self.retried(
                    event,
                    &expired,
                    None,
                    Some(LEASE_EXPIRED.to_string()),
                    *unit,
                    true,
                );
            }
            Op::Extend { picks, by } => {
                let seqs = self.resolve(picks);
                let is_leased = |s: Seq| {
                    s >= 1 && s < self.end() && matches!(self.model.st(s), St::Leased { .. })
                };
                let (leased, lost): (Vec<Seq>, Vec<Seq>) =
                    seqs.iter().partition(|&&s| is_leased(s));
                let deadline = self.now + by;
                let (event, got_lost) =
                    self.sut.extend(&seqs, self.now, Duration::from_millis(*by));
                assert_eq!(got_lost, lost, "extend({seqs:?}): not leased");
                match &event {
                    Some(Event::Extended {
                        deadline: d,
                        seqs: s,
                    }) => {
                        assert_eq!((*d, s), (deadline, &leased), "extend({seqs:?})");
                    }
                    None => assert!(leased.is_empty(), "extend({seqs:?}) extended nothing"),
                    other => panic!("extend returned {other:?}"),
                }
                for &seq in &leased {
                    if let St::Leased { deadline: d, .. } = &mut self.model.st[(seq - 1) as usize] {
                        *d = deadline;
                    }
                }
                self.record(event);
            }
            Op::Release(picks) => {
                let seqs = self.resolve(picks);
                self.release(&seqs);
            }
            Op::Reject { picks, error } => {
                let seqs = self.resolve(picks);
                self.reject(&seqs, error.map(|e| ERRORS[e].to_string()));
            }
            Op::TakeExhausted(max) => self.take_exhausted(*max),
            Op::FinishDeadLetter { ok, abort_first } => {
                if !self.batches.is_empty() {
                    let batch = self.batches.remove(0);
                    let ok = (*ok).min(batch.len());
                    let (done, failed) = batch.split_at(ok);
                    if *abort_first {
                        self.abort_dead_letter(failed);
                        self.dead_lettered(done);
                    } else {
                        self.dead_lettered(done);
                        self.abort_dead_letter(failed);
                    }
                }
            }
            Op::Seek(target) => {
                // Engines clamp a seek to what the topic retains.
                let to = self.first + target % (self.end() - self.first + 1);
                self.seek(to);
            }
            Op::Trim(n) => {
                // Retention removes a few of the oldest messages.
                let first = self.first + n % (self.end() - self.first + 1).min(6);
                self.trim(first);
            }
            Op::Replay(n) => self.replay(*n),
            Op::Checkpoint => {
                self.checkpoint = self.sut.snapshot();
                self.journal.clear();
            }
            Op::Restart { dlq_written } => self.restart(*dlq_written),
        }
    }

    /// Reads what the state machine asks for to lease `want`, and `extra` more.
    fn scan_wanted(&mut self, want: usize, extra: usize) {
        let wanted = self.sut.scan_wanted(self.now, want);
        let heads = self.heads();
        let ready_now = self
            .model
            .seqs()
            .filter(|&s| self.ready_at(s, &heads).is_some_and(|at| at <= self.now))
            .count();
        let room = TRACK_LIMIT - self.model.pending().count();
        assert_eq!(
            wanted,
            want.saturating_sub(ready_now).min(room),
            "scan_wanted({want})"
        );
        let to = (self.model.next + (wanted + extra) as Seq).min(self.end());
        self.scan(to);
    }

    fn scan(&mut self, to: Seq) {
        let from = self.model.next;
        let meta: Vec<Scanned> = (from..to)
            .filter_map(|seq| {
                let m = &self.topic[(seq - 1) as usize];
                (m.key.is_some() || m.deliver_at.is_some()).then(|| Scanned {
                    seq,
                    key: m.key.clone(),
                    deliver_at: m.deliver_at,
                })
            })
            .collect();
        let event = self.sut.scanned(to, self.now, meta);
        assert_eq!(event.is_some(), to > from, "scanned({to}) from {from}");
        for seq in from..to {
            let at = self.topic[(seq - 1) as usize]
                .deliver_at
                .unwrap_or(0)
                .max(self.now);
            self.model.set(
                seq,
                St::Waiting {
                    at,
                    attempts: 0,
                    error: None,
                },
            );
        }
        self.model.next = self.model.next.max(to);
        self.record(event);
    }

    fn lease(&mut self, consumer: &str, max: usize) {
        let heads = self.heads();
        let mut ready: Vec<(Millis, Seq)> = self
            .model
            .seqs()
            .filter_map(|s| {
                self.ready_at(s, &heads)
                    .filter(|&at| at <= self.now)
                    .map(|at| (at, s))
            })
            .collect();
        ready.sort();
        let n = max.min(self.model.room(consumer));
        let expected: Vec<Seq> = ready.iter().take(n).map(|&(_, s)| s).collect();

        let event = self.sut.lease(self.now, consumer, max);
        let got = match &event {
            Some(Event::Leased {
                consumer: c,
                deadline,
                seqs,
            }) => {
                assert_eq!(c, consumer);
                assert_eq!(
                    *deadline,
                    self.now + self.cfg().ack_deadline.as_millis() as Millis
                );
                assert!(!seqs.is_empty(), "empty lease event");
                seqs.clone()
            }
            None => vec![],
            other => panic!("lease returned {other:?}"),
        };

        // The safety properties, stated on what was handed out.
        let mut keys_now = BTreeSet::new();
        for &seq in &got {
            assert!(
                seq >= 1 && seq < self.end(),
                "leased {seq}, not a published message"
            );
            let st = self.model.st(seq).clone();
            match &st {
                St::Waiting { at, attempts, .. } => {
                    assert!(
                        *at <= self.now,
                        "leased {seq} before its time {at} (now {})",
                        self.now
                    );
                    assert!(
                        !self.model.exhausted(*attempts),
                        "leased {seq} out of attempts"
                    );
                }
                St::Leased { .. } => panic!("leased {seq} while it is leased: {st:?}"),
                St::Settled => panic!(
                    "leased {seq}, which is settled (acked, dead-lettered, trimmed or skipped)"
                ),
                _ => panic!("leased {seq} in state {st:?}"),
            }
            if let Some(at) = self.topic[(seq - 1) as usize].deliver_at {
                assert!(
                    at <= self.now,
                    "leased {seq} before its deliver_at {at} (now {})",
                    self.now
                );
            }
            if let Some(key) = self.key(seq).map(str::to_string) {
                let (head, busy) = heads[&key];
                assert!(
                    !busy,
                    "leased {seq} while another message of key {key} is in flight"
                );
                assert_eq!(
                    head, seq,
                    "leased {seq} of key {key} before its earlier message {head}"
                );
                assert!(
                    keys_now.insert(key.clone()),
                    "two messages of key {key} in one lease"
                );
                if st.attempts() == 0 {
                    let last = self.first_delivered.entry(key.clone()).or_insert(0);
                    assert!(*last < seq, "key {key}: {seq} first delivered after {last}");
                    *last = seq;
                }
            }
        }
        assert_eq!(got, expected, "lease(now {}, {consumer}, {max})", self.now);

        let deadline = self.now + self.cfg().ack_deadline.as_millis() as Millis;
        for &seq in &got {
            let st = self.model.st(seq);
            let (attempts, error) = (st.attempts() + 1, st.error());
            self.model.set(
                seq,
                St::Leased {
                    consumer: consumer.to_string(),
                    deadline,
                    attempts,
                    error,
                },
            );
            self.model.counters.delivered += 1;
        }
        self.record(event);
    }

    fn ack(&mut self, seqs: &[Seq]) {
        let settles = |s: Seq| {
            s >= 1
                && s < self.end()
                && matches!(
                    self.model.st(s),
                    St::Waiting { .. } | St::Leased { .. } | St::Rejected { .. }
                )
        };
        let expected: Vec<Seq> = seqs.iter().copied().filter(|&s| settles(s)).collect();
        let event = self.sut.ack(seqs);
        match &event {
            Some(Event::Acked { seqs: got }) => assert_eq!(got, &expected, "ack({seqs:?})"),
            None => assert!(expected.is_empty(), "ack({seqs:?}) acked nothing"),
            other => panic!("ack returned {other:?}"),
        }
        for seq in expected.into_iter().collect::<BTreeSet<_>>() {
            self.model.set(seq, St::Settled);
            self.model.counters.acked += 1;
        }
        self.record(event);
    }

    /// Checks a nack or expiry of the leased `seqs` and applies it to the model.
    fn retried(
        &mut self,
        event: Option<Event>,
        seqs: &[Seq],
        delay: Option<Duration>,
        error: Option<String>,
        unit: f64,
        // An expired lease's backoff runs from its deadline, a nack's from now.
        from_deadline: bool,
    ) {
        let mut expected = BTreeMap::new();
        for &seq in seqs {
            let attempts = self.model.st(seq).attempts();
            let base = match self.model.st(seq) {
                St::Leased { deadline, .. } if from_deadline => *deadline,
                _ => self.now,
            };
            let wait = if self.model.exhausted(attempts) {
                Duration::ZERO
            } else {
                delay.unwrap_or_else(|| self.cfg().retry.backoff(attempts, unit))
            };
            expected.insert(seq, base + wait.as_millis() as Millis);
        }
        match &event {
            Some(Event::Retry { at, error: e }) => {
                assert_eq!(e, &error);
                let got: BTreeMap<Seq, Millis> = at.iter().copied().collect();
                assert_eq!(got, expected, "retry times");
            }
            None => assert!(
                expected.is_empty(),
                "nothing retried, expected {expected:?}"
            ),
            other => panic!("nack/expire returned {other:?}"),
        }
        for (seq, at) in expected {
            let attempts = self.model.st(seq).attempts();
            self.model.set(
                seq,
                St::Waiting {
                    at,
                    attempts,
                    error: error.clone(),
                },
            );
        }
        self.record(event);
    }

    /// The leased messages among `seqs`, each once, in the order given.
    fn leased_among(&self, seqs: &[Seq]) -> Vec<Seq> {
        let mut seen = BTreeSet::new();
        seqs.iter()
            .copied()
            .filter(|&s| s >= 1 && s < self.end() && matches!(self.model.st(s), St::Leased { .. }))
            .filter(|&s| seen.insert(s))
            .collect()
    }

    fn release(&mut self, seqs: &[Seq]) {
        let expected = self.leased_among(seqs);
        let event = self.sut.release(seqs);
        match &event {
            Some(Event::Released { seqs: got }) => {
                let got: BTreeSet<Seq> = got.iter().copied().collect();
                assert_eq!(got, expected.iter().copied().collect(), "release({seqs:?})");
            }
            None => assert!(expected.is_empty(), "release({seqs:?}) released nothing"),
            other => panic!("release returned {other:?}"),
        }
        for seq in expected {
            let st = self.model.st(seq);
            // The lease's attempt was never made.
            let (attempts, error) = (st.attempts() - 1, st.error());
            self.model.set(
                seq,
                St::Waiting {
                    at: 0,
                    attempts,
                    error,
                },
            );
            if attempts == 0 {
                // Its next delivery is a first one again.
                if let Some(key) = self.key(seq).map(str::to_string) {
                    if let Some(last) = self.first_delivered.get_mut(&key) {
                        *last = (*last).min(seq - 1);
                    }
                }
            }
        }
        self.record(event);
    }

    fn reject(&mut self, seqs: &[Seq], error: Option<String>) {
        let expected = self.leased_among(seqs);
        let event = self.sut.reject(seqs, error.clone());
        match &event {
            Some(Event::Rejected {
                seqs: got,
                error: e,
            }) => {
                let got: BTreeSet<Seq> = got.iter().copied().collect();
                assert_eq!(got, expected.iter().copied().collect(), "reject({seqs:?})");
                assert_eq!(e, &error);
            }
            None => assert!(expected.is_empty(), "reject({seqs:?}) rejected nothing"),
            other => panic!("reject returned {other:?}"),
        }
        for seq in expected {
            let attempts = self.model.st(seq).attempts();
            self.model.set(
                seq,
                St::Rejected {
                    attempts,
                    error: error.clone(),
                },
            );
        }
        self.record(event);
    }

    fn take_exhausted(&mut self, max: usize) {
        let expected: Vec<Seq> = self
            .model
            .seqs()
            .filter(|&s| self.takeable(s))
            .take(max)
            .collect();
        let views = self.sut.take_exhausted(max);
        let got: Vec<Seq> = views.iter().map(|v| v.seq).collect();
        assert_eq!(got, expected, "take_exhausted({max})");
        for view in views {
            let st = self.model.st(view.seq).clone();
            assert_eq!(
                view.attempts,
                st.attempts(),
                "attempts of dead letter {}",
                view.seq
            );
            assert_eq!(
                view.last_error,
                st.error(),
                "last error of dead letter {}",
                view.seq
            );
            assert_eq!(view.lease_deadline, None);
            self.model.set(
                view.seq,
                St::Dying {
                    attempts: st.attempts(),
                    error: st.error(),
                    rejected: matches!(st, St::Rejected { .. }),
                },
            );
        }
        if !got.is_empty() {
            self.batches.push(got);
        }
    }

    /// The engine stored `seqs` in the dead-letter topic and journals it.
    fn dead_lettered(&mut self, seqs: &[Seq]) {
        if seqs.is_empty() {
            return;
        }
        for &seq in seqs {
            self.dlq
                .push((seq, self.topic[(seq - 1) as usize].key.clone()));
            // Settled if still out of attempts: not a fresh copy that a seek
            // or a replay brought back while the dead letter was being stored.
            let dead = match self.model.st(seq) {
                St::Dying { .. } | St::Rejected { .. } => true,
                St::Waiting { attempts, .. } => self.model.exhausted(*attempts),
                _ => false,
            };
            if dead {
                self.model.set(seq, St::Settled);
                self.model.counters.dead_lettered += 1;
            }
        }
        let event = self.sut.emit(Event::DeadLettered {
            seqs: seqs.to_vec(),
        });
        self.record(Some(event));
    }

    fn abort_dead_letter(&mut self, seqs: &[Seq]) {
        self.sut.abort_dead_letter(seqs);
        for &seq in seqs {
            if let St::Dying {
                attempts,
                error,
                rejected,
            } = self.model.st(seq).clone()
            {
                self.model.set(seq, undying(attempts, error, rejected));
            }
        }
    }

    fn seek(&mut self, to: Seq) {
        for seq in self.model.seqs() {
            let st = if seq < to { St::Settled } else { St::Unseen };
            self.model.set(seq, st);
        }
        self.model.next = to.max(1);
        self.first_delivered.clear();
        let event = self.sut.emit(Event::Seeked { to });
        self.record(Some(event));
    }

    fn trim(&mut self, first: Seq) {
        self.first = first;
        for seq in 1..first {
            self.model.set(seq, St::Settled);
        }
        self.model.next = self.model.next.max(first);
        let event = self.sut.emit(Event::Trimmed { first });
        self.record(Some(event));
    }

    /// Replays up to `n` dead letters after the cursor.
    fn replay(&mut self, n: usize) {
        let from = self.model.dlq_cursor as usize;
        let to = (from + n).min(self.dlq.len());
        if from >= to {
            return;
        }
        let seqs: Vec<(Seq, Option<String>)> = self.dlq[from..to].to_vec();
        for (seq, key) in &seqs {
            if *seq < self.model.next && *self.model.st(*seq) == St::Settled {
                self.model.set(
                    *seq,
                    St::Waiting {
                        at: self.now,
                        attempts: 0,
                        error: None,
                    },
                );
                if let (Some(key), true) = (key, self.cfg().ordered) {
                    if let Some(last) = self.first_delivered.get_mut(key) {
                        *last = (*last).min(seq - 1);
                    }
                }
            }
        }
        self.model.dlq_cursor = to as Seq;
        let event = self.sut.emit(Event::Replayed {
            seqs,
            at: self.now,
            dlq_cursor: to as Seq,
        });
        self.record(Some(event));
    }

    fn restart(&mut self, dlq_written: bool) {
        let mut restored = SubState::restore(self.cfg().clone(), self.checkpoint.clone());
        for event in &self.journal {
            restored.apply(event);
        }
        // An unfinished dead-letter is redone after a restart, so the snapshot
        // forgets what those messages were waiting for, and so does an aborted
        // one (neither is journaled). It is meaningless for messages out of
        // attempts anyway; nothing else may differ.
        let dying: BTreeSet<Seq> = self
            .model
            .pending()
            .filter(|(_, st)| matches!(st, St::Dying { .. }))
            .map(|(s, _)| s)
            .collect();
        let out_of_attempts: BTreeSet<Seq> = self
            .model
            .pending()
            .filter(|(_, st)| match st {
                St::Dying { rejected, .. } => !rejected,
                St::Waiting { attempts, .. } => self.model.exhausted(*attempts),
                _ => false,
            })
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            normalize(restored.snapshot(), &out_of_attempts),
            normalize(self.sut.snapshot(), &out_of_attempts),
            "restore + replay of {} events differs from the live state",
            self.journal.len()
        );
        assert_eq!(restored.in_flight(), self.sut.in_flight());
        assert_eq!(restored.tracked(), self.sut.tracked());
        assert_eq!(restored.ack_floor(), self.sut.ack_floor());
        assert_eq!(restored.waiting(), self.sut.waiting() + dying.len());
        for consumer in CONSUMERS {
            assert_eq!(restored.room(consumer), self.sut.room(consumer));
        }
        self.sut = restored;
        for seq in dying {
            if let St::Dying {
                attempts,
                error,
                rejected,
            } = self.model.st(seq).clone()
            {
                self.model.set(seq, undying(attempts, error, rejected));
            }
        }
        for batch in std::mem::take(&mut self.batches) {
            if dlq_written {
                // Stored, but the crash came before the journal had it.
                for seq in batch {
                    self.dlq
                        .push((seq, self.topic[(seq - 1) as usize].key.clone()));
                }
            }
        }
    }

    /// Everything observable agrees with the model.
    fn check(&self, step: usize) {
        let m = &self.model;
        let ctx = || format!("after step {step}, now {}", self.now);
        assert_eq!(self.sut.next(), m.next, "next, {}", ctx());
        assert_eq!(self.sut.ack_floor(), m.ack_floor(), "ack_floor, {}", ctx());
        assert_eq!(self.sut.counters(), m.counters, "counters, {}", ctx());
        assert_eq!(self.sut.dlq_cursor(), m.dlq_cursor, "dlq_cursor, {}", ctx());
        assert_eq!(
            self.sut.tracked(),
            m.pending().count(),
            "tracked, {}",
            ctx()
        );
        let leased = m.leased_count();
        assert_eq!(self.sut.in_flight(), leased, "in_flight, {}", ctx());
        assert!(
            leased <= self.cfg().max_in_flight as usize,
            "max_in_flight exceeded"
        );
        let waiting = m
            .pending()
            .filter(|(_, st)| matches!(st, St::Waiting { .. } | St::Rejected { .. }))
            .count();
        assert_eq!(self.sut.waiting(), waiting, "waiting, {}", ctx());
        for consumer in CONSUMERS {
            assert!(
                m.leased_by(consumer) <= self.cfg().max_in_flight_per_consumer as usize,
                "max_in_flight_per_consumer exceeded by {consumer}"
            );
            assert_eq!(
                self.sut.room(consumer),
                m.room(consumer),
                "room({consumer}), {}",
                ctx()
            );
        }
        assert_eq!(
            self.sut.next_wake(),
            self.next_wake(),
            "next_wake, {}",
            ctx()
        );

        let mut in_flight_keys = BTreeSet::new();
        for seq in 0..=self.end() + 2 {
            let view = self.sut.pending(seq);
            let st = if seq >= 1 && seq < self.end() {
                m.st(seq)
            } else {
                &St::Unseen
            };
            assert_eq!(
                st == &St::Unseen,
                seq >= m.next || seq == 0 || seq >= self.end()
            );
            match (st, &view) {
                (St::Unseen | St::Settled, None) => {}
                (St::Waiting { .. } | St::Rejected { .. } | St::Dying { .. }, Some(v)) => {
                    assert_eq!(
                        (v.attempts, &v.last_error, v.lease_deadline),
                        (st.attempts(), &st.error(), None)
                    );
                }
                (St::Leased { deadline, .. }, Some(v)) => {
                    assert_eq!(
                        (v.attempts, &v.last_error, v.lease_deadline),
                        (st.attempts(), &st.error(), Some(*deadline))
                    );
                    if let Some(key) = self.key(seq) {
                        assert!(
                            in_flight_keys.insert(key),
                            "two messages of key {key} in flight"
                        );
                    }
                }
                _ => panic!("seq {seq}: model {st:?}, state machine {view:?}, {}", ctx()),
            }
            assert_eq!(self.sut.is_leased(seq), matches!(st, St::Leased { .. }));
        }
    }

    /// Runs the subscription dry: time passes, every lease expires or is acked,
    /// every exhausted message is dead-lettered. Nothing may be left behind.
    fn drain(&mut self, mut step: usize) {
        for _ in 0..10_000 {
            while !self.batches.is_empty() {
                self.apply(&Op::FinishDeadLetter {
                    ok: usize::MAX,
                    abort_first: false,
                });
            }
            self.scan(self.end());
            self.apply(&Op::Expire { unit: 0.5 });
            self.take_exhausted(usize::MAX);
            self.apply(&Op::FinishDeadLetter {
                ok: usize::MAX,
                abort_first: false,
            });
            for consumer in CONSUMERS {
                self.lease(consumer, usize::MAX);
            }
            let leased: Vec<Seq> = self
                .model
                .pending()
                .filter(|(_, st)| matches!(st, St::Leased { .. }))
                .map(|(s, _)| s)
                .collect();
            self.ack(&leased);
            step += 1;
            self.check(step);
            if self.sut.tracked() == 0 {
                break;
            }
            match self.sut.next_wake() {
                Some(at) => self.now = self.now.max(at),
                None => panic!(
                    "stuck: {} messages tracked, none will ever be deliverable; model {:?}",
                    self.sut.tracked(),
                    self.model.pending().collect::<Vec<_>>()
                ),
            }
        }
        assert_eq!(self.sut.tracked(), 0, "did not drain");
        assert!(
            self.model.st.iter().all(|st| *st == St::Settled),
            "unsettled after drain: {:?}",
            self.model.st
        );
        assert_eq!(self.sut.ack_floor(), self.end());
        assert_eq!(self.sut.in_flight(), 0);
        assert_eq!(self.sut.next_wake(), None);
        assert_eq!(self.sut.counters(), self.model.counters);
        // One more restart from the very first checkpoint is still exact.
        self.restart(false);
    }
}

/// What a dead-lettering that did not finish leaves: rejected again, or
/// waiting since 0 (out of attempts, so when is meaningless).
fn undying(attempts: u32, error: Option<String>, rejected: bool) -> St {
    if rejected {
        St::Rejected { attempts, error }
    } else {
        St::Waiting {
            at: 0,
            attempts,
            error,
        }
    }
}

/// A snapshot with the entries in `out_of_attempts` waiting since 0, the way
/// an unfinished or aborted dead-letter leaves them (when a message out of
/// attempts waits for is meaningless).
fn normalize(snapshot: Snapshot, out_of_attempts: &BTreeSet<Seq>) -> Snapshot {
    let mut value = serde_json::to_value(&snapshot).expect("snapshot serializes");
    for entry in value["entries"].as_array_mut().expect("entries") {
        let seq = entry[0].as_u64().expect("seq");
        if out_of_attempts.contains(&seq) {
            entry[1]["state"] = serde_json::json!({ "Waiting": { "at": 0 } });
        }
    }
    serde_json::from_value(value).expect("snapshot deserializes")
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=100000 for a soak.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn subscription_matches_model((cfg, ops) in run()) {
        let mut h = Harness::new(cfg);
        for (step, op) in ops.iter().enumerate() {
            h.apply(op);
            h.check(step);
        }
        h.drain(ops.len());
    }
}
