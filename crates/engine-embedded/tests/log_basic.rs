//! The topic log against real files: round trips, segment rolls, restarts,
//! time lookups, retention and concurrent appends.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use courier_core::clock::wall_now;
use courier_core::{Error, Headers, Retention};
use courier_embedded::log::{AppendRecord, LogOptions, TopicLog};

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        fsync: false,
        ..LogOptions::default()
    }
}

fn rec(i: u64) -> AppendRecord {
    AppendRecord {
        id: format!("id-{i:06}"),
        key: None,
        headers: Headers::new(),
        body: Bytes::from(format!("body-{i:06}")),
        deliver_at: None,
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    v.sort();
    v
}

async fn append_n(log: &TopicLog, from: u64, n: u64) {
    for i in from..from + n {
        let a = log.append(vec![rec(i)]).await.unwrap();
        assert_eq!(a.first_seq, i);
    }
}

#[tokio::test]
async fn round_trip_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let log = TopicLog::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!((log.first_seq(), log.next_seq()), (1, 1));
    let mut headers = Headers::new();
    headers.insert("content-type".into(), "text/plain".into());
    headers.insert("empty".into(), String::new());
    let full = AppendRecord {
        id: "01HXYZ".into(),
        key: Some("customer-7".into()),
        headers: headers.clone(),
        body: Bytes::from_static(b"\x00\xffbinary body"),
        deliver_at: Some(1_700_000_000_123),
    };
    let bare = AppendRecord {
        id: String::new(),
        key: Some(String::new()),
        headers: Headers::new(),
        body: Bytes::new(),
        deliver_at: None,
    };
    let before = wall_now();
    let a = log.append(vec![full.clone(), bare.clone()]).await.unwrap();
    assert_eq!(a.first_seq, 1);
    assert!(a.published_at >= before && a.published_at <= wall_now());
    assert_eq!(log.next_seq(), 3);
    assert_eq!(*log.watch().borrow(), 3);

    let got = log.read(1, 10, usize::MAX).unwrap();
    assert_eq!(got.len(), 2);
    let (m1, m2) = (&got[0], &got[1]);
    assert_eq!(m1.seq, 1);
    assert_eq!(m1.id, full.id);
    assert_eq!(m1.key, full.key);
    assert_eq!(m1.headers, headers);
    assert_eq!(m1.body, full.body);
    assert_eq!(m1.deliver_at, full.deliver_at);
    assert_eq!(m1.published_at, a.published_at);
    assert_eq!(m2.seq, 2);
    assert_eq!(m2.id, "");
    assert_eq!(m2.key.as_deref(), Some(""));
    assert!(m2.headers.is_empty() && m2.body.is_empty() && m2.deliver_at.is_none());
    assert_eq!(m2.published_at, a.published_at);

    assert_eq!(log.read_one(2).unwrap().unwrap(), *m2);
    assert_eq!(log.read_one(0).unwrap(), None);
    assert_eq!(log.read_one(3).unwrap(), None);
    assert!(log.read(3, 10, usize::MAX).unwrap().is_empty());
    assert!(log.read(1, 0, usize::MAX).unwrap().is_empty());
    log.close().await.unwrap();
}

#[tokio::test]
async fn reads_across_segment_rolls_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = TopicLog::open(dir.path(), opts(300)).unwrap();
    append_n(&log, 1, 50).await;
    log.append((51..=60).map(rec).collect()).await.unwrap();
    assert!(segment_files(dir.path()).len() > 5, "tiny segments roll");

    let all = log.read(1, 1000, usize::MAX).unwrap();
    assert_eq!(all.len(), 60);
    for (i, m) in all.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(m.seq, seq);
        assert_eq!(m.id, format!("id-{seq:06}"));
        assert_eq!(m.body, Bytes::from(format!("body-{seq:06}")));
    }
    // Windows starting anywhere, of any size.
    for from in 1..=61 {
        let got = log.read(from, 7, usize::MAX).unwrap();
        let want: Vec<u64> = (from..(from + 7).min(61)).collect();
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), want);
    }
    for seq in 1..=60 {
        assert_eq!(log.read_one(seq).unwrap().unwrap().seq, seq);
    }
    // The byte budget stops early, but never below one message.
    assert_eq!(log.read(5, 100, 0).unwrap().len(), 1);
    let some = log.read(5, 100, 200).unwrap();
    assert!(!some.is_empty() && some.len() < 56, "{}", some.len());

    log.close().await.unwrap();
    assert!(matches!(
        log.append(vec![rec(0)]).await,
        Err(Error::ShuttingDown)
    ));
    drop(log);

    let log = TopicLog::open(dir.path(), opts(300)).unwrap();
    assert_eq!((log.first_seq(), log.next_seq()), (1, 61));
    assert_eq!(log.read(1, 1000, usize::MAX).unwrap(), all);
    append_n(&log, 61, 5).await;
    assert_eq!(log.read(58, 100, usize::MAX).unwrap().len(), 8);
    log.close().await.unwrap();
}

