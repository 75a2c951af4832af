//! Seqs are never reused: when records given out are lost from the tail of
//! the log, or a floor is raised from outside, the log continues above them,
//! leaving a hole between two segments that every reader skips.
//!
//! Every case runs on a log of one segment and on one of many small segments,
//! with plain and with pre-allocated segments (their open paths differ).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use courier_core::clock::wall_now;
use courier_core::{Error, Message, Retention};
use courier_embedded::log::{AppendRecord, LogOptions, TopicLog, DEFAULT_PREALLOCATE};

#[derive(Clone, Copy, Debug)]
struct Layout {
    segment_bytes: u64,
    preallocate: u64,
}

const LAYOUTS: [Layout; 4] = [
    Layout {
        segment_bytes: 1 << 20,
        preallocate: 0,
    },
    Layout {
        segment_bytes: 1 << 20,
        preallocate: DEFAULT_PREALLOCATE,
    },
    // About four records per segment.
    Layout {
        segment_bytes: 300,
        preallocate: 0,
    },
    Layout {
        segment_bytes: 300,
        preallocate: DEFAULT_PREALLOCATE,
    },
];

impl Layout {
    fn open(&self, dir: &Path) -> TopicLog {
        let opts = LogOptions {
            segment_bytes: self.segment_bytes,
            fsync: true,
            preallocate: self.preallocate,
        };
        TopicLog::open(dir, opts).unwrap()
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

async fn append_n(log: &TopicLog, from: u64, n: u64) {
    for i in from..from + n {
        assert_eq!(log.append(vec![rec(i)]).await.unwrap().first_seq, i);
    }
}

/// Appends one record once the wall clock has moved, so records differ in time.
async fn append_at_new_ms(log: &TopicLog, seq: u64) -> u64 {
    let last = wall_now();
    while wall_now() == last {
        std::hint::spin_loop();
    }
    let appended = log.append(vec![rec(seq)]).await.unwrap();
    assert_eq!(appended.first_seq, seq);
    appended.published_at
}

/// The seqs read from `from` on, after checking each message is its record.
fn seqs(messages: &[Message]) -> Vec<u64> {
    for m in messages {
        let want = rec(m.seq);
        assert_eq!((&m.id, &m.key, &m.body), (&want.id, &want.key, &want.body));
    }
    messages.iter().map(|m| m.seq).collect()
}

fn read_all(log: &TopicLog, from: u64) -> Vec<u64> {
    seqs(&log.read(from, 10_000, usize::MAX).unwrap())
}

fn range(r: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    r.collect()
}

fn cat(parts: &[Vec<u64>]) -> Vec<u64> {
    parts.concat()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

fn base_of(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Start offsets of the frames of a segment file (a zero length marks the
/// free space of a pre-allocated segment), and where the last one ends.
fn frame_starts(path: &Path) -> (Vec<u64>, u64) {
    let bytes = std::fs::read(path).unwrap();
    let mut starts = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        starts.push(at as u64);
        at += 8 + len;
    }
    (starts, at as u64)
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Cut off (plain) or zeroed (pre-allocated), as a crash leaves it.
    Lost,
    /// A flipped payload byte: the checksum no longer matches.
    Corrupt,
}

/// Damages the last `n` records of the last segment of a closed log.
fn damage_tail(dir: &Path, n: usize, damage: Damage, layout: Layout) {
    let path = segments(dir).pop().unwrap();
    let (starts, end) = frame_starts(&path);
    assert!(starts.len() >= n, "{n} records in the last segment");
    let at = starts[starts.len() - n];
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    match damage {
        Damage::Lost if layout.preallocate > 0 => {
            file.write_all_at(&vec![0u8; (end - at) as usize], at)
                .unwrap();
        }
        Damage::Lost => file.set_len(at).unwrap(),
        Damage::Corrupt => {
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, at + 20).unwrap();
            file.write_all_at(&[b[0] ^ 0x40], at + 20).unwrap();
        }
    }
}

/// The case of the defect: 1..5 given out and closed, record 5 lost, and the
/// log must go on at 6, not give 5 again.
#[tokio::test]
async fn lost_tail_after_close_leaves_a_hole() {
    for layout in LAYOUTS {
        for damage in [Damage::Lost, Damage::Corrupt] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let log = layout.open(d);
            append_n(&log, 1, 5).await;
            log.close().await.unwrap();
            drop(log);
            damage_tail(d, 1, damage, layout);

            let log = layout.open(d);
            assert_eq!(log.next_seq(), 6, "{layout:?} {damage:?}");
            assert_eq!(log.first_seq(), 1);
            assert_eq!(read_all(&log, 1), range(1..=4));
            assert!(log.read_one(5).unwrap().is_none());
            assert_eq!(log.append(vec![rec(6)]).await.unwrap().first_seq, 6);
            assert_eq!(read_all(&log, 1), vec![1, 2, 3, 4, 6]);
            assert_eq!(read_all(&log, 5), vec![6]);
            assert!(log.read_one(5).unwrap().is_none());
            assert_eq!(seqs(&[log.read_one(6).unwrap().unwrap()]), vec![6]);
            assert_eq!(log.usage().0, 5);
            log.close().await.unwrap();
            drop(log);

            // The hole survives a restart, and seqs keep going.
            let log = layout.open(d);
            assert_eq!(log.next_seq(), 7);
            assert_eq!(read_all(&log, 1), vec![1, 2, 3, 4, 6]);
            append_n(&log, 7, 2).await;
            assert_eq!(read_all(&log, 3), vec![3, 4, 6, 7, 8]);
            log.close().await.unwrap();
        }
    }
}

/// Without a close (a crash), the floor is the one `persist_next_seq` wrote
/// last.
#[tokio::test]
async fn persisted_floor_without_close() {
    for layout in LAYOUTS {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = layout.open(d);
        append_n(&log, 1, 5).await;
        log.persist_next_seq().unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("next_seq")).unwrap().trim(),
            "6"
        );
        // Unchanged: nothing to write.
        log.persist_next_seq().unwrap();
        append_n(&log, 6, 3).await;
        drop(log);
        // Records 6..8 were given out after the last checkpoint; 7 and 8 are
        // lost: only the seqs below the floor are sure not to come back.
        damage_tail(d, 2, Damage::Lost, layout);
        let log = layout.open(d);
        assert_eq!(log.next_seq(), 7, "{layout:?}");
        assert_eq!(read_all(&log, 1), range(1..=6));

        // Losing more than the floor covers: 4..6 gone, the floor is 6.
        log.close().await.unwrap();
        drop(log);
        std::fs::write(d.join("next_seq"), "6\n").unwrap();
        let last = segments(d).pop().unwrap();
        let in_last = frame_starts(&last).0.len();
        damage_tail(d, in_last.min(3), Damage::Lost, layout);
        let log = layout.open(d);
        let kept = 6 - in_last.min(3) as u64;
        assert_eq!(log.next_seq(), 6, "{layout:?}");
        assert_eq!(read_all(&log, 1), range(1..=kept));
        append_n(&log, 6, 1).await;
        assert_eq!(read_all(&log, 1), cat(&[range(1..=kept), vec![6]]));
        log.close().await.unwrap();
    }
}

