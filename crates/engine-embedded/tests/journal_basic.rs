//! The state journal against real files: order, torn tails, rotation, reopen.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use courier_core::Error;
use courier_embedded::journal::Journal;

fn entry(i: u32) -> Vec<u8> {
    format!("entry {i}").into_bytes()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_call_order_across_append_and_nowait() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, entries) = Journal::open(dir.path(), true).unwrap();
    assert!(entries.is_empty());
    for i in 0..300u32 {
        if i % 3 == 0 {
            journal.append(entry(i)).await.unwrap();
        } else {
            journal.append_nowait(entry(i));
        }
    }
    // An empty entry is an entry too.
    journal.append(Vec::new()).await.unwrap();
    journal.close().await.unwrap();
    assert!(matches!(
        journal.append(entry(0)).await,
        Err(Error::ShuttingDown)
    ));
    drop(journal);

    let (journal, entries) = Journal::open(dir.path(), true).unwrap();
    let mut want: Vec<Vec<u8>> = (0..300).map(entry).collect();
    want.push(Vec::new());
    assert_eq!(entries, want);
    journal.append(entry(1000)).await.unwrap();
    drop(journal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_each_land_once() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), true).unwrap();
    let tasks: Vec<_> = (0..32u32)
        .map(|t| {
            let journal = journal.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    journal.append(entry(t * 1000 + i)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    journal.close().await.unwrap();
    let (_, entries) = Journal::open(dir.path(), true).unwrap();
    assert_eq!(entries.len(), 640);
    for t in 0..32u32 {
        // Each task's own entries keep their order.
        let mine: Vec<&Vec<u8>> = entries
            .iter()
            .filter(|e| {
                let n: u32 = std::str::from_utf8(&e[6..]).unwrap().parse().unwrap();
                n / 1000 == t
            })
            .collect();
        let want: Vec<Vec<u8>> = (0..20).map(|i| entry(t * 1000 + i)).collect();
        assert_eq!(mine.into_iter().cloned().collect::<Vec<_>>(), want);
    }
}

#[tokio::test]
async fn torn_tail_is_cut_and_appends_continue() {
    for cut in [1u64, 4, 9, 12] {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), false).unwrap();
        for i in 0..10 {
            journal.append(entry(i)).await.unwrap();
        }
        journal.close().await.unwrap();
        drop(journal);
        let path = files(dir.path()).pop().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        // The last entry is 8 bytes of header + 7 of payload.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - cut).unwrap();
        drop(file);

        let (journal, entries) = Journal::open(dir.path(), false).unwrap();
        assert_eq!(entries, (0..9).map(entry).collect::<Vec<_>>(), "cut {cut}");
        journal.append(entry(100)).await.unwrap();
        journal.close().await.unwrap();
        drop(journal);
        let (_, entries) = Journal::open(dir.path(), false).unwrap();
        let mut want: Vec<_> = (0..9).map(entry).collect();
        want.push(entry(100));
        assert_eq!(entries, want);
    }
}

#[tokio::test]
async fn garbage_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), false).unwrap();
    journal.append(entry(1)).await.unwrap();
    journal.close().await.unwrap();
    drop(journal);
    let path = files(dir.path()).pop().unwrap();
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&[0u8; 100]).unwrap();
    file.write_all(b"noise").unwrap();
    drop(file);
    let (journal, entries) = Journal::open(dir.path(), false).unwrap();
    assert_eq!(entries, vec![entry(1)]);
    journal.append(entry(2)).await.unwrap();
    journal.close().await.unwrap();
    let (_, entries) = Journal::open(dir.path(), false).unwrap();
    assert_eq!(entries, vec![entry(1), entry(2)]);
}

#[tokio::test]
async fn rotate_and_remove_before() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), true).unwrap();
    assert_eq!(journal.current_file(), 1);
    journal.append(entry(1)).await.unwrap();
    journal.append_nowait(entry(2));
    let second = journal.rotate().await.unwrap();
    assert_eq!(second, 2);
    assert_eq!(journal.current_file(), 2);
    journal.append_nowait(entry(3));
    let third = journal.rotate().await.unwrap();
    assert_eq!(third, 3);
    journal.append(entry(4)).await.unwrap();
    assert_eq!(files(dir.path()).len(), 3);
    journal.close().await.unwrap();
    drop(journal);

    let (journal, entries) = Journal::open(dir.path(), true).unwrap();
    assert_eq!(entries, (1..=4).map(entry).collect::<Vec<_>>());
    assert_eq!(journal.current_file(), 3);
    journal.remove_before(3).unwrap();
    assert_eq!(files(dir.path()).len(), 1);
    // The file being written is never removed.
    journal.remove_before(10).unwrap();
    assert_eq!(files(dir.path()).len(), 1);
    journal.append(entry(5)).await.unwrap();
    journal.close().await.unwrap();
    drop(journal);

    let (journal, entries) = Journal::open(dir.path(), true).unwrap();
    assert_eq!(entries, vec![entry(4), entry(5)]);
    assert_eq!(journal.rotate().await.unwrap(), 4);
}
