use super::*;
use courier_core::types::RetryPolicy;

fn config(ordered: bool) -> SubscriptionConfig {
    SubscriptionConfig {
        topic: "t".into(),
        ack_deadline: Duration::from_millis(1_000),
        max_in_flight: 100,
        max_in_flight_per_consumer: 100,
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: 3,
            jitter: 0.0,
        },
        ordered,
        ..SubscriptionConfig::default()
    }
}

fn zero() -> f64 {
    0.0
}

fn leased(e: Option<Event>) -> Vec<Seq> {
    match e {
        Some(Event::Leased { seqs, .. }) => seqs,
        None => vec![],
        other => panic!("not a lease: {other:?}"),
    }
}

#[test]
fn scan_lease_ack_advances_floor() {
    let mut s = SubState::new(config(false), 1);
    assert_eq!(s.scan_wanted(0, 10), 10);
    s.scanned(4, 0, vec![]);
    assert_eq!(leased(s.lease(0, "c", 10)), vec![1, 2, 3]);
    assert_eq!(s.in_flight(), 3);
    s.ack(&[2]);
    assert_eq!(s.ack_floor(), 1);
    s.ack(&[1, 3]);
    assert_eq!(s.ack_floor(), 4);
    assert_eq!(s.tracked(), 0);
    assert_eq!(s.counters().acked, 3);
    // acking again is a no-op
    assert!(s.ack(&[1]).is_none());
}

#[test]
fn expiry_backs_off_then_dead_letters() {
    let mut s = SubState::new(config(false), 1);
    s.scanned(2, 0, vec![]);
    assert_eq!(leased(s.lease(0, "c", 1)), vec![1]);
    assert!(s.expire(999, &mut zero).is_none());
    assert!(s.expire(1_000, &mut zero).is_some());
    // backoff after 1 attempt: 100 ms
    assert!(leased(s.lease(1_099, "c", 1)).is_empty());
    assert_eq!(s.next_wake(), Some(1_100));
    assert_eq!(leased(s.lease(1_100, "c", 1)), vec![1]);
    assert_eq!(s.pending(1).unwrap().attempts, 2);
    s.nack(&[1], 1_200, None, Some("boom".into()), &mut zero);
    // second backoff: 200 ms
    assert!(leased(s.lease(1_399, "c", 1)).is_empty());
    assert_eq!(leased(s.lease(1_400, "c", 1)), vec![1]);
    // third failure exhausts max_attempts = 3
    s.nack(&[1], 1_500, None, Some("boom again".into()), &mut zero);
    assert!(leased(s.lease(99_999, "c", 1)).is_empty());
    let dead = s.take_exhausted(10);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error.as_deref(), Some("boom again"));
    s.emit(Event::DeadLettered { seqs: vec![1] });
    assert_eq!(s.ack_floor(), 2);
    assert_eq!(s.counters().dead_lettered, 1);
}

#[test]
fn nack_with_explicit_delay() {
    let mut s = SubState::new(config(false), 1);
    s.scanned(2, 0, vec![]);
    s.lease(0, "c", 1);
    s.nack(&[1], 10, Some(Duration::from_secs(5)), None, &mut zero);
    assert!(leased(s.lease(5_009, "c", 1)).is_empty());
    assert_eq!(leased(s.lease(5_010, "c", 1)), vec![1]);
}

#[test]
fn delayed_messages_wait_for_their_time() {
    let mut s = SubState::new(config(false), 1);
    let meta = vec![Scanned {
        seq: 1,
        key: None,
        deliver_at: Some(500),
    }];
    s.scanned(3, 0, meta);
    assert_eq!(leased(s.lease(0, "c", 10)), vec![2]);
    assert_eq!(s.next_wake(), Some(500));
    assert_eq!(leased(s.lease(500, "c", 10)), vec![1]);
}