/// Reads of every kind across the hole of `1..=10, 100..=104`.
fn check_hole_reads(log: &TopicLog) {
    let after = range(100..=104);
    assert_eq!(log.next_seq(), 105);
    assert_eq!(read_all(log, 0), cat(&[range(1..=10), after.clone()]));
    assert_eq!(read_all(log, 1), cat(&[range(1..=10), after.clone()]));
    assert_eq!(read_all(log, 5), cat(&[range(5..=10), after.clone()]));
    assert_eq!(read_all(log, 10), cat(&[vec![10], after.clone()]));
    assert_eq!(read_all(log, 11), after);
    assert_eq!(read_all(log, 50), after);
    assert_eq!(read_all(log, 99), after);
    assert_eq!(read_all(log, 100), after);
    assert_eq!(read_all(log, 103), vec![103, 104]);
    assert_eq!(read_all(log, 105), Vec::<u64>::new());
    // Counted limits and byte limits across the hole.
    assert_eq!(seqs(&log.read(8, 3, usize::MAX).unwrap()), vec![8, 9, 10]);
    assert_eq!(seqs(&log.read(9, 3, usize::MAX).unwrap()), vec![9, 10, 100]);
    assert_eq!(seqs(&log.read(11, 2, usize::MAX).unwrap()), vec![100, 101]);
    assert_eq!(seqs(&log.read(10, 100, 0).unwrap()), vec![10]);
    assert_eq!(seqs(&log.read(11, 100, 0).unwrap()), vec![100]);
    let mut from = 1;
    let mut paged = Vec::new();
    while let Some(last) = log.read(from, 100, 150).unwrap().last() {
        let page = log.read(from, 100, 150).unwrap();
        assert!(page.len() <= 3, "about 150 bytes");
        paged.extend(seqs(&page));
        from = last.seq + 1;
    }
    assert_eq!(paged, cat(&[range(1..=10), range(100..=104)]));
    for seq in [11, 50, 99] {
        assert!(log.read_one(seq).unwrap().is_none(), "{seq} in the hole");
    }
    for seq in [1, 10, 100, 104] {
        assert_eq!(log.read_one(seq).unwrap().unwrap().seq, seq);
    }
    assert!(log.read_one(105).unwrap().is_none());
    assert_eq!(log.usage().0, 15);
}

