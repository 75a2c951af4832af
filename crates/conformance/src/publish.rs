//! Publishing and plain delivery: receipts, durability, fan-out, competing
//! consumers, flow control and waiting pulls.

use std::collections::BTreeSet;
use std::time::Duration;

use courier_core::{Feature, SubscriptionConfig};

use crate::helpers::*;
use crate::EngineFactory;

/// Receipts number a topic's messages from 1 with unique ids; reading back
/// gives the same ids and contents; a reopen keeps them all (generated ids
/// included) and sequences go on where they were.
pub async fn receipts_are_sequential_unique_and_durable(factory: &dyn EngineFactory) {
    let (engine, clock) = open(factory).await;
    create_topic(&engine, "t").await;
    let mut with_header = msg("c");
    with_header.headers.insert("h".into(), "v".into());
    let before = clock.now();
    let mut receipts =
        publish_messages(&engine, "t", vec![msg("a"), keyed("k", "b"), with_header]).await;
    receipts.extend(publish(&engine, "t", &["d", "e"]).await);
    let after = clock.now();

    let seqs: Vec<_> = receipts.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "receipts must number messages from 1, in order"
    );
    assert!(
        receipts.iter().all(|r| !r.duplicate),
        "no publish was a retry: {receipts:?}"
    );
    let ids: BTreeSet<_> = receipts.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 5, "generated ids must be unique: {receipts:?}");
    assert!(ids.iter().all(|id| !id.is_empty()), "ids must not be empty");

    let stored = read_all(&engine, "t").await;
    assert_eq!(
        message_seqs(&stored),
        seqs,
        "read must return what was published"
    );
    assert_eq!(message_bodies(&stored), vec!["a", "b", "c", "d", "e"]);
    for (m, r) in stored.iter().zip(&receipts) {
        assert_eq!(
            m.id, r.id,
            "message {} read back with another id than its receipt's",
            m.seq
        );
        assert!(
            (before..=after).contains(&m.published_at),
            "published_at {} of message {} is outside the publish calls ({before}..={after})",
            m.published_at,
            m.seq
        );
        assert_eq!(m.deliver_at, None, "message {} was not delayed", m.seq);
    }
    assert_eq!(
        stored[1].key.as_deref(),
        Some("k"),
        "the ordering key is stored"
    );
    assert_eq!(stored[0].key, None);
    assert_eq!(
        stored[2].headers.get("h").map(String::as_str),
        Some("v"),
        "headers are stored"
    );

    let Some(engine) = factory.reopen(engine, clock.clone()).await else {
        eprintln!("reopen not supported: durability across reopen not checked");
        return;
    };
    let again = read_all(&engine, "t").await;
    assert_eq!(
        again, stored,
        "reopening changed the stored messages (ids must be stable)"
    );
    let next = publish(&engine, "t", &["f"]).await;
    assert_eq!(
        next[0].seq, 6,
        "sequences must go on after a reopen, never reused"
    );
    let info = engine.topic("t").await.must("topic");
    assert_eq!((info.first_seq, info.next_seq, info.messages), (1, 7, 6));
    done(engine).await;
}

/// Two subscriptions of one topic each get every message, in order, and
/// settling in one does not touch the other.
pub async fn fan_out_delivers_every_message_to_every_subscription(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "a", sub_config("t")).await;
    engine
        .create_subscription("b", sub_config("t"))
        .await
        .must("create_subscription b");
    publish(&engine, "t", &["1", "2", "3", "4", "5"]).await;

    let a = pull(&engine, "a", "c", 10).await;
    assert_eq!(bodies(&a), vec!["1", "2", "3", "4", "5"], "subscription a");
    assert!(
        a.iter().all(|d| d.attempt == 1),
        "first deliveries are attempt 1"
    );
    ack_all(&engine, "a", &a).await;
    let b = pull(&engine, "b", "c", 10).await;
    assert_eq!(
        bodies(&b),
        vec!["1", "2", "3", "4", "5"],
        "subscription b must get every message although a acked them"
    );
    ack_all(&engine, "b", &b).await;
    assert!(
        pull(&engine, "a", "c", 10).await.is_empty(),
        "a has nothing left"
    );
    done(engine).await;
}