#[test]
fn ordered_keys_one_in_flight_per_key() {
    let mut s = SubState::new(config(true), 1);
    let k = |seq, key: &str| Scanned {
        seq,
        key: Some(key.into()),
        deliver_at: None,
    };
    s.scanned(5, 0, vec![k(1, "a"), k(2, "a"), k(3, "b"), k(4, "a")]);
    assert_eq!(leased(s.lease(0, "c", 10)), vec![1, 3]);
    s.ack(&[3]);
    assert!(leased(s.lease(0, "c", 10)).is_empty());
    // a nacked head keeps its key blocked until it succeeds
    s.nack(&[1], 0, Some(Duration::ZERO), None, &mut zero);
    assert_eq!(leased(s.lease(0, "c", 10)), vec![1]);
    s.ack(&[1]);
    assert_eq!(leased(s.lease(0, "c", 10)), vec![2]);
    s.ack(&[2]);
    assert_eq!(leased(s.lease(0, "c", 10)), vec![4]);
}

#[test]
fn flow_control_per_subscription_and_consumer() {
    let mut cfg = config(false);
    cfg.max_in_flight = 5;
    cfg.max_in_flight_per_consumer = 3;
    let mut s = SubState::new(cfg, 1);
    s.scanned(11, 0, vec![]);
    assert_eq!(leased(s.lease(0, "a", 10)).len(), 3);
    assert_eq!(leased(s.lease(0, "b", 10)).len(), 2);
    assert!(leased(s.lease(0, "c", 10)).is_empty());
    assert_eq!(s.room("a"), 0);
}

#[test]
fn snapshot_and_replay_reproduce_the_state() {
    let mut live = SubState::new(config(true), 1);
    let mut events = vec![];
    let meta = vec![Scanned {
        seq: 2,
        key: Some("k".into()),
        deliver_at: Some(50),
    }];
    events.extend(live.scanned(6, 0, meta));
    let snap = live.snapshot();
    events.clear();
    events.extend(live.lease(0, "c", 2));
    events.extend(live.ack(&[1]));
    events.extend(live.expire(5_000, &mut zero));
    events.extend(live.lease(5_200, "d", 10));
    let mut restored = SubState::restore(config(true), snap);
    for e in &events {
        restored.apply(e);
    }
    assert_eq!(restored.snapshot(), live.snapshot());
    assert_eq!(restored.in_flight(), live.in_flight());
    assert_eq!(restored.next_wake(), live.next_wake());
}

#[test]
fn seek_trim_and_replay() {
    let mut s = SubState::new(config(false), 1);
    s.scanned(11, 0, vec![]);
    s.lease(0, "c", 3);
    s.emit(Event::Seeked { to: 5 });
    assert_eq!((s.ack_floor(), s.tracked(), s.in_flight()), (5, 0, 0));
    s.emit(Event::Trimmed { first: 8 });
    assert_eq!(s.next(), 8);
    s.emit(Event::Replayed {
        seqs: vec![(3, None), (9, None)],
        at: 0,
        dlq_cursor: 7,
    });
    // 9 is not read yet, so it is delivered anyway; 3 comes back
    assert_eq!(s.ack_floor(), 3);
    assert_eq!(s.dlq_cursor(), 7);
    assert_eq!(leased(s.lease(0, "c", 10)), vec![3]);
}

/// Restoring a snapshot of `s` gives the same state, indexes included.
fn assert_restores(s: &SubState) {
    let r = SubState::restore(s.config().clone(), s.snapshot());
    assert_eq!(r.snapshot(), s.snapshot());
    assert_eq!(
        (r.in_flight(), r.waiting(), r.next_wake(), r.room("c")),
        (s.in_flight(), s.waiting(), s.next_wake(), s.room("c"))
    );
}

#[test]
fn replay_before_a_leased_head_waits_for_it() {
    let mut s = SubState::new(config(true), 1);
    let k = |seq| Scanned {
        seq,
        key: Some("k".into()),
        deliver_at: None,
    };
    s.scanned(3, 0, vec![k(1), k(2)]);
    assert_eq!(leased(s.lease(0, "c", 10)), vec![1]);
    s.ack(&[1]);
    assert_eq!(leased(s.lease(0, "c", 10)), vec![2]);
    // 1 comes back while 2 is in flight: 2 stays leased (and expires), 1 waits for it.
    s.emit(Event::Replayed {
        seqs: vec![(1, Some("k".into()))],
        at: 0,
        dlq_cursor: 1,
    });
    assert_eq!(s.in_flight(), 1);
    assert!(s.is_leased(2));
    assert_restores(&s);
    assert!(leased(s.lease(0, "c", 10)).is_empty());
    assert_eq!(s.next_wake(), Some(1_000));
    assert!(s.expire(1_000, &mut zero).is_some());
    assert_restores(&s);
    // now 1 goes first, then 2
    assert_eq!(leased(s.lease(1_000, "c", 10)), vec![1]);
    s.ack(&[1]);
    assert_eq!(leased(s.lease(1_100, "c", 10)), vec![2]);
}

