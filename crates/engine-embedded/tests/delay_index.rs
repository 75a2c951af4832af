use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use courier_core::Error;
use courier_embedded::delays::{DelayIndex, DelayOptions, Entry};
use proptest::prelude::*;

fn opts(memory_entries: usize, max_runs: usize) -> DelayOptions {
    DelayOptions {
        memory_entries,
        max_runs,
    }
}

/// Everything visible, read page by page through the cursor API.
fn scan(index: &DelayIndex, page: usize) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut after = (0, 0);
    loop {
        let got = index.range(after, u64::MAX, page).unwrap();
        assert!(got.len() <= page);
        let Some(&last) = got.last() else {
            return out;
        };
        after = last;
        out.extend(got);
    }
}

fn expected(set: &BTreeSet<Entry>, floor: u64, after: Entry, until: u64, max: usize) -> Vec<Entry> {
    set.iter()
        .copied()
        .filter(|&e| e > after && e.0 <= until && e.1 >= floor)
        .take(max)
        .collect()
}

fn files(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn run_files(dir: &Path) -> usize {
    files(dir).iter().filter(|n| n.ends_with(".run")).count()
}

#[test]
fn new_index_is_empty() {
    fn shared<T: Send + Sync>() {}
    shared::<DelayIndex>();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/delays");
    let index = DelayIndex::open(&dir, true).unwrap();
    assert!(dir.is_dir());
    assert_eq!(index.covered(), 0);
    assert_eq!(index.len(), 0);
    assert!(index.is_empty());
    assert!(!index.wants_flush());
    assert_eq!(index.range((0, 0), u64::MAX, 10).unwrap(), vec![]);
    assert_eq!(index.first_after((0, 0)).unwrap(), None);
}

#[test]
fn range_merges_memory_and_runs_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    // No merges: three runs and the buffer all answer the queries.
    let index = DelayIndex::open_with(tmp.path(), true, opts(1000, 100)).unwrap();
    let mut model = BTreeSet::new();
    let batches: [&[Entry]; 4] = [
        &[(100, 5), (100, 1), (300, 2), (200, 9)],
        &[(100, 3), (100, 5), (200, 9), (50, 7)], // duplicates of run 1
        &[(100, 2), (100, 4), (400, 8), (300, 2)],
        &[(100, 6), (100, 1), (50, 7), (500, 10)], // stays in memory
    ];
    for (i, batch) in batches.iter().enumerate() {
        index.insert(batch);
        model.extend(batch.iter().copied());
        if i < 3 {
            index.flush(10 * (i as u64 + 1)).unwrap();
        }
    }
    assert_eq!(index.runs(), 3);
    assert_eq!(index.covered(), 30);
    assert_eq!(index.memory_entries(), 4);
    let all: Vec<Entry> = model.iter().copied().collect();
    assert_eq!(index.range((0, 0), u64::MAX, usize::MAX).unwrap(), all);
    for page in 1..6 {
        assert_eq!(scan(&index, page), all, "page {page}");
    }
    // Cursors inside a run of equal deliver_at values.
    for after in [
        (100, 0),
        (100, 1),
        (100, 3),
        (100, 4),
        (100, 6),
        (99, u64::MAX),
    ] {
        for max in [1, 2, 3, 100] {
            for until in [0, 50, 100, 299, 300, u64::MAX] {
                assert_eq!(
                    index.range(after, until, max).unwrap(),
                    expected(&model, 0, after, until, max),
                    "after {after:?} until {until} max {max}"
                );
            }
        }
    }
    assert_eq!(
        index.range((100, 3), 100, 2).unwrap(),
        vec![(100, 4), (100, 5)]
    );
    assert_eq!(index.range((100, 6), 100, 10).unwrap(), vec![]);
    assert_eq!(index.range((0, 0), 10, 10).unwrap(), vec![]);
    assert_eq!(index.range((0, 0), u64::MAX, 0).unwrap(), vec![]);
    assert_eq!(index.first_after((0, 0)).unwrap(), Some((50, 7)));
    assert_eq!(index.first_after((50, 7)).unwrap(), Some((100, 1)));
    assert_eq!(index.first_after((100, 6)).unwrap(), Some((200, 9)));
    assert_eq!(index.first_after((500, 10)).unwrap(), None);
    assert!(index.len() >= all.len() as u64);
}