#[tokio::test]
async fn raised_floor_leaves_a_hole_that_reads_skip() {
    for layout in LAYOUTS {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = layout.open(d);
        let mut times = vec![0];
        for seq in 1..=10 {
            times.push(append_at_new_ms(&log, seq).await);
        }
        // Below or at next_seq: nothing changes.
        log.ensure_next_seq_at_least(5).unwrap();
        log.ensure_next_seq_at_least(11).unwrap();
        assert_eq!(log.next_seq(), 11);
        let files_before = segments(d).len();
        log.ensure_next_seq_at_least(100).unwrap();
        assert_eq!(log.next_seq(), 100, "{layout:?}");
        assert_eq!(*log.watch().borrow(), 100);
        assert_eq!(log.first_seq(), 1);
        assert_eq!(segments(d).len(), files_before + 1);
        assert_eq!(base_of(&segments(d).pop().unwrap()), 100);
        assert_eq!(read_all(&log, 1), range(1..=10));
        assert_eq!(read_all(&log, 11), Vec::<u64>::new());
        assert_eq!(log.usage().0, 10);
        // The time lookup with nothing after the hole.
        assert_eq!(log.seq_for_time(times[10]).unwrap(), 10);
        assert_eq!(log.seq_for_time(times[10] + 1).unwrap(), 100);

        let mut later = Vec::new();
        for seq in 100..=102 {
            later.push(append_at_new_ms(&log, seq).await);
        }
        let batch = log.append(vec![rec(103), rec(104)]).await.unwrap();
        assert_eq!(batch.first_seq, 103);
        later.push(batch.published_at);
        check_hole_reads(&log);

        // Time lookups on both sides of the hole.
        assert_eq!(log.seq_for_time(0).unwrap(), 1);
        for seq in 1..=10 {
            assert_eq!(log.seq_for_time(times[seq as usize]).unwrap(), seq);
        }
        assert_eq!(log.seq_for_time(times[10] + 1).unwrap(), 100);
        assert_eq!(log.seq_for_time(later[0]).unwrap(), 100);
        assert_eq!(log.seq_for_time(later[1]).unwrap(), 101);
        assert_eq!(log.seq_for_time(u64::MAX).unwrap(), 105);
        log.close().await.unwrap();
        drop(log);

        // The hole survives a restart.
        let log = layout.open(d);
        check_hole_reads(&log);
        assert_eq!(log.seq_for_time(times[10] + 1).unwrap(), 100);
        assert_eq!(log.seq_for_time(times[3]).unwrap(), 3);

        // Retention counts records, not the seqs of the hole.
        let keep = |n| Retention {
            max_messages: Some(n),
            ..Retention::default()
        };
        assert_eq!(log.enforce_retention(&keep(7), wall_now()).unwrap(), 9);
        assert_eq!(read_all(&log, 1), cat(&[vec![9, 10], range(100..=104)]));
        assert_eq!(log.usage().0, 7);
        assert_eq!(log.enforce_retention(&keep(5), wall_now()).unwrap(), 100);
        assert_eq!(read_all(&log, 1), range(100..=104));
        assert_eq!(log.usage().0, 5);
        // Every segment before the hole is gone.
        assert!(segments(d).iter().all(|p| base_of(p) >= 100), "{layout:?}");
        assert!(log.read_one(10).unwrap().is_none());
        assert_eq!(log.seq_for_time(0).unwrap(), 100);
        append_n(&log, 105, 2).await;
        log.close().await.unwrap();
        drop(log);
        let log = layout.open(d);
        assert_eq!((log.first_seq(), log.next_seq()), (100, 107));
        assert_eq!(read_all(&log, 1), range(100..=106));
        log.close().await.unwrap();
    }
}

