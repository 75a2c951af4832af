//! Crash recovery of the topic log: the tail of the last segment is torn or
//! garbled in several ways; reopening must serve every intact record before
//! the damage, nothing after it, and continue with the right seqs.
//!
//! Every case runs on plain segments and on pre-allocated ones (a last segment
//! with a zero tail, where damage is written into the tail and must be zeroed
//! rather than cut off).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use courier_embedded::log::{AppendRecord, LogOptions, TopicLog};

fn opts(segment_bytes: u64, preallocate: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        fsync: true,
        preallocate,
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

#[derive(Clone, Copy, Debug)]
struct Layout {
    segment_bytes: u64,
    /// Zero-filled space ahead of the writer; 0 for plain segments.
    preallocate: u64,
}

impl Layout {
    fn open(&self, dir: &Path) -> TopicLog {
        TopicLog::open(dir, opts(self.segment_bytes, self.preallocate)).unwrap()
    }

    fn prealloc(&self) -> bool {
        self.preallocate > 0
    }
}

/// The last segment of a closed log, as the damage functions see it.
struct Seg {
    path: PathBuf,
    /// Start offsets of its frames.
    starts: Vec<u64>,
    /// End of its last frame.
    end: u64,
    prealloc: bool,
}

impl Seg {
    fn file(&self) -> std::fs::File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap()
    }

    /// Loses everything from `at` on: cut off a plain segment, zeroed in a
    /// pre-allocated one (the file keeps its size).
    fn lose_from(&self, at: u64) {
        if self.prealloc {
            let zeros = vec![0u8; (self.end - at) as usize];
            self.file().write_all_at(&zeros, at).unwrap();
        } else {
            self.file().set_len(at).unwrap();
        }
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

/// Start offsets of the frames in a segment file, by walking their lengths up
/// to the end of the file or a zero length (free space of a pre-allocated
/// segment: no record is empty), and where the last one ends.
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

/// Writes at least `n` records to a fresh log in `dir`, and more until its
/// last segment holds three, closes it, and returns the base seq of its last
/// segment and that segment. With pre-allocation, the last segment is made to
/// have a zero tail of at least 4 KiB (the zero-filling may not have run yet).
async fn build(dir: &Path, n: u64, layout: Layout) -> (u64, Seg) {
    let log = layout.open(dir);
    let mut i = 1;
    while i <= n || frame_starts(&last_segment(dir)).0.len() < 3 {
        log.append(vec![rec(i)]).await.unwrap();
        i += 1;
    }
    log.close().await.unwrap();
    // The damage stands for a crash, and a crash does not write the next_seq
    // floor that close does (which would keep the lost seqs out of use: see
    // tests/log_holes.rs).
    std::fs::remove_file(dir.join("next_seq")).unwrap();
    let path = last_segment(dir);
    let base = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let (starts, end) = frame_starts(&path);
    if layout.prealloc() {
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        if len < end + 4096 {
            let zeros = vec![0u8; (end + 4096 - len) as usize];
            file.write_all_at(&zeros, len).unwrap();
        }
    } else {
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
    }
    let seg = Seg {
        path,
        starts,
        end,
        prealloc: layout.prealloc(),
    };
    (base, seg)
}

/// Reopens and checks that exactly seqs 1..=`intact` are served, then that
/// appends continue at `intact + 1` and survive another reopen.
async fn check_recovered(dir: &Path, intact: u64, layout: Layout) {
    let seg_path = last_segment(dir);
    let len_before = std::fs::metadata(&seg_path).unwrap().len();
    let log = layout.open(dir);
    assert_eq!(log.next_seq(), intact + 1, "records kept");
    let (_, end) = frame_starts(&seg_path);
    let bytes = std::fs::read(&seg_path).unwrap();
    if layout.prealloc() {
        // Not cut: the tail is free space again, and only zeros.
        assert_eq!(
            bytes.len() as u64,
            len_before,
            "pre-allocated file keeps its size"
        );
        assert!(bytes[end as usize..].iter().all(|&b| b == 0), "tail zeroed");
    } else {
        assert_eq!(bytes.len() as u64, end, "damage cut off");
    }
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
    let log = layout.open(dir);
    assert_eq!(log.next_seq(), intact + 4);
    let got = log.read(1, 10_000, usize::MAX).unwrap();
    assert_eq!(got.len() as u64, intact + 3);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, m)| m.seq == i as u64 + 1 && m.id == rec(i as u64 + 1).id));
    log.close().await.unwrap();
}

/// Each damage case on a single-segment log and on a log whose last segment
/// follows several sealed ones, with plain and with pre-allocated segments.
async fn each_layout<F>(damage: F)
where
    F: Fn(&Seg) -> usize,
{
    for preallocate in [0, 1 << 20] {
        for segment_bytes in [1 << 20, 400] {
            let layout = Layout {
                segment_bytes,
                preallocate,
            };
            let dir = tempfile::tempdir().unwrap();
            let (base, seg) = build(dir.path(), 40, layout).await;
            assert!(seg.starts.len() >= 3, "last segment holds a few records");
            // `damage` returns how many records of the last segment stay intact.
            let kept = damage(&seg);
            check_recovered(dir.path(), base - 1 + kept as u64, layout).await;
        }
    }
}