#[test]
fn flushes_merge_runs_and_keep_every_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let index = DelayIndex::open_with(tmp.path(), false, opts(10, 3)).unwrap();
    let mut model = BTreeSet::new();
    // Delivery times start at 1: the cursor (0, 0) is before everything.
    let make = |round: u64| -> Vec<Entry> {
        (0..10)
            .map(|i| ((round * 7 + i * 13) % 50 + 1, round * 10 + i))
            .collect()
    };
    for round in 0..40u64 {
        let batch = make(round);
        index.insert(&batch);
        // Re-inserting an already flushed batch must change nothing.
        if let Some(previous) = round.checked_sub(1) {
            index.insert(&make(previous));
        }
        model.extend(batch);
        assert!(index.wants_flush());
        index.flush(round * 10 + 10).unwrap();
        assert!(index.runs() <= 3, "{} runs", index.runs());
        assert_eq!(run_files(tmp.path()), index.runs());
    }
    let all: Vec<Entry> = model.iter().copied().collect();
    assert_eq!(scan(&index, 7), all);
    drop(index);
    let index = DelayIndex::open_with(tmp.path(), false, opts(10, 3)).unwrap();
    assert_eq!(index.covered(), 400);
    assert_eq!(scan(&index, 1000), all);
}

#[test]
fn empty_flush_persists_covered() {
    let tmp = tempfile::tempdir().unwrap();
    let index = DelayIndex::open(tmp.path(), true).unwrap();
    index.flush(42).unwrap();
    assert_eq!(index.covered(), 42);
    assert_eq!(index.runs(), 0);
    // Lower values never move it back.
    index.flush(7).unwrap();
    assert_eq!(index.covered(), 42);
    drop(index);
    let index = DelayIndex::open(tmp.path(), true).unwrap();
    assert_eq!(index.covered(), 42);
    assert_eq!(run_files(tmp.path()), 0);
}

#[test]
fn only_flushed_entries_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let index = DelayIndex::open(tmp.path(), true).unwrap();
    index.insert(&[(10, 1), (20, 2)]);
    index.flush(3).unwrap();
    index.insert(&[(5, 3), (30, 4)]);
    assert_eq!(scan(&index, 10).len(), 4);
    drop(index);
    let index = DelayIndex::open(tmp.path(), true).unwrap();
    assert_eq!(index.covered(), 3);
    assert_eq!(scan(&index, 10), vec![(10, 1), (20, 2)]);
}

#[test]
fn trim_hides_entries_drops_runs_and_persists() {
    let tmp = tempfile::tempdir().unwrap();
    let index = DelayIndex::open_with(tmp.path(), true, opts(100, 3)).unwrap();
    index.insert(&[(50, 1), (10, 2), (30, 3)]);
    index.flush(4).unwrap();
    index.insert(&[(20, 4), (60, 5), (40, 6)]);
    index.flush(7).unwrap();
    index.insert(&[(15, 7), (5, 8)]);
    assert_eq!(run_files(tmp.path()), 2);

    index.trim(4).unwrap();
    assert_eq!(index.floor(), 4);
    // The first run lay wholly below the floor.
    assert_eq!(run_files(tmp.path()), 1);
    assert_eq!(
        scan(&index, 2),
        vec![(5, 8), (15, 7), (20, 4), (40, 6), (60, 5)]
    );
    index.trim(6).unwrap();
    assert_eq!(scan(&index, 2), vec![(5, 8), (15, 7), (40, 6)]);
    assert_eq!(index.first_after((0, 0)).unwrap(), Some((5, 8)));
    assert_eq!(index.range((5, 8), 30, 10).unwrap(), vec![(15, 7)]);
    // A lower trim is a no-op; inserts below the floor are ignored.
    index.trim(2).unwrap();
    assert_eq!(index.floor(), 6);
    index.insert(&[(1, 5), (2, 9)]);
    assert_eq!(index.first_after((0, 0)).unwrap(), Some((2, 9)));

    // The floor survives a restart without a flush.
    drop(index);
    let index = DelayIndex::open_with(tmp.path(), true, opts(100, 3)).unwrap();
    assert_eq!(index.floor(), 6);
    assert_eq!(index.covered(), 7);
    assert_eq!(scan(&index, 10), vec![(40, 6)]);

    // Merging drops what is below the floor from disk.
    for i in 0..4u64 {
        index.insert(&[(100 + i, 10 + i)]);
        index.flush(20 + i).unwrap();
    }
    assert!(index.runs() <= 3);
    index.trim(12).unwrap();
    for i in 4..8u64 {
        index.insert(&[(100 + i, 10 + i)]);
        index.flush(20 + i).unwrap();
    }
    let all = scan(&index, 3);
    assert_eq!(
        all,
        (12..18u64).map(|s| (100 + s - 10, s)).collect::<Vec<_>>()
    );
    assert!(index.len() < 10, "len {}", index.len());
}

