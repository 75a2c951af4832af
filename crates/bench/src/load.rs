//! The closed-loop driver: N workers, each with exactly one operation
//! outstanding (send, await the answer, repeat), for a fixed time.
//!
//! Closed loop means the offered load adapts to the system: throughput is
//! what N patient clients get, and latency is what each of them sees. Each
//! worker keeps its own histogram (no shared state on the hot path); they are
//! merged at the end.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, from 1 µs to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One worker's view: whether to go on, and where to record what it did.
pub struct Worker {
    /// 0-based, distinct among the workers of one run.
    pub index: usize,
    deadline: Instant,
    latency: Histogram<u64>,
    ops: u64,
    msgs: u64,
}

impl Worker {
    /// True until the run's time is up; a worker checks it before each operation.
    pub fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Records one operation that started at `started` and moved `msgs` messages.
    pub fn record(&mut self, started: Instant, msgs: u64) {
        let micros = started.elapsed().as_micros().max(1) as u64;
        self.latency.saturating_record(micros);
        self.ops += 1;
        self.msgs += msgs;
    }
}

/// What a run did, all workers together.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub msgs: u64,
    pub ops: u64,
    /// From the start until the last worker finished its last operation.
    pub elapsed: Duration,
    /// Latency of one operation, in microseconds.
    pub latency: Histogram<u64>,
}

impl Outcome {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.msgs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` (0.5, 0.99, 0.999), in microseconds.
    pub fn micros(&self, q: f64) -> u64 {
        if self.latency.is_empty() {
            0
        } else {
            self.latency.value_at_quantile(q)
        }
    }
}

/// Runs `workers` workers for `time`. `worker` builds each one's loop from its
/// [`Worker`]; the loop returns the `Worker` when it is done (time is up, or
/// nothing is left to do). Workers run as tasks on the current runtime.
pub async fn run<F, Fut>(workers: usize, time: Duration, mut worker: F) -> Result<Outcome>
where
    F: FnMut(Worker) -> Fut,
    Fut: Future<Output = Result<Worker>> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + time;
    let tasks: Vec<_> = (0..workers)
        .map(|index| {
            tokio::spawn(worker(Worker {
                index,
                deadline,
                latency: histogram(),
                ops: 0,
                msgs: 0,
            }))
        })
        .collect();
    let mut outcome = Outcome {
        msgs: 0,
        ops: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    for task in tasks {
        let w = task.await.context("a worker panicked")??;
        outcome.msgs += w.msgs;
        outcome.ops += w.ops;
        outcome
            .latency
            .add(&w.latency)
            .context("merging histograms")?;
    }
    outcome.elapsed = start.elapsed();
    Ok(outcome)
}