#[test]
fn replay_before_a_head_being_dead_lettered() {
    let mut s = SubState::new(config(true), 1);
    let k = |seq| Scanned {
        seq,
        key: Some("k".into()),
        deliver_at: None,
    };
    s.scanned(3, 0, vec![k(1), k(2)]);
    s.lease(0, "c", 10);
    s.ack(&[1]);
    for t in [0, 1_000, 2_000] {
        assert_eq!(leased(s.lease(t, "c", 10)), vec![2]);
        s.nack(&[2], t, Some(Duration::ZERO), None, &mut zero);
    }
    assert_eq!(s.take_exhausted(10).len(), 1);
    s.emit(Event::Replayed {
        seqs: vec![(1, Some("k".into()))],
        at: 0,
        dlq_cursor: 1,
    });
    // storing 2 in the dead-letter topic failed: it is still to be dead-lettered
    s.abort_dead_letter(&[2]);
    assert_eq!(s.take_exhausted(10).len(), 1);
    s.emit(Event::DeadLettered { seqs: vec![2] });
    assert_eq!(leased(s.lease(3_000, "c", 10)), vec![1]);
    s.ack(&[1]);
    assert_eq!((s.tracked(), s.ack_floor()), (0, 3));
}

#[test]
fn dead_letter_finishing_after_a_seek_spares_the_fresh_copy() {
    let mut s = SubState::new(config(false), 1);
    s.scanned(3, 0, vec![]);
    for t in [0, 1_000, 2_000] {
        assert_eq!(
            leased(s.lease(t, "c", 10)),
            vec![1, 2][..(t == 0) as usize + 1]
        );
        s.nack(&[1], t, Some(Duration::ZERO), None, &mut zero);
    }
    assert_eq!(s.take_exhausted(10).len(), 1);
    let snap = s.snapshot();
    // While 1 is stored in the dead-letter topic, the subscription is rewound.
    let seeked = s.emit(Event::Seeked { to: 1 });
    let scanned = s.scanned(3, 3_000, vec![]).unwrap();
    let dead = s.emit(Event::DeadLettered { seqs: vec![1] });
    assert_eq!(s.counters().dead_lettered, 0);
    assert_eq!(leased(s.lease(3_000, "c", 10)), vec![1, 2]);
    assert_eq!(s.pending(1).unwrap().attempts, 1);
    // Replayed over a snapshot taken mid-dead-letter, it is dead-lettered...
    let mut r = SubState::restore(config(false), snap.clone());
    r.apply(&dead);
    assert_eq!((r.counters().dead_lettered, r.pending(1)), (1, None));
    // ...and the fresh copy after the seek is not.
    let mut r = SubState::restore(config(false), snap);
    for e in [&seeked, &scanned, &dead] {
        r.apply(e);
    }
    assert_eq!((r.counters().dead_lettered, r.tracked()), (0, 2));
}

#[test]
fn huge_durations_saturate_instead_of_wrapping() {
    let mut cfg = config(false);
    cfg.ack_deadline = Duration::MAX;
    let mut s = SubState::new(cfg, 1);
    s.scanned(3, 0, vec![]);
    s.lease(5, "c", 2);
    assert_eq!(s.pending(1).unwrap().lease_deadline, Some(u64::MAX));
    assert!(s.expire(u64::MAX - 1, &mut zero).is_none());
    s.nack(&[1], 5, Some(Duration::MAX), None, &mut zero);
    assert!(leased(s.lease(u64::MAX - 1, "c", 1)).is_empty());
    let (event, lost) = s.extend(&[2], 5, Duration::MAX);
    assert!(event.is_some() && lost.is_empty());
}

