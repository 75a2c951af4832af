//! Pre-allocation: the writer keeps zero-filled space ahead of itself in the
//! active segment, whose records end at the first frame that does not check;
//! sealed segments are cut to their records; `usage()` and retention are as
//! without pre-allocation; commits racing the zero-filling never lose a record.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_core::clock::wall_now;
use courier_core::Retention;
use courier_embedded::log::{AppendRecord, LogOptions, TopicLog};

const SEGMENT: u64 = 64 * 1024;
const AHEAD: u64 = 16 * 1024;

fn open(dir: &Path, preallocate: u64) -> TopicLog {
    let opts = LogOptions {
        segment_bytes: SEGMENT,
        fsync: true,
        preallocate,
    };
    TopicLog::open(dir, opts).unwrap()
}

fn rec(i: u64) -> AppendRecord {
    AppendRecord {
        id: format!("id-{i:06}"),
        body: Bytes::from(vec![b'x'; 40 + (i as usize % 13)]),
        ..AppendRecord::default()
    }
}

async fn append_n(log: &TopicLog, from: u64, n: u64) {
    for i in from..from + n {
        assert_eq!(log.append(vec![rec(i)]).await.unwrap().first_seq, i);
    }
}

/// Appends `n` records (a multiple of 10) ten at a time.
async fn append_batches(log: &TopicLog, from: u64, n: u64) {
    for i in (from..from + n).step_by(10) {
        let batch = (i..i + 10).map(rec).collect();
        assert_eq!(log.append(batch).await.unwrap().first_seq, i);
    }
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn active(dir: &Path) -> PathBuf {
    files(dir, "log").pop().unwrap()
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Number of frames in a segment file and where the last one ends (a zero
/// length marks free space: no record is empty).
fn frames(path: &Path) -> (u64, u64) {
    let bytes = std::fs::read(path).unwrap();
    let (mut n, mut at) = (0, 0usize);
    while at + 8 <= bytes.len() {
        let l = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if l == 0 {
            break;
        }
        n += 1;
        at += 8 + l;
    }
    (n, at as u64)
}

/// Waits until the active segment's file reaches past its records, i.e. a
/// zero-fill started after the last commit has extended it.
fn wait_for_zero_tail(dir: &Path) {
    let t = Instant::now();
    loop {
        let seg = active(dir);
        if len(&seg) > frames(&seg).1 {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no zero tail");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Checks the files against the log: sealed segments are cut to their
/// records and indexed; the active one ends with zeros only, at most
/// `ahead` of them (none when `ahead` is 0); `usage()` counts sealed files
/// plus the active segment's records.
fn check_files(dir: &Path, log: &TopicLog, ahead: u64) {
    let logs = files(dir, "log");
    let (active, sealed) = logs.split_last().unwrap();
    let mut bytes = 0;
    for seg in sealed {
        let (n, end) = frames(seg);
        assert_eq!(len(seg), end, "sealed {} cut to its records", seg.display());
        let idx = seg.with_extension("idx");
        assert_eq!(len(&idx), n * 4);
        bytes += end + n * 4;
    }
    let (_, end) = frames(active);
    let data = std::fs::read(active).unwrap();
    assert!(data[end as usize..].iter().all(|&b| b == 0), "zero tail");
    assert!(
        data.len() as u64 <= end + ahead,
        "{} zero bytes ahead, at most {ahead} wanted",
        data.len() as u64 - end
    );
    assert!(!active.with_extension("idx").exists());
    assert_eq!(
        log.usage().1,
        bytes + end,
        "usage counts records and indexes"
    );
}

#[tokio::test]
async fn zeros_are_kept_ahead_across_rolls_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = open(d, AHEAD);
    append_n(&log, 1, 1).await;
    wait_for_zero_tail(d);
    check_files(d, &log, AHEAD);
    // Several rolls; each new segment gets its zeros too.
    let mut next = 2;
    for _ in 0..3 {
        let segments = files(d, "log").len();
        while files(d, "log").len() == segments {
            append_batches(&log, next, 50).await;
            next += 50;
        }
        wait_for_zero_tail(d);
        check_files(d, &log, AHEAD);
    }
    assert!(files(d, "log").len() >= 4);
    log.close().await.unwrap();
    drop(log);

    // Reopen many times: the zero tail is free space, not damage, and stays.
    for round in 0..10 {
        let log = open(d, AHEAD);
        assert_eq!(
            (log.first_seq(), log.next_seq()),
            (1, next),
            "round {round}"
        );
        check_files(d, &log, AHEAD);
        let all = log.read(1, 100_000, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, next - 1);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, m)| m.seq == i as u64 + 1 && m.id == rec(i as u64 + 1).id));
        append_n(&log, next, 7).await;
        next += 7;
        log.close().await.unwrap();
        check_files(d, &log, AHEAD);
    }
}

/// Tiny fills and many concurrent publishers: commits keep reaching the
/// stretch being zero-filled, stop the fill and write past it. Every
/// acknowledged record must be readable, now and after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_racing_zero_fills_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ahead = 2048;
    let log = open(d, ahead);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16u64 {
        let log = log.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            for i in 0..150u64 {
                let id = t * 1_000 + i;
                let records = (0..1 + i % 3).map(|k| rec(id * 10 + k)).collect();
                let first = log.append(records).await.unwrap().first_seq;
                for k in 0..1 + i % 3 {
                    mine.push((first + k, rec(id * 10 + k).id));
                }
            }
            mine
        });
    }
    let mut acked = Vec::new();
    while let Some(mine) = tasks.join_next().await {
        acked.extend(mine.unwrap());
    }
    acked.sort();
    assert_eq!(acked.len() as u64, log.next_seq() - 1);
    let check = |log: &TopicLog| {
        let all = log.read(1, 1_000_000, usize::MAX).unwrap();
        assert_eq!(all.len(), acked.len());
        for (m, (seq, id)) in all.iter().zip(&acked) {
            assert_eq!((m.seq, &m.id), (*seq, id));
        }
    };
    check(&log);
    assert!(files(d, "log").len() > 3, "rolled a few times");
    log.close().await.unwrap();
    check_files(d, &log, ahead);
    drop(log);
    let log = open(d, ahead);
    check(&log);
    log.close().await.unwrap();
}