#[test]
fn unreferenced_files_are_deleted_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let index = DelayIndex::open(dir, true).unwrap();
    index.insert(&[(10, 1), (20, 2)]);
    index.flush(3).unwrap();
    drop(index);
    let before = files(dir);

    // What crashes leave: a half-written manifest, and runs the manifest never
    // named (a flush or merge that did not commit) or no longer names.
    fs::write(dir.join("MANIFEST.tmp"), b"garbage").unwrap();
    let mut stray = Vec::new();
    for (at, seq) in [(1u64, 100u64), (2, 101)] {
        stray.extend_from_slice(&at.to_be_bytes());
        stray.extend_from_slice(&seq.to_be_bytes());
    }
    fs::write(dir.join("00000000000000ff.run"), &stray).unwrap();
    fs::write(dir.join("0000000000000001.run"), &stray[..7]).unwrap();
    fs::write(dir.join("notes.txt"), b"not ours").unwrap();

    let index = DelayIndex::open(dir, true).unwrap();
    assert_eq!(scan(&index, 10), vec![(10, 1), (20, 2)]);
    let mut after = before.clone();
    after.insert("notes.txt".into());
    assert_eq!(files(dir), after);
    // New runs may reuse nothing that could collide with a live one.
    index.insert(&[(5, 4)]);
    index.flush(5).unwrap();
    drop(index);
    let index = DelayIndex::open(dir, true).unwrap();
    assert_eq!(scan(&index, 10), vec![(5, 4), (10, 1), (20, 2)]);
}

/// A flush that cannot commit keeps every entry in memory, visible, and
/// leaves the durable state as it was; the next flush commits them.
#[test]
fn failed_flush_and_trim_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let index = DelayIndex::open_with(dir, true, opts(100, 1)).unwrap();
    index.insert(&[(10, 1), (20, 2)]);
    index.flush(3).unwrap();
    index.insert(&[(5, 3), (30, 4)]);
    let all = vec![(5, 3), (10, 1), (20, 2), (30, 4)];
    let durable = files(dir);
    // The manifest cannot be written while a directory holds its tmp name.
    fs::create_dir(dir.join("MANIFEST.tmp")).unwrap();
    assert!(index.flush(5).is_err());
    assert_eq!(index.memory_entries(), 2);
    assert_eq!(index.covered(), 3);
    assert_eq!(scan(&index, 3), all);
    let mut with_blocker = durable.clone();
    with_blocker.insert("MANIFEST.tmp".into());
    assert_eq!(files(dir), with_blocker, "the abandoned runs are gone");
    // The floor applies at once even when it cannot be persisted yet.
    assert!(index.trim(2).is_err());
    assert_eq!(scan(&index, 3), vec![(5, 3), (20, 2), (30, 4)]);
    fs::remove_dir(dir.join("MANIFEST.tmp")).unwrap();
    index.flush(5).unwrap();
    assert_eq!(index.memory_entries(), 0);
    drop(index);
    let index = DelayIndex::open_with(dir, true, opts(100, 1)).unwrap();
    assert_eq!(index.covered(), 5);
    assert_eq!(index.floor(), 2);
    assert_eq!(scan(&index, 3), vec![(5, 3), (20, 2), (30, 4)]);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Replays the two crash points of a flush that merges, from the files both