#[tokio::test]
async fn missing_index_of_sealed_segment_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let log = TopicLog::open(dir.path(), opts(300)).unwrap();
    append_n(&log, 1, 30).await;
    log.close().await.unwrap();
    drop(log);
    let first = segment_files(dir.path())[0].replace(".log", ".idx");
    std::fs::remove_file(dir.path().join(&first)).unwrap();
    let log = TopicLog::open(dir.path(), opts(300)).unwrap();
    let all = log.read(1, 100, usize::MAX).unwrap();
    assert_eq!(all.len(), 30);
    assert!(dir.path().join(first).exists());
}

/// Appends until the wall clock moves, so consecutive batches differ in time.
async fn append_at_new_ms(log: &TopicLog, seq: u64) -> u64 {
    let last = wall_now();
    while wall_now() == last {
        std::hint::spin_loop();
    }
    log.append(vec![rec(seq)]).await.unwrap().published_at
}

#[tokio::test]
async fn seq_for_time_binary_searches() {
    let dir = tempfile::tempdir().unwrap();
    let log = TopicLog::open(dir.path(), opts(200)).unwrap();
    assert_eq!(log.seq_for_time(0).unwrap(), 1);
    let mut times = Vec::new();
    for seq in 1..=20 {
        times.push(append_at_new_ms(&log, seq).await);
    }
    assert!(times.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(log.seq_for_time(0).unwrap(), 1);
    for (i, &t) in times.iter().enumerate() {
        assert_eq!(log.seq_for_time(t).unwrap(), i as u64 + 1);
        assert_eq!(log.seq_for_time(t + 1).unwrap(), i as u64 + 2);
    }
    assert_eq!(log.seq_for_time(u64::MAX).unwrap(), 21);
}

#[tokio::test]
async fn retention_by_count_deletes_files_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let log = TopicLog::open(dir.path(), opts(300)).unwrap();
    append_n(&log, 1, 100).await;
    let files_before = segment_files(dir.path()).len();
    let (_, bytes_before) = log.usage();
    let keep = Retention {
        max_messages: Some(10),
        ..Retention::default()
    };
    let now = wall_now();
    assert_eq!(log.enforce_retention(&keep, now).unwrap(), 91);
    assert_eq!(log.first_seq(), 91);
    let (messages, bytes) = log.usage();
    assert_eq!(messages, 10);
    assert!(bytes < bytes_before / 4, "{bytes} vs {bytes_before}");
    let files = segment_files(dir.path());
    assert!(files.len() < files_before / 4);
    let first_base: u64 = files[0].trim_end_matches(".log").parse().unwrap();
    assert!(first_base <= 91);
    let got = log.read(1, 100, usize::MAX).unwrap();
    assert_eq!(got.first().unwrap().seq, 91);
    assert_eq!(got.len(), 10);
    assert_eq!(log.read_one(90).unwrap(), None);
    // Idempotent.
    assert_eq!(log.enforce_retention(&keep, now).unwrap(), 91);
    log.close().await.unwrap();
    drop(log);

    let log = TopicLog::open(dir.path(), opts(300)).unwrap();
    assert_eq!((log.first_seq(), log.next_seq()), (91, 101));
    assert_eq!(log.read(0, 100, usize::MAX).unwrap().len(), 10);
    // Trimming everything leaves an empty log that still counts on.
    let none = Retention {
        max_messages: Some(0),
        ..Retention::default()
    };
    assert_eq!(log.enforce_retention(&none, now).unwrap(), 101);
    assert_eq!(log.usage().0, 0);
    assert!(log.read(0, 100, usize::MAX).unwrap().is_empty());
    append_n(&log, 101, 1).await;
    assert_eq!(log.read(0, 100, usize::MAX).unwrap()[0].seq, 101);
}

