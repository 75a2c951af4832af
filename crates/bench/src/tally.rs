//! What the consuming side of a delivery benchmark saw: how many messages
//! were handled and, for latency runs, how long after its intended send time
//! each one reached its handler.
//!
//! A [`Tally`] is shared by every handler of one case (the push receivers'
//! HTTP handlers, the RabbitMQ consumers), so both systems are counted by
//! the same code. The send time travels in the message itself (see
//! [`stamped`]), measured on one clock: an [`Instant`] anchor that the
//! generator and the handlers, all in this process, share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Digits of the stamp at the start of a stamped body: nanoseconds since the
/// anchor, zero-padded (20 digits hold any `u64`).
const STAMP: usize = 20;

/// Latencies in microseconds, from 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// A body of `len` bytes (at least 20) that starts with `intended_ns` as
/// zero-padded decimal text and goes on in printable ASCII, so it travels
/// untouched as a raw body, as JSON text and as an AMQP payload.
pub fn stamped(intended_ns: u64, len: usize) -> Bytes {
    let mut body = format!("{intended_ns:0STAMP$}").into_bytes();
    body.extend((body.len()..len.max(STAMP)).map(|i| b'a' + (i % 26) as u8));
    body.into()
}

/// The stamp [`stamped`] put at the start of `body`, if it has one.
pub fn stamp_of(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body.get(..STAMP)?).ok()?.parse().ok()
}

/// Handled messages and, when asked for, their latencies; shared by the handlers of one case.
pub struct Tally {
    anchor: Instant,
    handled: AtomicU64,
    /// Record latencies from stamped bodies (a latency case), or only count.
    timed: bool,
    /// Handled bodies without a stamp in a timed case (a bug if not zero).
    unstamped: AtomicU64,
    /// Microseconds from the intended send time to the handler. A mutex is
    /// enough: latency cases run at a few thousand messages per second.
    latency: Mutex<Histogram<u64>>,
}

impl Tally {
    /// A tally that only counts (a throughput case).
    pub fn counting(anchor: Instant) -> Tally {
        Tally::new(anchor, false)
    }

    /// A tally that also records each stamped message's latency (a latency case).
    pub fn timed(anchor: Instant) -> Tally {
        Tally::new(anchor, true)
    }

    fn new(anchor: Instant, timed: bool) -> Tally {
        Tally {
            anchor,
            handled: AtomicU64::new(0),
            timed,
            unstamped: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
        }
    }

    /// One message handled; in a timed case its latency is recorded now.
    pub fn one(&self, body: &[u8]) {
        if self.timed {
            match stamp_of(body) {
                Some(intended) => {
                    let now = self.anchor.elapsed().as_nanos() as u64;
                    let micros = (now.saturating_sub(intended) / 1_000).max(1);
                    self.latency.lock().saturating_record(micros);
                }
                None => {
                    self.unstamped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` messages handled at once (a batch), without latencies.
    pub fn many(&self, n: u64) {
        self.handled.fetch_add(n, Ordering::Relaxed);
    }

    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    pub fn unstamped(&self) -> u64 {
        self.unstamped.load(Ordering::Relaxed)
    }

    /// The latencies recorded so far, in microseconds.
    pub fn latency(&self) -> Histogram<u64> {
        self.latency.lock().clone()
    }

    /// Waits until `target` messages have been handled, checking every
    /// millisecond, and returns how long that took from `since`. Prints a
    /// progress line on stderr every few seconds; fails after `timeout`.
    pub async fn wait_for(
        &self,
        target: u64,
        since: Instant,
        timeout: Duration,
        what: &str,
    ) -> Result<Duration> {
        let mut progress = Instant::now();
        loop {
            let handled = self.handled();
            if handled >= target {
                return Ok(since.elapsed());
            }
            if since.elapsed() > timeout {
                bail!("{what}: only {handled} of {target} messages handled after {timeout:?}");
            }
            if progress.elapsed() >= Duration::from_secs(3) {
                eprintln!("  {what}: {handled} of {target} handled");
                progress = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let body = stamped(1_234_567_890, 256);
        assert_eq!(body.len(), 256);
        assert!(body.iter().all(|b| b.is_ascii_graphic()));
        assert_eq!(stamp_of(&body), Some(1_234_567_890));
        assert_eq!(stamp_of(&crate::body(256)), None);
        assert_eq!(stamp_of(b"123"), None);
    }

    #[test]
    fn counts_and_times() {
        let anchor = Instant::now();
        let tally = Tally::timed(anchor);
        tally.one(&stamped(0, 64));
        tally.one(b"not stamped");
        tally.many(10);
        assert_eq!(tally.handled(), 12);
        assert_eq!(tally.unstamped(), 1);
        assert_eq!(tally.latency().len(), 1);
    }
}
