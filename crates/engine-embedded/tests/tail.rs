//! Topic tails through the engine API: start positions, the catch-up to live
//! switch, gaps, one shared log read for many listeners, lagging listeners,
//! the shared reader's life, and the ends of a tail.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_core::{
    Engine, Error, NewMessage, Retention, Seq, StartPosition, Tail, TailEvent, TopicConfig,
};
use courier_embedded::{EmbeddedConfig, EmbeddedEngine};
use futures_util::StreamExt;
use tempfile::TempDir;

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

async fn open(dir: &TempDir) -> Arc<EmbeddedEngine> {
    EmbeddedEngine::open(EmbeddedConfig {
        data_dir: dir.path().to_path_buf(),
        fsync: false,
        segment_bytes: 64 * 1024,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn msgs(n: usize, tag: &str) -> Vec<NewMessage> {
    (0..n)
        .map(|i| NewMessage {
            body: Bytes::from(format!("{tag}-{i}")),
            ..Default::default()
        })
        .collect()
}

async fn publish(engine: &EmbeddedEngine, topic: &str, n: usize) -> Vec<Seq> {
    let receipts = engine.publish(topic, msgs(n, topic)).await.unwrap();
    receipts.iter().map(|r| r.seq).collect()
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until `cond` holds, checking every millisecond.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}

/// The next event of a tail, which must come.
async fn next_event(tail: &mut Tail) -> TailEvent {
    within("a tail event", tail.next())
        .await
        .expect("the tail ended")
        .expect("the tail failed")
}

/// Collects messages until seq `last`, failing on gaps, errors, duplicates
/// and ids the engine did not fill in.
async fn seqs_until(tail: &mut Tail, last: Seq) -> Vec<Seq> {
    let mut seqs: Vec<Seq> = Vec::new();
    while seqs.last().is_none_or(|&s| s < last) {
        match next_event(tail).await {
            TailEvent::Messages(batch) => {
                assert!(!batch.is_empty(), "an empty batch");
                for m in batch.iter() {
                    assert!(!m.id.is_empty(), "message {} is not named", m.seq);
                    seqs.push(m.seq);
                }
            }
            gap => panic!("unexpected {gap:?} after {:?}", seqs.last()),
        }
    }
    seqs
}

fn range(from: Seq, to: Seq) -> Vec<Seq> {
    (from..=to).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_start_position_then_live_messages() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir).await;
    engine
        .create_topic("t", TopicConfig::default())
        .await
        .unwrap();
    publish(&engine, "t", 5).await;
    // A later publish time than the first five.
    let first_five = engine.read("t", 1, 5).await.unwrap();
    let before = first_five[4].published_at;
    eventually("the clock to move", || {
        courier_core::clock::wall_now() > before
    })
    .await;
    publish(&engine, "t", 5).await;
    let t6 = engine.read("t", 6, 1).await.unwrap()[0].published_at;
    assert!(t6 > before);

    let mut earliest = engine.tail("t", StartPosition::Earliest).await.unwrap();
    let mut seq4 = engine.tail("t", StartPosition::Seq(4)).await.unwrap();
    let mut time = engine.tail("t", StartPosition::Time(t6)).await.unwrap();
    let mut new = engine.tail("t", StartPosition::New).await.unwrap();
    let mut beyond = engine.tail("t", StartPosition::Seq(1000)).await.unwrap();
    publish(&engine, "t", 5).await;

    assert_eq!(seqs_until(&mut earliest, 15).await, range(1, 15));
    assert_eq!(seqs_until(&mut seq4, 15).await, range(4, 15));
    assert_eq!(seqs_until(&mut time, 15).await, range(6, 15));
    assert_eq!(seqs_until(&mut new, 15).await, range(11, 15));
    assert_eq!(seqs_until(&mut beyond, 15).await, range(11, 15));

    // The ids are those of the receipts, the bodies those published.
    let receipts = engine.publish("t", msgs(3, "late")).await.unwrap();
    match next_event(&mut earliest).await {
        TailEvent::Messages(batch) => {
            let ids: Vec<_> = batch.iter().map(|m| m.id.clone()).collect();
            let want: Vec<_> = receipts.iter().map(|r| r.id.clone()).collect();
            assert_eq!(ids, want);
            assert_eq!(batch[2].body, Bytes::from("late-2"));
        }
        gap => panic!("unexpected {gap:?}"),
    }
}

/// Listeners join from the start, from the middle and from the end while a
/// publisher keeps going: each sees every message once, in order, across its
/// catch-up reads and the switch to the shared broadcast.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catch_up_joins_live_without_gap_or_duplicate() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir).await;
    engine
        .create_topic("t", TopicConfig::default())
        .await
        .unwrap();
    // Far more than one catch-up batch behind.
    for _ in 0..30 {
        publish(&engine, "t", 100).await;
    }
    const BATCHES: usize = 300;
    const PER_BATCH: usize = 7;
    let last = 3000 + (BATCHES * PER_BATCH) as Seq;

    // The last batches wait for every listener to join, so that those
    // joining at the end have live messages to take too.
    let paused = Arc::new(AtomicBool::new(false));
    let (joined, all_joined) = tokio::sync::oneshot::channel::<()>();
    let mut all_joined = Some(all_joined);
    let publisher = {
        let engine = engine.clone();
        let paused = paused.clone();
        tokio::spawn(async move {
            for b in 0..BATCHES {
                if b == BATCHES - 10 {
                    paused.store(true, Ordering::SeqCst);
                    all_joined.take().unwrap().await.unwrap();
                }
                publish(&engine, "t", PER_BATCH).await;
            }
        })
    };
    let mut listeners = Vec::new();
    for i in 0..24u64 {
        let start = match i % 4 {
            0 => StartPosition::Earliest,
            1 => StartPosition::Seq(1 + i * 97),
            2 => StartPosition::Seq(2900 + i),
            _ => StartPosition::New,
        };
        let mut tail = engine.tail("t", start).await.unwrap();
        listeners.push(tokio::spawn(async move {
            (start, seqs_until(&mut tail, last).await)
        }));
        // Join at different points of the publishing.
        let joined_at = engine.topic("t").await.unwrap().next_seq;
        within("the publisher to go on", async {
            while !paused.load(Ordering::SeqCst)
                && engine.topic("t").await.unwrap().next_seq < joined_at + 50
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
    joined.send(()).unwrap();
    within("the publisher", publisher).await.unwrap();
    let stats = engine.tail_stats("t").unwrap();
    assert!(stats.catch_up_reads > 0 && stats.hub_reads > 0, "{stats:?}");
    for listener in listeners {
        let (start, seqs) = within("a listener", listener).await.unwrap();
        let first = seqs[0];
        match start {
            StartPosition::Earliest => assert_eq!(first, 1),
            StartPosition::Seq(s) => assert_eq!(first, s),
            _ => {}
        }
        assert!(
            seqs == range(first, last),
            "{start:?}: not every seq from {first} once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_removed_by_retention_is_a_gap() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir).await;
    let config = TopicConfig {
        retention: Retention {
            max_messages: Some(10),
            ..Default::default()
        },
        ..Default::default()
    };
    engine.create_topic("t", config).await.unwrap();
    for _ in 0..5 {
        publish(&engine, "t", 10).await;
    }
    // Joined before retention ran: it finds the log moved past its cursor.
    let mut overtaken = engine.tail("t", StartPosition::Seq(1)).await.unwrap();
    engine.enforce_retention().unwrap();
    assert_eq!(engine.topic("t").await.unwrap().first_seq, 41);

    let mut from_one = engine.tail("t", StartPosition::Seq(1)).await.unwrap();
    let mut earliest = engine.tail("t", StartPosition::Earliest).await.unwrap();
    for tail in [&mut overtaken, &mut from_one] {
        assert_eq!(next_event(tail).await, TailEvent::Gap { from: 1, to: 41 });
        assert_eq!(seqs_until(tail, 50).await, range(41, 50));
    }
    // Earliest means the oldest retained message: nothing is missing.
    assert_eq!(seqs_until(&mut earliest, 50).await, range(41, 50));

    publish(&engine, "t", 3).await;
    for tail in [&mut overtaken, &mut from_one, &mut earliest] {
        assert_eq!(seqs_until(tail, 53).await, range(51, 53));
    }
}

/// A thousand listeners share the hub's reads: the log is read about once
/// per publish, not once per listener, and every listener gets the same
/// shared batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_listeners_share_one_read() {
    const LISTENERS: usize = 1000;
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 5;
    let last = (BATCHES * PER_BATCH) as Seq;
    let dir = TempDir::new().unwrap();
    let engine = open(&dir).await;
    engine
        .create_topic("t", TopicConfig::default())
        .await
        .unwrap();

    let mut listeners = Vec::new();
    for _ in 0..LISTENERS {
        let mut tail = engine.tail("t", StartPosition::New).await.unwrap();
        listeners.push(tokio::spawn(async move {
            let mut batches = Vec::new();
            let mut seqs: Vec<Seq> = Vec::new();
            while seqs.last().is_none_or(|&s| s < last) {
                match next_event(&mut tail).await {
                    TailEvent::Messages(batch) => {
                        seqs.extend(batch.iter().map(|m| m.seq));
                        batches.push(batch);
                    }
                    gap => panic!("unexpected {gap:?}"),
                }
            }
            (seqs, batches)
        }));
    }
    let stats = engine.tail_stats("t").unwrap();
    assert_eq!(stats.listeners, LISTENERS);
    assert_eq!(stats.readers, 1);

    for _ in 0..BATCHES {
        publish(&engine, "t", PER_BATCH).await;
    }
    let mut first_batches = Vec::new();
    for listener in listeners {
        let (seqs, batches) = within("a listener", listener).await.unwrap();
        assert_eq!(seqs, range(1, last));
        first_batches.push(batches.into_iter().next().unwrap());
    }
    assert!(first_batches
        .iter()
        .all(|b| b.is_shared_with(&first_batches[0])));

    let stats = engine.tail_stats("t").unwrap();
    assert!(
        (1..=2 * BATCHES as u64).contains(&stats.hub_reads),
        "{stats:?}"
    );
    assert_eq!(stats.catch_up_reads, 0, "{stats:?}");
}

/// A listener that is not polled while far more batches than the broadcast
/// keeps go by falls back to the log, then rejoins: it misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_listener_catches_up_from_the_log() {
    const BATCHES: usize = 150;
    const PER_BATCH: usize = 3;
    let dir = TempDir::new().unwrap();
    let engine = open(&dir).await;
    engine
        .create_topic("t", TopicConfig::default())
        .await
        .unwrap();
    let mut slow = engine.tail("t", StartPosition::New).await.unwrap();
    let mut fast = engine.tail("t", StartPosition::New).await.unwrap();
    let mut fast_seqs = Vec::new();
    for _ in 0..BATCHES {
        let seqs = publish(&engine, "t", PER_BATCH).await;
        // One broadcast per publish: the hub has sent it before the next.
        fast_seqs.extend(seqs_until(&mut fast, *seqs.last().unwrap()).await);
    }
    let last = (BATCHES * PER_BATCH) as Seq;
    assert_eq!(fast_seqs, range(1, last));
    assert_eq!(engine.tail_stats("t").unwrap().catch_up_reads, 0);

    assert_eq!(seqs_until(&mut slow, last).await, range(1, last));
    assert!(engine.tail_stats("t").unwrap().catch_up_reads > 0);

    // Back on the broadcast.
    publish(&engine, "t", 2).await;
    assert_eq!(
        seqs_until(&mut slow, last + 2).await,
        range(last + 1, last + 2)
    );
    assert_eq!(
        seqs_until(&mut fast, last + 2).await,
        range(last + 1, last + 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_reader_runs_only_while_listened_to() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir).await;
    engine
        .create_topic("t", TopicConfig::default())
        .await
        .unwrap();
    assert_eq!(engine.tail_stats("t").unwrap().readers, 0);

    let mut tails = Vec::new();
    for _ in 0..3 {
        tails.push(engine.tail("t", StartPosition::New).await.unwrap());
    }
    publish(&engine, "t", 2).await;
    for tail in &mut tails {
        assert_eq!(seqs_until(tail, 2).await, range(1, 2));
    }
    let stats = engine.tail_stats("t").unwrap();
    assert_eq!((stats.readers, stats.listeners), (1, 3));

    drop(tails);
    eventually("the reader to stop", || {
        let s = engine.tail_stats("t").unwrap();
        (s.readers, s.listeners) == (0, 0)
    })
    .await;
    // Publishing with nobody listening reads nothing.
    let reads = engine.tail_stats("t").unwrap().hub_reads;
    publish(&engine, "t", 2).await;
    assert_eq!(engine.tail_stats("t").unwrap().hub_reads, reads);

    // The next listener restarts it.
    let mut tail = engine.tail("t", StartPosition::Seq(3)).await.unwrap();
    assert_eq!(engine.tail_stats("t").unwrap().readers, 1);
    publish(&engine, "t", 1).await;
    assert_eq!(seqs_until(&mut tail, 5).await, range(3, 5));

    // A tail that ended on an error no longer counts.
    engine.shutdown().await.unwrap();
    assert!(matches!(
        within("the end", tail.next()).await,
        Some(Err(Error::ShuttingDown))
    ));
    eventually("the reader to stop", || {
        let s = engine.tail_stats("t").unwrap();
        (s.readers, s.listeners) == (0, 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_tail() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir).await;
    engine
        .create_topic("t", TopicConfig::default())
        .await
        .unwrap();
    publish(&engine, "t", 3).await;
    let mut live = engine.tail("t", StartPosition::New).await.unwrap();
    let mut reading = engine.tail("t", StartPosition::Earliest).await.unwrap();
    assert_eq!(seqs_until(&mut reading, 3).await, range(1, 3));
    let waiting = tokio::spawn(async move {
        let end = live.next().await;
        (end, live.next().await)
    });

    engine.shutdown().await.unwrap();
    let (end, after) = within("the live tail to end", waiting).await.unwrap();
    assert!(matches!(end, Some(Err(Error::ShuttingDown))), "{end:?}");
    assert!(after.is_none());
    assert!(matches!(
        within("the end", reading.next()).await,
        Some(Err(Error::ShuttingDown))
    ));
    assert!(reading.next().await.is_none());
    assert!(matches!(
        engine.tail("t", StartPosition::New).await,
        Err(Error::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_topic_ends_its_tails() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir).await;
    engine
        .create_topic("t", TopicConfig::default())
        .await
        .unwrap();
    let mut tail = engine.tail("t", StartPosition::New).await.unwrap();
    publish(&engine, "t", 2).await;
    assert_eq!(seqs_until(&mut tail, 2).await, range(1, 2));

    engine.delete_topic("t").await.unwrap();
    let end = within("the tail to end", tail.next()).await;
    assert!(
        matches!(&end, Some(Err(Error::TopicNotFound(name))) if name == "t"),
        "{end:?}"
    );
    assert!(tail.next().await.is_none());

    // A new topic of the same name starts afresh.
    engine
        .create_topic("t", TopicConfig::default())
        .await
        .unwrap();
    let mut tail = engine.tail("t", StartPosition::Earliest).await.unwrap();
    publish(&engine, "t", 1).await;
    assert_eq!(seqs_until(&mut tail, 1).await, vec![1]);
}