/// Two consumers of one subscription split its messages: no message is
/// leased to both at once, and nothing is leased twice while leased.
pub async fn competing_consumers_never_share_a_lease(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    let all: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    publish(&engine, "t", &refs).await;

    let x = pull(&engine, "s", "x", 7).await;
    let y = pull(&engine, "s", "y", 100).await;
    assert_eq!(x.len(), 7, "x asked for 7 of 20 available messages");
    assert_eq!(y.len(), 13, "y must get the 13 messages x does not hold");
    let xs: BTreeSet<_> = seqs(&x).into_iter().collect();
    let ys: BTreeSet<_> = seqs(&y).into_iter().collect();
    assert!(
        xs.is_disjoint(&ys),
        "x and y hold the same messages: {:?}",
        xs.intersection(&ys)
    );
    assert_eq!(
        xs.union(&ys).count(),
        20,
        "together they hold every message"
    );
    assert!(
        pull(&engine, "s", "z", 100).await.is_empty(),
        "a third consumer must get nothing while everything is leased"
    );
    ack_all(&engine, "s", &y).await;
    assert!(
        pull(&engine, "s", "z", 100).await.is_empty(),
        "acked messages are not redelivered"
    );
    ack_all(&engine, "s", &x).await;
    done(engine).await;
}

/// `max_in_flight` caps the leases of the whole subscription; acking makes room.
pub async fn subscription_in_flight_limit(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    let config = SubscriptionConfig {
        max_in_flight: 5,
        ..sub_config("t")
    };
    topic_and_sub(&engine, "t", "s", config).await;
    publish(&engine, "t", &["1", "2", "3", "4", "5", "6", "7", "8"]).await;

    let a = pull(&engine, "s", "a", 3).await;
    let b = pull(&engine, "s", "b", 100).await;
    assert_eq!(
        (a.len(), b.len()),
        (3, 2),
        "5 leases at most in the subscription"
    );
    assert!(
        pull(&engine, "s", "c", 100).await.is_empty(),
        "the subscription is full"
    );
    assert_eq!(subscription(&engine, "s").await.in_flight, 5);
    ack_all(&engine, "s", &a[..1]).await;
    let c = pull(&engine, "s", "c", 100).await;
    assert_eq!(c.len(), 1, "one ack makes room for one lease");
    done(engine).await;
}

/// `max_in_flight_per_consumer` caps each consumer name separately.
pub async fn per_consumer_in_flight_limit(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    if lacks(
        &engine,
        &[Feature::PerConsumerInFlight],
        "per_consumer_in_flight_limit",
    ) {
        return;
    }
    let config = SubscriptionConfig {
        max_in_flight: 5,
        max_in_flight_per_consumer: 3,
        ..sub_config("t")
    };
    topic_and_sub(&engine, "t", "s", config).await;
    publish(&engine, "t", &["1", "2", "3", "4", "5", "6", "7", "8"]).await;

    let a = pull(&engine, "s", "a", 100).await;
    assert_eq!(a.len(), 3, "consumer a may hold 3");
    assert!(
        pull(&engine, "s", "a", 100).await.is_empty(),
        "a is at its limit"
    );
    let b = pull(&engine, "s", "b", 100).await;
    assert_eq!(b.len(), 2, "b is limited by the subscription's 5");
    ack_all(&engine, "s", &a[..1]).await;
    let a2 = pull(&engine, "s", "a", 100).await;
    assert_eq!(a2.len(), 1, "an ack gives a room for one more");
    done(engine).await;
}

/// A pull with nothing to deliver returns empty when its wait is over, not before.
pub async fn an_empty_pull_waits_out_its_wait(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    let start = tokio::time::Instant::now();
    let got = pull_wait(&engine, "s", "c", 1, Duration::from_secs(5)).await;
    assert!(got.is_empty());
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "returned after {waited:?}, before its wait"
    );
    done(engine).await;
}

/// A waiting pull returns as soon as a message is published (real time: the
/// publish must wake it long before its 60 s wait).
pub async fn a_waiting_pull_wakes_on_publish(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    let waiting = {
        let engine = engine.clone();
        tokio::spawn(async move { pull_wait(&engine, "s", "c", 10, Duration::from_secs(60)).await })
    };
    // Let the pull park first when it can; either order must work.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    publish(&engine, "t", &["wake up"]).await;
    let got = within("the waiting pull to return after a publish", waiting)
        .await
        .expect("pull task panicked");
    assert_eq!(bodies(&got), vec!["wake up"]);
    done(engine).await;
}