#[tokio::test]
async fn half_a_header() {
    each_layout(|seg| {
        let last = *seg.starts.last().unwrap();
        seg.lose_from(last + 4);
        seg.starts.len() - 1
    })
    .await;
}

#[tokio::test]
async fn half_a_payload() {
    each_layout(|seg| {
        let last = *seg.starts.last().unwrap();
        seg.lose_from(last + (seg.end - last) / 2 + 4);
        seg.starts.len() - 1
    })
    .await;
}

#[tokio::test]
async fn flipped_crc_byte_in_the_middle() {
    each_layout(|seg| {
        let k = seg.starts.len() / 2;
        let file = seg.file();
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, seg.starts[k] + 5).unwrap();
        file.write_all_at(&[b[0] ^ 0x40], seg.starts[k] + 5)
            .unwrap();
        k
    })
    .await;
}

#[tokio::test]
async fn garbled_payload_byte_of_last_record() {
    each_layout(|seg| {
        let last = *seg.starts.last().unwrap();
        seg.file().write_all_at(b"\xde\xad", last + 20).unwrap();
        seg.starts.len() - 1
    })
    .await;
}

#[tokio::test]
async fn garbage_and_zeros_after_the_end() {
    each_layout(|seg| {
        seg.file().write_all_at(&[0u8; 4096], seg.end).unwrap();
        seg.starts.len()
    })
    .await;
    each_layout(|seg| {
        // A length that claims more than the file holds, then noise.
        seg.file()
            .write_all_at(&[0xff, 0xff, 0, 0, 1, 2, 3, 4, 5, 6, 7], seg.end)
            .unwrap();
        seg.starts.len()
    })
    .await;
    each_layout(|seg| {
        // A torn record: its first page lost (zeros), a later part written.
        seg.file()
            .write_all_at(&[0x5a; 100], seg.end + 150)
            .unwrap();
        seg.starts.len()
    })
    .await;
}

/// A plain last segment cut to nothing, or a pre-allocated one that holds
/// only zeros: what a crash right after a roll leaves (zeros filled ahead,
/// no record written yet).
#[tokio::test]
async fn empty_last_segment_file() {
    each_layout(|seg| {
        seg.lose_from(0);
        0
    })
    .await;
}

/// The payload of a record as the log encodes it (see `log::record`), framed.
fn frame(seq: u64, published_at: u64, r: &AppendRecord) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&published_at.to_le_bytes());
    p.extend_from_slice(&r.deliver_at.unwrap_or(0).to_le_bytes());
    p.extend_from_slice(&(r.id.len() as u32).to_le_bytes());
    let key = r.key.as_deref().unwrap_or("");
    p.extend_from_slice(&(key.len() as u32).to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(r.id.as_bytes());
    p.extend_from_slice(key.as_bytes());
    p.extend_from_slice(&r.body);
    let len = (p.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(&p);
    let mut f = len.to_vec();
    f.extend_from_slice(&h.finalize().to_le_bytes());
    f.extend_from_slice(&p);
    f
}

/// A torn group left a lost first page (zeros), some noise, and an intact
/// record further on. After recovery, the next append ends exactly where that
/// old record starts, and it has the seq that would follow: unless recovery
/// wiped the tail, the next reopen would take it for a record.
#[tokio::test]
async fn torn_write_cannot_resurface_after_later_appends() {
    let layout = Layout {
        segment_bytes: 1 << 20,
        preallocate: 1 << 20,
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, seg) = build(dir.path(), 10, layout).await;
    let next = frame(11, 0, &rec(11));
    let phantom = AppendRecord {
        id: "phantom".into(),
        ..rec(12)
    };
    let file = seg.file();
    file.write_all_at(&[0x33; 7], seg.end + 20).unwrap();
    file.write_all_at(&frame(12, 1, &phantom), seg.end + next.len() as u64)
        .unwrap();
    drop(file);

    let log = layout.open(dir.path());
    assert_eq!(log.next_seq(), 11);
    assert_eq!(log.append(vec![rec(11)]).await.unwrap().first_seq, 11);
    log.close().await.unwrap();
    drop(log);
    // The append wrote exactly the frame the test expected.
    let bytes = std::fs::read(&seg.path).unwrap();
    let at = seg.end as usize;
    assert_eq!(
        &bytes[at..at + 4],
        &next[..4],
        "a frame as long as expected"
    );
    assert_eq!(
        &bytes[at + 8..at + 16],
        &next[8..16],
        "seq 11 written at the old end"
    );

    let log = layout.open(dir.path());
    assert_eq!(log.next_seq(), 12, "the old record must not come back");
    assert!(log.read_one(12).unwrap().is_none());
    assert_eq!(log.read(1, 100, usize::MAX).unwrap().len(), 11);
    log.close().await.unwrap();
}