#[test]
fn release_takes_the_attempt_back_and_redelivers_first() {
    let mut s = SubState::new(config(false), 1);
    s.scanned(4, 5, vec![]);
    assert_eq!(leased(s.lease(5, "c", 2)), vec![1, 2]);
    let lease = s.applied();
    // 3 is ready since 5, yet the released messages go first, in order.
    let e = s.release(&[2, 1, 3]).expect("two were leased");
    assert_eq!(e, Event::Released { seqs: vec![2, 1] });
    assert_eq!((s.in_flight(), s.waiting()), (0, 3));
    assert_eq!(
        s.pending(1).unwrap().attempts,
        0,
        "the lease's attempt is taken back"
    );
    // A token of a given-back lease is lost, not "never leased".
    assert_eq!(s.lease_status(1, lease), Outcome::LeaseLost);
    assert!(s.release(&[1, 2]).is_none(), "nothing leased any more");
    assert_restores(&s);
    assert_eq!(leased(s.lease(30, "c", 10)), vec![1, 2, 3]);
    assert_eq!(s.pending(1).unwrap().attempts, 1);
    assert_eq!(s.counters().delivered, 5, "deliveries are counted as made");
}

#[test]
fn release_on_the_last_attempt_does_not_dead_letter() {
    let mut s = SubState::new(config(false), 1);
    s.scanned(2, 0, vec![]);
    for t in [0, 1_000] {
        assert_eq!(leased(s.lease(t, "c", 1)), vec![1]);
        s.nack(
            &[1],
            t,
            Some(Duration::ZERO),
            Some("boom".into()),
            &mut zero,
        );
    }
    assert_eq!(leased(s.lease(2_000, "c", 1)), vec![1]);
    assert_eq!(s.pending(1).unwrap().attempts, 3, "the last attempt");
    s.release(&[1]);
    assert_eq!(
        s.pending(1).unwrap().last_error.as_deref(),
        Some("boom"),
        "the last error stays"
    );
    assert!(s.take_exhausted(10).is_empty());
    assert_eq!(s.pending(1).unwrap().attempts, 2);
    assert_restores(&s);
    assert_eq!(leased(s.lease(2_000, "c", 1)), vec![1]);
    assert_eq!(s.pending(1).unwrap().attempts, 3);
    s.nack(&[1], 2_000, None, None, &mut zero);
    assert_eq!(
        s.take_exhausted(10).len(),
        1,
        "a real last failure still dead-letters"
    );
}

#[test]
fn a_released_head_goes_before_the_rest_of_its_key() {
    let mut s = SubState::new(config(true), 1);
    let k = |seq, key: &str| Scanned {
        seq,
        key: Some(key.into()),
        deliver_at: None,
    };
    s.scanned(4, 0, vec![k(1, "a"), k(2, "a"), k(3, "b")]);
    assert_eq!(leased(s.lease(0, "c", 10)), vec![1, 3]);
    s.release(&[1]);
    assert_eq!(leased(s.lease(5, "d", 10)), vec![1]);
    assert_eq!(s.pending(1).unwrap().attempts, 1);
    s.ack(&[1]);
    assert_eq!(leased(s.lease(5, "d", 10)), vec![2]);
}

#[test]
fn reject_dead_letters_whatever_attempts_remain() {
    let mut cfg = config(true);
    cfg.retry.max_attempts = 0;
    let mut s = SubState::new(cfg.clone(), 1);
    let k = |seq| Scanned {
        seq,
        key: Some("k".into()),
        deliver_at: None,
    };
    s.scanned(3, 0, vec![k(1), k(2)]);
    assert_eq!(leased(s.lease(0, "c", 10)), vec![1]);
    let lease = s.applied();
    let e = s.reject(&[1, 2], Some("unparseable".into()));
    assert_eq!(
        e,
        Some(Event::Rejected {
            seqs: vec![1],
            error: Some("unparseable".into())
        })
    );
    assert_eq!(s.lease_status(1, lease), Outcome::LeaseLost);
    assert!(s.reject(&[1], None).is_none(), "no longer leased");
    assert!(s.release(&[1]).is_none(), "no longer leased");
    // Its key waits for the dead-lettering.
    assert!(leased(s.lease(0, "c", 10)).is_empty());
    assert_restores(&s);
    let dead = s.take_exhausted(10);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].seq, dead[0].attempts, dead[0].last_error.as_deref()),
        (1, 1, Some("unparseable"))
    );
    // A restart mid-way redoes it; so does a failed store.
    let snap = s.snapshot();
    let mut r = SubState::restore(cfg, snap);
    assert_eq!(r.take_exhausted(10).len(), 1);
    s.abort_dead_letter(&[1]);
    assert!(leased(s.lease(0, "c", 10)).is_empty());
    assert_eq!(s.take_exhausted(10).len(), 1);
    s.emit(Event::DeadLettered { seqs: vec![1] });
    r.emit(Event::DeadLettered { seqs: vec![1] });
    assert_eq!(s.counters().dead_lettered, 1);
    assert_eq!(r.snapshot(), s.snapshot());
    assert_eq!(leased(s.lease(0, "c", 10)), vec![2]);
    // Dead-lettered once: applying the event again changes nothing.
    s.emit(Event::DeadLettered { seqs: vec![1] });
    assert_eq!(s.counters().dead_lettered, 1);
}