/// sides of it leave: before the manifest rename the old state must come back,
/// after it (retired runs not yet deleted) the new one.
#[test]
fn crash_during_a_merging_flush_leaves_old_or_new_state() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let options = opts(100, 2);
    let index = DelayIndex::open_with(&live, true, options).unwrap();
    for i in 0..2u64 {
        index.insert(&[(i * 10, i), (i * 10 + 5, i + 100)]);
        index.flush(i + 1).unwrap();
    }
    let old = scan(&index, 100);
    let old_dir = tmp.path().join("old");
    copy_dir(&live, &old_dir);
    index.insert(&[(7, 50)]);
    index.flush(60).unwrap(); // third run: merges
    let new = scan(&index, 100);
    drop(index);
    let new_dir = tmp.path().join("new");
    copy_dir(&live, &new_dir);
    assert_ne!(files(&old_dir), files(&new_dir));

    // Crash before the rename: every new run written, new manifest in the tmp file.
    let before = tmp.path().join("before");
    copy_dir(&old_dir, &before);
    for name in files(&new_dir) {
        if name.ends_with(".run") {
            fs::copy(new_dir.join(&name), before.join(&name)).unwrap();
        }
    }
    fs::copy(new_dir.join("MANIFEST"), before.join("MANIFEST.tmp")).unwrap();
    let index = DelayIndex::open_with(&before, true, options).unwrap();
    assert_eq!(scan(&index, 3), old);
    assert_eq!(index.covered(), 2);
    assert_eq!(files(&before), files(&old_dir));
    drop(index);

    // Crash after the rename, before the retired runs were deleted.
    let after = tmp.path().join("after");
    copy_dir(&old_dir, &after);
    copy_dir(&new_dir, &after);
    let index = DelayIndex::open_with(&after, true, options).unwrap();
    assert_eq!(scan(&index, 3), new);
    assert_eq!(index.covered(), 60);
    assert_eq!(files(&after), files(&new_dir));
}

