//! Crash recovery of the topic log: the tail of the last segment is torn or
//! garbled in several ways; reopening must serve every intact record before
//! the damage, nothing after it, and continue with the right seqs.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use courier_embedded::log::{AppendRecord, LogOptions, TopicLog};

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        fsync: true,
    }
}

fn rec(i: u64) -> AppendRecord {
    AppendRecord {
        id: format!("id-{i}"),
        key: Some(format!("k{}", i % 3)),
        body: Bytes::from(vec![i as u8; 20 + (i as usize % 7)]),
        ..AppendRecord::default()
    }
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

/// Start offsets of the frames in a segment file, by walking their lengths.
fn frame_starts(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut starts = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        starts.push(at as u64);
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    starts
}

/// Writes `n` records to a fresh log in `dir`, closes it, and returns the
/// base seq of its last segment and the frame starts in it.
async fn build(dir: &Path, n: u64, segment_bytes: u64) -> (u64, Vec<u64>) {
    let log = TopicLog::open(dir, opts(segment_bytes)).unwrap();
    for i in 1..=n {
        log.append(vec![rec(i)]).await.unwrap();
    }
    log.close().await.unwrap();
    let last = last_segment(dir);
    let base = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    (base, frame_starts(&last))
}

/// Reopens and checks that exactly seqs 1..=`intact` are served, then that
/// appends continue at `intact + 1` and survive another reopen.
async fn check_recovered(dir: &Path, intact: u64, segment_bytes: u64) {
    let log = TopicLog::open(dir, opts(segment_bytes)).unwrap();
    assert_eq!(log.next_seq(), intact + 1, "records kept");
    let got = log.read(1, 10_000, usize::MAX).unwrap();
    assert_eq!(got.len() as u64, intact);
    for (i, m) in got.iter().enumerate() {
        let want = rec(i as u64 + 1);
        assert_eq!(m.seq, i as u64 + 1);
        assert_eq!((&m.id, &m.key, &m.body), (&want.id, &want.key, &want.body));
    }
    assert!(log.read_one(intact + 1).unwrap().is_none());
    for i in intact + 1..=intact + 3 {
        assert_eq!(log.append(vec![rec(i)]).await.unwrap().first_seq, i);
    }
    log.close().await.unwrap();
    drop(log);
    let log = TopicLog::open(dir, opts(segment_bytes)).unwrap();
    assert_eq!(log.next_seq(), intact + 4);
    let got = log.read(1, 10_000, usize::MAX).unwrap();
    assert_eq!(got.len() as u64, intact + 3);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, m)| m.seq == i as u64 + 1 && m.id == rec(i as u64 + 1).id));
}

/// Each damage case on a single-segment log and on a log whose last segment
/// follows several sealed ones.
async fn each_layout<F>(damage: F)
where
    F: Fn(&Path, &[u64]) -> usize,
{
    for segment_bytes in [1 << 20, 400] {
        let dir = tempfile::tempdir().unwrap();
        let (base, starts) = build(dir.path(), 40, segment_bytes).await;
        assert!(starts.len() >= 3, "last segment holds a few records");
        // `damage` returns how many records of the last segment stay intact.
        let kept = damage(&last_segment(dir.path()), &starts);
        check_recovered(dir.path(), base - 1 + kept as u64, segment_bytes).await;
    }
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[tokio::test]
async fn half_a_header() {
    each_layout(|path, starts| {
        let last = *starts.last().unwrap();
        truncate(path, last + 4);
        starts.len() - 1
    })
    .await;
}

#[tokio::test]
async fn half_a_payload() {
    each_layout(|path, starts| {
        let last = *starts.last().unwrap();
        let len = std::fs::metadata(path).unwrap().len();
        truncate(path, last + (len - last) / 2 + 4);
        starts.len() - 1
    })
    .await;
}

#[tokio::test]
async fn flipped_crc_byte_in_the_middle() {
    each_layout(|path, starts| {
        let k = starts.len() / 2;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, starts[k] + 5).unwrap();
        file.write_all_at(&[b[0] ^ 0x40], starts[k] + 5).unwrap();
        k
    })
    .await;
}

#[tokio::test]
async fn garbled_payload_byte_of_last_record() {
    each_layout(|path, starts| {
        let last = *starts.last().unwrap();
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(b"\xde\xad", last + 20).unwrap();
        starts.len() - 1
    })
    .await;
}

#[tokio::test]
async fn garbage_and_zeros_after_the_end() {
    each_layout(|path, starts| {
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(&[0u8; 4096]).unwrap();
        starts.len()
    })
    .await;
    each_layout(|path, starts| {
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        // A length that claims more than the file holds, then noise.
        file.write_all(&[0xff, 0xff, 0, 0, 1, 2, 3, 4, 5, 6, 7])
            .unwrap();
        starts.len()
    })
    .await;
}

#[tokio::test]
async fn empty_last_segment_file() {
    each_layout(|path, _| {
        truncate(path, 0);
        0
    })
    .await;
}