#[test]
fn push_settings_change_without_an_event() {
    let mut s = SubState::new(config(false), 1);
    s.scanned(3, 0, vec![]);
    s.lease(0, "c", 1);
    let before = s.snapshot();
    let mut cfg = s.config().clone();
    cfg.push = Some(courier_core::PushConfig {
        service: "svc".into(),
        ..courier_core::PushConfig::default()
    });
    assert!(s.reconfigure(&cfg).is_none());
    assert_eq!(s.config(), &cfg);
    assert_eq!(s.snapshot(), before);
    cfg.push = None;
    assert!(s.reconfigure(&cfg).is_none());
    assert_eq!(s.config().push, None);
}

/// Journals and snapshots are postcard, which encodes an enum variant by its
/// index: new variants go last so that what older versions wrote stays
/// readable. These are the indexes on disk.
#[test]
fn journal_and_snapshot_encodings_keep_their_variant_indexes() {
    let index = |e: &Event| postcard::to_stdvec(e).unwrap()[0];
    let events = [
        Event::Scanned {
            to: 1,
            at: 0,
            meta: vec![],
            skip: vec![],
            deferred: 0,
        },
        Event::Due {
            seqs: vec![],
            cursor: (0, 0),
        },
        Event::Leased {
            consumer: "c".into(),
            deadline: 0,
            seqs: vec![],
        },
        Event::Acked { seqs: vec![] },
        Event::Retry {
            at: vec![],
            error: None,
        },
        Event::Extended {
            deadline: 0,
            seqs: vec![],
        },
        Event::DeadLettered { seqs: vec![] },
        Event::Seeked { to: 1 },
        Event::Trimmed { first: 1 },
        Event::Reconfigured {
            ack_deadline_ms: 1,
            max_in_flight: 1,
            max_in_flight_per_consumer: 1,
            retry: RetryPolicy::default(),
            dead_letter_topic: None,
        },
        Event::Replayed {
            seqs: vec![],
            at: 0,
            dlq_cursor: 0,
        },
        Event::Released { seqs: vec![] },
        Event::Rejected {
            seqs: vec![],
            error: None,
        },
    ];
    for (i, e) in events.iter().enumerate() {
        assert_eq!(index(e) as usize, i, "{e:?}");
        let back: Event = postcard::from_bytes(&postcard::to_stdvec(e).unwrap()).unwrap();
        assert_eq!(&back, e);
    }
    // A snapshot as the previous version wrote it: one waiting entry (3,
    // born 1, attempt 1, error "e") and one leased (4, consumer "c").
    let old: &[u8] = &[
        7, 5, 1, 0, 0, 0, 0, 2, 0, 0, 2, // applied .. counters, 2 entries
        3, 1, 1, 0, 0, 9, 1, 1, b'e', // 3: waiting at 9, error "e"
        4, 1, 1, 0, 1, 1, b'c', 20, 6, 0, // 4: leased to c until 20, lease 6
    ];
    let snap: Snapshot = postcard::from_bytes(old).expect("an old snapshot decodes");
    assert_eq!(postcard::to_stdvec(&snap).unwrap(), old);
    let s = SubState::restore(config(false), snap);
    assert_eq!((s.tracked(), s.in_flight(), s.waiting()), (2, 1, 1));
    assert_eq!(s.pending(3).unwrap().last_error.as_deref(), Some("e"));
    assert_eq!(s.lease_status(4, 6), Outcome::Ok);
    // A rejected entry is the new state variant 3.
    let mut s = SubState::new(config(false), 1);
    s.scanned(2, 0, vec![]);
    s.lease(0, "c", 1);
    s.reject(&[1], None);
    let bytes = postcard::to_stdvec(&s.snapshot()).unwrap();
    let entry = &bytes[bytes.len() - 6..];
    assert_eq!(
        entry,
        &[1, 1, 1, 0, 3, 0],
        "seq, born, attempts, key, state, error"
    );
}