#[test]
fn damage_is_reported_not_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let index = DelayIndex::open(dir, true).unwrap();
    index.insert(&[(10, 1), (20, 2)]);
    index.flush(3).unwrap();
    drop(index);
    let run = files(dir)
        .into_iter()
        .find(|n| n.ends_with(".run"))
        .unwrap();

    let manifest = fs::read(dir.join("MANIFEST")).unwrap();
    let mut bad = manifest.clone();
    bad[10] ^= 1;
    fs::write(dir.join("MANIFEST"), &bad).unwrap();
    assert!(matches!(
        DelayIndex::open(dir, true),
        Err(Error::Corrupt(_))
    ));
    fs::write(dir.join("MANIFEST"), &manifest).unwrap();

    let data = fs::read(dir.join(&run)).unwrap();
    fs::write(dir.join(&run), &data[..20]).unwrap();
    assert!(matches!(
        DelayIndex::open(dir, true),
        Err(Error::Corrupt(_))
    ));
    fs::remove_file(dir.join(&run)).unwrap();
    assert!(matches!(
        DelayIndex::open(dir, true),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn a_million_entries_in_bounded_memory() {
    const N: u64 = 1_000_000;
    const BATCH: u64 = 1000;
    let bound = DelayOptions::default().memory_entries;
    let tmp = tempfile::tempdir().unwrap();
    let index = DelayIndex::open(tmp.path(), false).unwrap();
    let entry = |seq: u64| (1_000_000 + (seq * 7919) % 250_000, seq);
    let mut peak = 0;
    for start in (0..N).step_by(BATCH as usize) {
        let batch: Vec<Entry> = (start..start + BATCH).map(entry).collect();
        index.insert(&batch);
        peak = peak.max(index.memory_entries());
        if index.wants_flush() {
            index.flush(start + BATCH).unwrap();
            assert_eq!(index.memory_entries(), 0);
        }
        assert!(index.runs() <= DelayOptions::default().max_runs);
    }
    assert!(peak < bound + BATCH as usize, "peak {peak}");
    index.flush(N).unwrap();
    assert_eq!(index.len(), N);

    let mut all: Vec<Entry> = (0..N).map(entry).collect();
    all.sort_unstable();
    assert_eq!(scan(&index, 100_000), all);
    // Cursors in the middle of equal deliver_at values, up to a deadline.
    for &i in &[0usize, 1, 2, 3, 4, 1234, 500_001, 999_998] {
        let after = all[i];
        let until = after.0 + 3;
        let want: Vec<Entry> = all[i + 1..]
            .iter()
            .copied()
            .take_while(|e| e.0 <= until)
            .take(10)
            .collect();
        assert_eq!(
            index.range(after, until, 10).unwrap(),
            want,
            "after {after:?}"
        );
        assert_eq!(index.first_after(after).unwrap(), all.get(i + 1).copied());
    }
    index.trim(N / 2).unwrap();
    let first = index.first_after((0, 0)).unwrap().unwrap();
    assert_eq!(first, *all.iter().find(|e| e.1 >= N / 2).unwrap());
    assert_eq!(index.first_after(*all.last().unwrap()).unwrap(), None);
}

/// Entries never vanish from queries while they move from memory to runs and
/// runs merge underneath readers.
#[test]
fn readers_see_every_inserted_entry_during_flushes() {
    let tmp = tempfile::tempdir().unwrap();
    let index = Arc::new(DelayIndex::open_with(tmp.path(), false, opts(50, 2)).unwrap());
    let published = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (index, published, done) = (index.clone(), published.clone(), done.clone());
            std::thread::spawn(move || {
                let mut checks = 0;
                while !done.load(Ordering::Acquire) {
                    let n = published.load(Ordering::Acquire);
                    let got = index.range((0, 0), u64::MAX, usize::MAX).unwrap();
                    assert!(got.windows(2).all(|w| w[0] < w[1]));
                    let seqs: BTreeSet<u64> = got.iter().map(|e| e.1).collect();
                    assert!((0..n).all(|s| seqs.contains(&s)), "lost an entry below {n}");
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    // Delivery times start at 1: the cursor (0, 0) is before everything.
    for seq in 0..3000u64 {
        index.insert(&[((seq * 31) % 97 + 1, seq)]);
        published.store(seq + 1, Ordering::Release);
        if index.wants_flush() {
            index.flush(seq + 1).unwrap();
        }
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(scan(&index, 100).len(), 3000);
}

#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<Entry>),
    Flush,
    Trim(u64),
    Reopen,
    Range(Entry, u64, usize),
    FirstAfter(Entry),
}

fn op() -> impl Strategy<Value = Op> {
    let entry = || (0u64..20, 0u64..60);
    prop_oneof![
        4 => prop::collection::vec(entry(), 1..8).prop_map(Op::Insert),
        2 => Just(Op::Flush),
        1 => (0u64..60).prop_map(Op::Trim),
        1 => Just(Op::Reopen),
        3 => ((0u64..22, 0u64..62), 0u64..24, 1usize..12).prop_map(|(a, u, m)| Op::Range(a, u, m)),
        1 => (0u64..22, 0u64..62).prop_map(Op::FirstAfter),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn behaves_like_a_sorted_set(
        ops in prop::collection::vec(op(), 1..60),
        memory_entries in 1usize..8,
        max_runs in 1usize..4,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let options = opts(memory_entries, max_runs);
        let mut index = DelayIndex::open_with(tmp.path(), false, options).unwrap();
        let mut durable = BTreeSet::new();
        let mut pending = BTreeSet::new();
        let (mut floor, mut covered, mut flushes) = (0u64, 0u64, 0u64);
        for op in ops {
            match op {
                Op::Insert(entries) => {
                    index.insert(&entries);
                    pending.extend(entries);
                    prop_assert_eq!(index.wants_flush(), index.memory_entries() >= memory_entries);
                }
                Op::Flush => {
                    flushes += 1;
                    covered = flushes * 3;
                    index.flush(covered).unwrap();
                    durable.append(&mut pending);
                    prop_assert_eq!(index.memory_entries(), 0);
                    prop_assert!(index.runs() <= max_runs);
                }
                Op::Trim(first) => {
                    index.trim(first).unwrap();
                    floor = floor.max(first);
                }
                Op::Reopen => {
                    drop(index);
                    index = DelayIndex::open_with(tmp.path(), false, options).unwrap();
                    pending.clear();
                    prop_assert_eq!(index.covered(), covered);
                    prop_assert_eq!(index.floor(), floor);
                }
                Op::Range(after, until, max) => {
                    let all: BTreeSet<Entry> = durable.union(&pending).copied().collect();
                    prop_assert_eq!(
                        index.range(after, until, max).unwrap(),
                        expected(&all, floor, after, until, max)
                    );
                }
                Op::FirstAfter(after) => {
                    let all: BTreeSet<Entry> = durable.union(&pending).copied().collect();
                    prop_assert_eq!(
                        index.first_after(after).unwrap(),
                        expected(&all, floor, after, u64::MAX, 1).first().copied()
                    );
                }
            }
            prop_assert_eq!(index.covered(), covered);
            let all: BTreeSet<Entry> = durable.union(&pending).copied().collect();
            let visible = expected(&all, floor, (0, 0), u64::MAX, usize::MAX);
            prop_assert_eq!(&scan(&index, 3), &visible);
            prop_assert!(index.len() >= visible.len() as u64);
            prop_assert_eq!(run_files(tmp.path()), index.runs());
        }
    }
}