/// Retention by age and by bytes with a cut in the hole: the segments before
/// it go, the ones after it stay.
#[tokio::test]
async fn retention_by_age_and_bytes_across_the_hole() {
    for layout in LAYOUTS {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = layout.open(d);
        append_n(&log, 1, 10).await;
        log.ensure_next_seq_at_least(100).unwrap();
        let t100 = append_at_new_ms(&log, 100).await;
        append_n(&log, 101, 4).await;
        let by_age = Retention {
            max_age: Some(Duration::ZERO),
            ..Retention::default()
        };
        assert_eq!(log.enforce_retention(&by_age, t100).unwrap(), 100);
        assert_eq!(read_all(&log, 1), range(100..=104));
        assert!(segments(d).iter().all(|p| base_of(p) >= 100), "{layout:?}");

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = layout.open(d);
        append_n(&log, 1, 10).await;
        log.ensure_next_seq_at_least(100).unwrap();
        append_n(&log, 100, 5).await;
        let after: u64 = segments(d)
            .iter()
            .filter(|p| base_of(p) >= 100)
            .map(|p| frame_starts(p).1)
            .sum();
        let by_bytes = Retention {
            max_bytes: Some(after),
            ..Retention::default()
        };
        assert_eq!(log.enforce_retention(&by_bytes, wall_now()).unwrap(), 100);
        assert_eq!(read_all(&log, 1), range(100..=104));
        assert!(segments(d).iter().all(|p| base_of(p) >= 100), "{layout:?}");
        log.close().await.unwrap();
    }
}

/// Raising when the active segment holds no record replaces it by an empty
/// segment at the floor.
#[tokio::test]
async fn raised_floor_with_an_empty_active_segment() {
    for layout in LAYOUTS {
        // A new log: nothing is retained before the hole, so first_seq moves.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = layout.open(d);
        log.ensure_next_seq_at_least(100).unwrap();
        assert_eq!((log.first_seq(), log.next_seq()), (100, 100));
        assert_eq!(
            segments(d).iter().map(|p| base_of(p)).collect::<Vec<_>>(),
            vec![100]
        );
        assert_eq!(read_all(&log, 1), Vec::<u64>::new());
        assert_eq!(log.seq_for_time(0).unwrap(), 100);
        append_n(&log, 100, 3).await;
        assert_eq!(read_all(&log, 1), range(100..=102));
        log.close().await.unwrap();
        drop(log);
        let log = layout.open(d);
        assert_eq!((log.first_seq(), log.next_seq()), (100, 103));
        assert_eq!(read_all(&log, 0), range(100..=102));
        log.close().await.unwrap();

        // Raised twice: the second replaces the empty segment of the first.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = layout.open(d);
        let mut times = vec![0];
        for seq in 1..=10 {
            times.push(append_at_new_ms(&log, seq).await);
        }
        log.ensure_next_seq_at_least(50).unwrap();
        let files = segments(d).len();
        log.ensure_next_seq_at_least(100).unwrap();
        assert_eq!(segments(d).len(), files, "{layout:?}");
        assert!(!segments(d).iter().any(|p| base_of(p) == 50));
        assert_eq!(log.first_seq(), 1);
        let t100 = append_at_new_ms(&log, 100).await;
        append_n(&log, 101, 4).await;
        check_hole_reads(&log);
        assert_eq!(log.seq_for_time(times[10] + 1).unwrap(), 100);
        assert_eq!(log.seq_for_time(t100).unwrap(), 100);
        log.close().await.unwrap();
        drop(log);
        let log = layout.open(d);
        check_hole_reads(&log);
        log.close().await.unwrap();
    }
}