#[tokio::test]
async fn retention_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = TopicLog::open(dir.path(), opts(1000)).unwrap();
    append_n(&log, 1, 1).await;
    let (_, one) = log.usage();
    append_n(&log, 2, 99).await;
    // Every record has the same size, `one`.
    let limit = one * 25 + one / 2;
    let keep = Retention {
        max_bytes: Some(limit),
        ..Retention::default()
    };
    assert_eq!(log.enforce_retention(&keep, wall_now()).unwrap(), 76);
    assert_eq!(log.usage().0, 25);
    // Disk usage is within one segment of the limit.
    assert!(log.usage().1 <= limit + 1000 + 4 * 100);
    let keep_none = Retention {
        max_bytes: Some(0),
        ..Retention::default()
    };
    assert_eq!(log.enforce_retention(&keep_none, wall_now()).unwrap(), 101);
}

#[tokio::test]
async fn retention_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let log = TopicLog::open(dir.path(), opts(300)).unwrap();
    let old = log.append((1..=10).map(rec).collect()).await.unwrap();
    let recent = append_at_new_ms(&log, 11).await;
    assert!(recent > old.published_at);
    let now = recent + 60_000;
    let keep = |age: u64| Retention {
        max_age: Some(Duration::from_millis(age)),
        ..Retention::default()
    };
    // Both batches are young enough.
    assert_eq!(
        log.enforce_retention(&keep(now - old.published_at), now)
            .unwrap(),
        1
    );
    // Only the second one is.
    assert_eq!(log.enforce_retention(&keep(now - recent), now).unwrap(), 11);
    assert_eq!(log.read(0, 100, usize::MAX).unwrap().len(), 1);
    assert_eq!(log.enforce_retention(&keep(0), now).unwrap(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_unique_contiguous_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let log = TopicLog::open(
        dir.path(),
        LogOptions {
            segment_bytes: 4096,
            fsync: true,
            ..LogOptions::default()
        },
    )
    .unwrap();
    let mut tasks = Vec::new();
    for task in 0..64u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..20u64 {
                let n = 1 + (task + i) % 3;
                let batch: Vec<AppendRecord> = (0..n)
                    .map(|j| AppendRecord {
                        id: format!("{task}-{i}-{j}"),
                        body: Bytes::from(format!("payload {task} {i} {j}")),
                        ..AppendRecord::default()
                    })
                    .collect();
                let ids: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
                let a = log.append(batch).await.unwrap();
                for (j, id) in ids.into_iter().enumerate() {
                    got.push((a.first_seq + j as u64, id));
                }
            }
            got
        }));
    }
    let mut by_seq = HashMap::new();
    for t in tasks {
        for (seq, id) in t.await.unwrap() {
            assert!(by_seq.insert(seq, id).is_none(), "seq {seq} given twice");
        }
    }
    let total = by_seq.len() as u64;
    assert_eq!(log.next_seq(), total + 1);
    let all = log.read(1, usize::MAX, usize::MAX).unwrap();
    assert_eq!(all.len() as u64, total);
    let mut last_time = 0;
    for m in &all {
        let id = &by_seq[&m.seq];
        assert_eq!(&m.id, id);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            m.body,
            Bytes::from(format!("payload {} {} {}", parts[0], parts[1], parts[2]))
        );
        assert!(m.published_at >= last_time, "published_at never decreases");
        last_time = m.published_at;
    }
    log.close().await.unwrap();
}

#[tokio::test]
async fn watch_follows_commits() {
    let dir = tempfile::tempdir().unwrap();
    let log = TopicLog::open(dir.path(), opts(1 << 20)).unwrap();
    let mut watch = log.watch();
    assert_eq!(*watch.borrow_and_update(), 1);
    let writer = log.clone();
    let task = tokio::spawn(async move { writer.append(vec![rec(1), rec(2)]).await });
    watch.changed().await.unwrap();
    assert_eq!(*watch.borrow(), 3);
    task.await.unwrap().unwrap();
}
