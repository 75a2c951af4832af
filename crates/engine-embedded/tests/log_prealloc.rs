//! Pre-allocated segments: the active segment is a zero-filled file of
//! `segment_bytes` whose records end at the first frame that does not check;
//! a spare file is prepared in the background; sealed segments are cut to
//! their records; `usage()` and retention are as without pre-allocation.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_core::clock::wall_now;
use courier_core::Retention;
use courier_embedded::log::{AppendRecord, LogOptions, TopicLog};

const SEGMENT: u64 = 64 * 1024;

fn open(dir: &Path, prealloc: bool) -> TopicLog {
    let opts = LogOptions {
        segment_bytes: SEGMENT,
        fsync: true,
    };
    TopicLog::open_with(dir, opts, prealloc).unwrap()
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

fn spare(dir: &Path) -> PathBuf {
    dir.join("spare.prep")
}

/// Waits until the background preparer has left a complete spare file.
fn wait_for_spare(dir: &Path) {
    let t = Instant::now();
    while !spare(dir).exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no spare prepared");
        std::thread::sleep(Duration::from_millis(2));
    }
    // The file is renamed just before the preparing thread returns it.
    std::thread::sleep(Duration::from_millis(20));
}

/// Checks the files against the log: sealed segments are cut to their
/// records and indexed, the active one keeps its zero tail (when `prealloc`),
/// and `usage()` counts sealed files plus the active segment's records.
fn check_files(dir: &Path, log: &TopicLog, prealloc: bool) {
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
    if prealloc {
        assert!(len(active) >= SEGMENT, "active segment pre-allocated");
        let data = std::fs::read(active).unwrap();
        assert!(data[end as usize..].iter().all(|&b| b == 0));
    } else {
        assert_eq!(len(active), end);
    }
    assert!(!active.with_extension("idx").exists());
    assert_eq!(
        log.usage().1,
        bytes + end,
        "usage counts records and indexes"
    );
}

#[tokio::test]
async fn active_segment_is_preallocated_across_rolls_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = open(d, true);
    append_n(&log, 1, 1).await;
    // The first append asks for a spare; once ready, the plain first segment gives way.
    wait_for_spare(d);
    append_n(&log, 2, 1).await;
    assert_eq!(files(d, "log").len(), 2, "rolled early onto the spare");
    assert_eq!(len(files(d, "log").last().unwrap()), SEGMENT);
    check_files(d, &log, true);
    // Several rolls; the spare is re-prepared after each.
    let mut next = 3;
    for _ in 0..3 {
        wait_for_spare(d);
        let segments = files(d, "log").len();
        while files(d, "log").len() == segments {
            append_batches(&log, next, 50).await;
            next += 50;
        }
        check_files(d, &log, true);
    }
    log.close().await.unwrap();
    drop(log);

    // Reopen many times: the zero tail is free space, not damage, and stays.
    for round in 0..10 {
        let log = open(d, true);
        assert_eq!(
            (log.first_seq(), log.next_seq()),
            (1, next),
            "round {round}"
        );
        check_files(d, &log, true);
        let all = log.read(1, 100_000, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, next - 1);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, m)| m.seq == i as u64 + 1 && m.id == rec(i as u64 + 1).id));
        append_n(&log, next, 7).await;
        next += 7;
        check_files(d, &log, true);
        log.close().await.unwrap();
        assert!(
            !d.join("spare.zeroing").exists(),
            "close stops the preparer"
        );
    }
}

#[tokio::test]
async fn retention_frees_files_with_preallocation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = open(d, true);
    append_n(&log, 1, 1).await;
    let mut next = 2;
    while files(d, "log").len() < 5 {
        if !spare(d).exists() {
            wait_for_spare(d);
        }
        append_batches(&log, next, 100).await;
        next += 100;
    }
    check_files(d, &log, true);
    let before = files(d, "log").len();
    let keep = Retention {
        max_messages: Some(10),
        ..Retention::default()
    };
    assert_eq!(log.enforce_retention(&keep, wall_now()).unwrap(), next - 10);
    assert_eq!(log.usage().0, 10);
    assert!(files(d, "log").len() < before);
    check_files(d, &log, true);
    append_n(&log, next, 3).await;
    assert_eq!(log.read(0, 100, usize::MAX).unwrap().len(), 13);
    log.close().await.unwrap();
}

#[tokio::test]
async fn switching_preallocation_off_and_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = open(d, true);
    append_n(&log, 1, 1).await;
    wait_for_spare(d);
    append_n(&log, 2, 20).await;
    check_files(d, &log, true);
    log.close().await.unwrap();
    drop(log);

    // Off: the zero tail is cut, the spare removed, and segments grow as written.
    let log = open(d, false);
    assert_eq!(log.next_seq(), 22);
    assert!(!spare(d).exists());
    check_files(d, &log, false);
    let mut next = 22;
    while files(d, "log").len() < 4 {
        append_batches(&log, next, 100).await;
        next += 100;
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(!spare(d).exists(), "no spare without pre-allocation");
    check_files(d, &log, false);
    log.close().await.unwrap();
    drop(log);

    // On again: the plain active segment gives way to a spare once one is ready.
    let log = open(d, true);
    assert_eq!(log.next_seq(), next);
    check_files(d, &log, false);
    append_n(&log, next, 1).await;
    wait_for_spare(d);
    append_n(&log, next + 1, 1).await;
    check_files(d, &log, true);
    assert_eq!(
        log.read(1, 100_000, usize::MAX).unwrap().len() as u64,
        next + 1
    );
    log.close().await.unwrap();
}