/// Model check: after any sequence of operations, every index equals what a
/// recomputation from `pending` gives, and the journaled events alone rebuild
/// the same state (what a restart does).
mod model {
    use super::*;
    use proptest::prelude::*;

    impl SubState {
        /// Panics unless `leases`, `ready`, `exhausted`, `dying`, `keys`,
        /// `by_consumer` and `busy_keys` are exactly what `pending` implies.
        fn assert_consistent(&self) {
            let mut leases = BTreeSet::new();
            let mut dying = BTreeSet::new();
            let mut keys: HashMap<Arc<str>, BTreeSet<Seq>> = HashMap::new();
            let mut by_consumer: HashMap<Arc<str>, u32> = HashMap::new();
            let mut busy_keys: HashMap<Arc<str>, u32> = HashMap::new();
            for (&seq, e) in &self.pending {
                assert!(seq < self.next, "{seq} is tracked but not below next");
                if let Some(key) = &e.key {
                    keys.entry(key.clone()).or_default().insert(seq);
                }
                match &e.state {
                    EntryState::Leased {
                        consumer, deadline, ..
                    } => {
                        leases.insert((*deadline, seq));
                        *by_consumer.entry(consumer.clone()).or_default() += 1;
                        if let Some(key) = &e.key {
                            *busy_keys.entry(key.clone()).or_default() += 1;
                        }
                    }
                    EntryState::Dying { .. } => {
                        dying.insert(seq);
                    }
                    EntryState::Waiting { .. } | EntryState::Rejected => {}
                }
            }
            let mut ready = BTreeSet::new();
            let mut exhausted = BTreeSet::new();
            for (&seq, e) in &self.pending {
                if e.state == EntryState::Rejected {
                    exhausted.insert(seq);
                }
                if let EntryState::Waiting { at } = e.state {
                    let blocked = e.key.as_ref().is_some_and(|key| {
                        keys[key].first() != Some(&seq) || busy_keys.contains_key(key)
                    });
                    if self.config.retry.exhausted(e.attempts) {
                        exhausted.insert(seq);
                    } else if !blocked {
                        ready.insert((at, seq));
                    }
                }
            }
            assert_eq!(self.leases, leases, "leases");
            assert_eq!(self.ready, ready, "ready");
            assert_eq!(self.exhausted, exhausted, "exhausted");
            assert_eq!(self.dying, dying, "dying");
            assert_eq!(self.keys, keys, "keys");
            assert_eq!(self.by_consumer, by_consumer, "by_consumer");
            assert_eq!(self.busy_keys, busy_keys, "busy_keys");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Read this many messages, each with an optional delivery delay.
        Scan(Vec<Option<u64>>),
        Lease(u8, usize),
        Ack(Vec<Seq>),
        Nack(Vec<Seq>, Option<u64>),
        /// Let time pass, then expire leases.
        Advance(u64),
        Extend(Vec<Seq>, u64),
        /// Take up to this many exhausted; store them (true) or fail to.
        DeadLetter(usize, bool),
        Seek(Seq),
        Trim(Seq),
        Replay(Vec<Seq>),
        Release(Vec<Seq>),
        Reject(Vec<Seq>),
    }

    fn seqs() -> impl Strategy<Value = Vec<Seq>> {
        proptest::collection::vec(1..30u64, 0..5)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::collection::vec(proptest::option::weighted(0.2, 0..300u64), 0..6).prop_map(Op::Scan),
            4 => (0..3u8, 1..6usize).prop_map(|(c, n)| Op::Lease(c, n)),
            3 => seqs().prop_map(Op::Ack),
            2 => (seqs(), proptest::option::of(0..500u64)).prop_map(|(s, d)| Op::Nack(s, d)),
            2 => (0..1500u64).prop_map(Op::Advance),
            1 => (seqs(), 1..2000u64).prop_map(|(s, b)| Op::Extend(s, b)),
            2 => (1..4usize, any::<bool>()).prop_map(|(n, ok)| Op::DeadLetter(n, ok)),
            1 => (1..30u64).prop_map(Op::Seek),
            1 => (1..30u64).prop_map(Op::Trim),
            1 => seqs().prop_map(Op::Replay),
            2 => seqs().prop_map(Op::Release),
            1 => seqs().prop_map(Op::Reject),
        ]
    }

