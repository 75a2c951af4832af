//! The open-loop generator: messages are due at a fixed rate, whatever the
//! system under test does.
//!
//! A closed-loop client waits for each answer before sending again, so a
//! stalled server also stalls the clock that would have measured the stall
//! (coordinated omission). Here a scheduler thread computes each message's
//! *intended* send time (`start + i / rate`) and hands it to the senders,
//! who put it into the message; the handler measures latency from that
//! time. A message that waited because every sender was busy, or because
//! the server was slow to answer an earlier one, is charged with the wait.
//!
//! The scheduler is an OS thread that sleeps until each due time (tens of
//! microseconds late at worst on Linux), not a tokio timer, whose
//! millisecond ticks would add up to 1 ms to every measurement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::tally::histogram;

/// A fixed-rate schedule, shared by the senders of one case.
pub struct OpenLoop {
    anchor: Instant,
    due: tokio::sync::Mutex<mpsc::UnboundedReceiver<u64>>,
    /// Microseconds from each intended send time to the moment a sender took
    /// it: whether
    /// the generator kept up (it should stay far below the latencies measured).
    lag: Mutex<Histogram<u64>>,
    sent: AtomicU64,
}

impl OpenLoop {
    /// Starts the schedule: `rate` messages per second for `length`, the
    /// first due 10 ms from now. Intended times are nanoseconds since `anchor`.
    pub fn start(anchor: Instant, rate: f64, length: Duration) -> Arc<OpenLoop> {
        let (tx, rx) = mpsc::unbounded_channel();
        let start = Instant::now() + Duration::from_millis(10);
        let total = (rate * length.as_secs_f64()).round() as u64;
        std::thread::Builder::new()
            .name("open-loop".into())
            .spawn(move || {
                for i in 0..total {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let intended = due.duration_since(anchor).as_nanos() as u64;
                    if tx.send(intended).is_err() {
                        return; // the senders gave up
                    }
                }
            })
            .expect("a scheduler thread");
        Arc::new(OpenLoop {
            anchor,
            due: tokio::sync::Mutex::new(rx),
            lag: Mutex::new(histogram()),
            sent: AtomicU64::new(0),
        })
    }

    /// The intended send time of the next message due (nanoseconds since the
    /// anchor), waiting until it is due; `None` when the schedule is over.
    pub async fn next(&self) -> Option<u64> {
        self.due.lock().await.recv().await
    }

    /// A sender is about to send the message intended for `intended`: the
    /// lag is how long it waited for a free sender.
    pub fn sending(&self, intended: u64) {
        let now = self.anchor.elapsed().as_nanos() as u64;
        let micros = (now.saturating_sub(intended) / 1_000).max(1);
        self.lag.lock().saturating_record(micros);
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sent_count(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Intended-to-sent lag, in microseconds.
    pub fn lag(&self) -> Histogram<u64> {
        self.lag.lock().clone()
    }
}