#[tokio::test]
async fn retention_frees_files_with_preallocation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = open(d, AHEAD);
    let mut next = 1;
    while files(d, "log").len() < 5 {
        append_batches(&log, next, 100).await;
        next += 100;
    }
    check_files(d, &log, AHEAD);
    let before = files(d, "log").len();
    let keep = Retention {
        max_messages: Some(10),
        ..Retention::default()
    };
    assert_eq!(log.enforce_retention(&keep, wall_now()).unwrap(), next - 10);
    assert_eq!(log.usage().0, 10);
    assert!(files(d, "log").len() < before);
    check_files(d, &log, AHEAD);
    append_n(&log, next, 3).await;
    assert_eq!(log.read(0, 100, usize::MAX).unwrap().len(), 13);
    log.close().await.unwrap();
}

#[tokio::test]
async fn switching_preallocation_off_and_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = open(d, AHEAD);
    append_n(&log, 1, 21).await;
    wait_for_zero_tail(d);
    log.close().await.unwrap();
    check_files(d, &log, AHEAD);
    drop(log);

    // Off: the zero tail is cut, and segments grow as they are written (no
    // thread could extend them: the file ends at its records right away).
    let log = open(d, 0);
    assert_eq!(log.next_seq(), 22);
    check_files(d, &log, 0);
    let mut next = 22;
    while files(d, "log").len() < 4 {
        append_batches(&log, next, 100).await;
        next += 100;
        check_files(d, &log, 0);
    }
    log.close().await.unwrap();
    drop(log);

    // On again: the plain active segment gets its zeros after the next commit.
    let log = open(d, AHEAD);
    assert_eq!(log.next_seq(), next);
    check_files(d, &log, 0);
    append_n(&log, next, 1).await;
    wait_for_zero_tail(d);
    check_files(d, &log, AHEAD);
    assert_eq!(log.read(1, 100_000, usize::MAX).unwrap().len() as u64, next);
    log.close().await.unwrap();
}