    /// Messages' keys follow from their sequence, so a replay can carry the
    /// key its message was published with.
    fn key_of(seq: Seq) -> Option<String> {
        (!seq.is_multiple_of(4)).then(|| format!("k{}", seq % 2))
    }

    /// Dying entries are never journaled: rebuilt from the events they are
    /// exhausted entries waiting, and both count as waiting at 0 here.
    fn normalized(s: &SubState) -> Snapshot {
        let mut snap = s.snapshot();
        for (_, e) in &mut snap.entries {
            if matches!(e.state, EntryState::Waiting { .. }) && s.config.retry.exhausted(e.attempts)
            {
                e.state = EntryState::Waiting { at: 0 };
            }
        }
        snap
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn indexes_stay_consistent_and_events_rebuild_the_state(
            ordered in any::<bool>(),
            max_attempts in 1..4u32,
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let mut cfg = config(ordered);
            cfg.max_in_flight = 6;
            cfg.max_in_flight_per_consumer = 4;
            cfg.retry.max_attempts = max_attempts;
            let mut live = SubState::new(cfg.clone(), 1);
            let mut journal: Vec<Event> = Vec::new();
            let (mut now, mut dlq_cursor) = (0u64, 0u64);
            for op in ops {
                match op {
                    Op::Scan(delays) => {
                        let from = live.next();
                        let meta = delays
                            .iter()
                            .zip(from..)
                            .filter_map(|(delay, seq)| {
                                let key = if ordered { key_of(seq) } else { None };
                                (key.is_some() || delay.is_some()).then(|| Scanned {
                                    seq,
                                    key,
                                    deliver_at: delay.map(|d| now + d),
                                })
                            })
                            .collect();
                        journal.extend(live.scanned(from + delays.len() as u64, now, meta));
                    }
                    Op::Lease(c, n) => journal.extend(live.lease(now, &format!("c{c}"), n)),
                    Op::Ack(s) => journal.extend(live.ack(&s)),
                    Op::Nack(s, delay) => journal.extend(live.nack(
                        &s,
                        now,
                        delay.map(Duration::from_millis),
                        Some("nacked".into()),
                        &mut zero,
                    )),
                    Op::Advance(ms) => {
                        now += ms;
                        journal.extend(live.expire(now, &mut zero));
                    }
                    Op::Extend(s, by) => {
                        journal.extend(live.extend(&s, now, Duration::from_millis(by)).0);
                    }
                    Op::DeadLetter(n, stored) => {
                        let taken: Vec<Seq> = live.take_exhausted(n).iter().map(|p| p.seq).collect();
                        live.assert_consistent();
                        if stored {
                            journal.push(live.emit(Event::DeadLettered { seqs: taken }));
                        } else {
                            live.abort_dead_letter(&taken);
                        }
                    }
                    Op::Seek(to) => journal.push(live.emit(Event::Seeked { to })),
                    Op::Trim(first) => journal.push(live.emit(Event::Trimmed { first })),
                    Op::Replay(s) => {
                        dlq_cursor += 1;
                        let seqs = s.into_iter().map(|seq| (seq, key_of(seq))).collect();
                        journal.push(live.emit(Event::Replayed { seqs, at: now, dlq_cursor }));
                    }
                    Op::Release(s) => journal.extend(live.release(&s)),
                    Op::Reject(s) => journal.extend(live.reject(&s, Some("rejected".into()))),
                }
                live.assert_consistent();
            }
            let mut rebuilt = SubState::new(cfg.clone(), 1);
            for event in &journal {
                rebuilt.apply(event);
            }
            rebuilt.assert_consistent();
            prop_assert_eq!(normalized(&rebuilt), normalized(&live));
            let restored = SubState::restore(cfg, live.snapshot());
            restored.assert_consistent();
        }
    }
}