/// On open, a last segment whose records were all lost is empty: the log
/// continues at the floor by replacing it.
#[tokio::test]
async fn whole_last_segment_lost() {
    for layout in LAYOUTS {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = layout.open(d);
        append_n(&log, 1, 10).await;
        log.close().await.unwrap();
        drop(log);
        let last = segments(d).pop().unwrap();
        let lost = frame_starts(&last).0.len();
        damage_tail(d, lost, Damage::Lost, layout);
        let kept = 10 - lost as u64;

        let log = layout.open(d);
        assert_eq!(log.next_seq(), 11, "{layout:?}");
        assert!(!last.exists(), "the emptied segment is replaced");
        assert_eq!(base_of(&segments(d).pop().unwrap()), 11);
        assert_eq!(read_all(&log, 1), range(1..=kept));
        assert_eq!(log.usage().0, kept);
        assert_eq!(log.first_seq(), if kept == 0 { 11 } else { 1 });
        append_n(&log, 11, 3).await;
        assert_eq!(read_all(&log, 1), cat(&[range(1..=kept), range(11..=13)]));
        assert!(log.read_one(kept + 1).unwrap().is_none());
        log.close().await.unwrap();
        drop(log);
        let log = layout.open(d);
        assert_eq!(read_all(&log, 1), cat(&[range(1..=kept), range(11..=13)]));
        log.close().await.unwrap();
    }
}

/// A raise takes its place among concurrent appends: those before it keep
/// their seqs, those after it get seqs from the floor on, none is given twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raise_among_concurrent_appends() {
    let layout = LAYOUTS[3];
    let dir = tempfile::tempdir().unwrap();
    let log = layout.open(dir.path());
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..50 {
                let r = AppendRecord {
                    id: format!("t{t}-{i}"),
                    ..AppendRecord::default()
                };
                got.push(log.append(vec![r]).await.unwrap().first_seq);
            }
            got
        }));
    }
    let raiser = log.clone();
    tokio::task::spawn_blocking(move || raiser.ensure_next_seq_at_least(1_000))
        .await
        .unwrap()
        .unwrap();
    let mut all = Vec::new();
    for task in tasks {
        let got = task.await.unwrap();
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        all.extend(got);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 200, "no seq given twice");
    let read: Vec<u64> = log
        .read(0, 1000, usize::MAX)
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(read, all);
    let below = all.iter().filter(|&&s| s < 1_000).count() as u64;
    assert_eq!(all[..below as usize], range(1..=below)[..]);
    assert_eq!(
        all[below as usize..],
        range(1_000..=1_000 + 199 - below)[..]
    );
    log.close().await.unwrap();
    assert!(matches!(
        log.ensure_next_seq_at_least(5_000),
        Err(Error::ShuttingDown)
    ));
}

/// A sealed segment's count comes from its index: an index cut short (or
/// stale) must be rebuilt, not read as a smaller segment followed by a hole.
#[tokio::test]
async fn truncated_index_is_not_a_hole() {
    for layout in [LAYOUTS[2], LAYOUTS[3]] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let log = layout.open(d);
        append_n(&log, 1, 20).await;
        log.close().await.unwrap();
        drop(log);
        let first = segments(d)[0].with_extension("idx");
        let len = std::fs::metadata(&first).unwrap().len();
        assert!(len >= 8, "a few records in the first segment");
        OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(len - 4)
            .unwrap();
        let log = layout.open(d);
        assert_eq!(read_all(&log, 1), range(1..=20), "{layout:?}");
        assert_eq!(log.usage().0, 20);
        assert_eq!(std::fs::metadata(&first).unwrap().len(), len, "rebuilt");
        log.close().await.unwrap();
    }
}
