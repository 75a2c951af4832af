//! Throughput and latency of the topic log, durable (fsync on).
//!
//! `cargo run --release -p courier-embedded --example log_bench [seconds per case] [dir] [options]`
//!
//! For 256 B and 4 KiB bodies and 1, 16 and 256 concurrent publishers (each
//! appending one message at a time and waiting for it to be durable), prints
//! append latency percentiles and messages per second, each case with
//! pre-allocation (the default) and without, one after the other; then sequential
//! and random read rates, and the raw fdatasync latency of the disk for
//! reference, after appending and after overwriting pre-zeroed blocks.
//!
//! Options: `nofsync`: the log does not fsync, which measures the CPU cost of
//! the path (encoding, group commit, wakeups) apart from the disk;
//! `prealloc=on|off|both` (default both); `body=256` (one body size only).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_embedded::log::{AppendRecord, LogOptions, TopicLog};
use hdrhistogram::Histogram;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).map_or(2.0, |s| s.parse().expect("seconds"));
    let base = args.get(2).map_or_else(std::env::temp_dir, Into::into);
    let flags: Vec<&str> = args.iter().skip(3).map(String::as_str).collect();
    let fsync = !flags.contains(&"nofsync");
    let on = LogOptions::default().preallocate;
    let modes: &[u64] = if flags.contains(&"prealloc=on") {
        &[on]
    } else if flags.contains(&"prealloc=off") {
        &[0]
    } else {
        &[0, on]
    };
    let bodies: Vec<usize> = match flags.iter().find_map(|f| f.strip_prefix("body=")) {
        Some(b) => vec![b.parse().expect("body size")],
        None => vec![256, 4096],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("fdatasync: {}; log fsync: {fsync}", raw_fsync(&base, false));
    println!("fdatasync: {}", raw_fsync(&base, true));
    println!(
        "{:>6} {:>5} {:>8} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "body", "pubs", "prealloc", "msgs/s", "p50 µs", "p99 µs", "p999 µs", "max µs"
    );
    for &body in &bodies {
        for publishers in [1usize, 16, 256] {
            for &prealloc in modes {
                let dir = tempfile::tempdir_in(&base).unwrap();
                let log = TopicLog::open(
                    dir.path(),
                    LogOptions {
                        fsync,
                        preallocate: prealloc,
                        ..LogOptions::default()
                    },
                )
                .unwrap();
                let (rate, hist) = runtime.block_on(publish(&log, publishers, body, secs));
                println!(
                    "{:>6} {:>5} {:>8} {:>12.0} {:>9} {:>9} {:>9} {:>9}",
                    body,
                    publishers,
                    if prealloc > 0 { "on" } else { "off" },
                    rate,
                    hist.value_at_quantile(0.50),
                    hist.value_at_quantile(0.99),
                    hist.value_at_quantile(0.999),
                    hist.max()
                );
                if publishers == 256 {
                    reads(&log, body);
                }
                runtime.block_on(log.close()).unwrap();
            }
        }
    }
}

async fn publish(
    log: &TopicLog,
    publishers: usize,
    body: usize,
    secs: f64,
) -> (f64, Histogram<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let payload = Bytes::from(vec![b'x'; body]);
    let start = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let (log, stop, payload) = (log.clone(), stop.clone(), payload.clone());
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let record = AppendRecord {
                        id: format!("{p:010}{n:016}"),
                        body: payload.clone(),
                        ..AppendRecord::default()
                    };
                    let t = Instant::now();
                    log.append(vec![record]).await.unwrap();
                    hist.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                    n += 1;
                }
                hist
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    (rate, all)
}

fn reads(log: &TopicLog, body: usize) {
    let (first, next) = (log.first_seq(), log.next_seq());
    let start = Instant::now();
    let mut seq = first;
    let mut n = 0u64;
    while seq < next {
        let batch = log.read(seq, 1000, 1 << 20).unwrap();
        n += batch.len() as u64;
        seq = batch.last().unwrap().seq + 1;
    }
    let seq_rate = n as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let lookups = 200_000u64;
    for _ in 0..lookups {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let seq = first + x % (next - first);
        assert!(log.read_one(seq).unwrap().is_some());
    }
    let random_rate = lookups as f64 / start.elapsed().as_secs_f64();
    println!(
        "         reads of {n} x {body} B: sequential {seq_rate:.0} msgs/s, random read_one {random_rate:.0}/s"
    );
}

/// fdatasync latency after writing 4 KiB past the end of a file, or over
/// zeros already written (`prezeroed`).
fn raw_fsync(base: &Path, prezeroed: bool) -> String {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir_in(base).unwrap();
    let file = std::fs::File::create(dir.path().join("f")).unwrap();
    if prezeroed {
        file.write_all_at(&vec![0u8; 500 * 4096], 0).unwrap();
        file.sync_all().unwrap();
    }
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for i in 0..500u64 {
        file.write_all_at(&[1u8; 4096], i * 4096).unwrap();
        let t = Instant::now();
        file.sync_data().unwrap();
        hist.record(t.elapsed().as_micros().max(1) as u64).unwrap();
    }
    format!(
        "p50 {} µs, p99 {} µs (4 KiB {})",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        if prezeroed {
            "writes over pre-zeroed blocks"
        } else {
            "appends"
        }
    )
}
