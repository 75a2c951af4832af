//! The runs: open-loop load at a fixed rate, latency measured from each
//! request's intended send time (so a stalled system cannot hide its queue:
//! coordinated omission is corrected), then the notification backlog drained.

use std::sync::Arc;
use std::time::{Duration, Instant};

use counters::Counters;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use reactions_demo::{seed, Options, System};
use serde::Serialize;
use serde_json::{json, Value};

use crate::Args;

/// Users that react; each run gets fresh posts so every request is a new reaction.
const USERS: usize = 50;

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub mode: String,
    pub fault: String,
    pub rate: u32,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Reactions accepted (2xx) vs notifications stored for them.
    pub accepted: u64,
    pub delivered: u64,
    /// Whether the backlog drained before the deadline.
    pub drained: bool,
    pub drain_secs: f64,
    /// Reaction accepted → notification stored.
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub e2e_max_ms: f64,
}

mod counters {
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    pub struct Counters {
        pub ok: AtomicU64,
        pub errors: AtomicU64,
    }

    impl Counters {
        pub fn add(&self, ok: bool) {
            let c = if ok { &self.ok } else { &self.errors };
            c.fetch_add(1, Ordering::Relaxed);
        }
        pub fn get(&self) -> (u64, u64) {
            (
                self.ok.load(Ordering::Relaxed),
                self.errors.load(Ordering::Relaxed),
            )
        }
    }
}

pub async fn experiment(args: &Args) -> anyhow::Result<Vec<Cell>> {
    eprintln!("starting Courier and the services…");
    let system = System::start(Options {
        courier_fsync: true,
        ..Options::default()
    })
    .await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(2048)
        .timeout(args.request_timeout)
        .build()?;
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(seed::user(&http, &system.reactions_url, &format!("load-{i}")).await?);
    }
    let mut cells = Vec::new();
    for mode in &args.modes {
        put(
            &http,
            &format!("{}/v1/mode", system.reactions_url),
            json!({ "mode": mode, "sync_timeout_ms": 1000 }),
        )
        .await?;
        for fault in &args.faults {
            for &rate in &args.rates {
                cells.push(run_cell(args, &system, &http, &users, mode, fault, rate).await?);
            }
        }
        // The search for the saturation point comes after the fault runs:
        // an overloaded run leaves a backlog that would weigh on the next one.
        let top = args.rates.iter().copied().max().unwrap_or(1);
        let mut rate = top;
        for _ in 0..6 {
            if !args.saturate {
                break;
            }
            rate *= 2;
            let cell = run_cell(args, &system, &http, &users, mode, "healthy", rate).await?;
            let saturated = cell.throughput < 0.9 * rate as f64
                || cell.error_rate > 0.01
                || cell.p99_ms > 1000.0;
            cells.push(cell);
            if saturated {
                break;
            }
        }
    }
    system.stop().await?;
    Ok(cells)
}

/// Waits until the run before has left nothing behind: the reaction
/// service's outbox is empty and the notification service's count has
/// stopped moving (a run that hit the drain deadline, such as an overloaded
/// one, would otherwise weigh on the next). At most 10 minutes.
async fn quiet(http: &reqwest::Client, system: &System, faults_url: &str) -> anyhow::Result<()> {
    put(
        http,
        faults_url,
        json!({ "latency_ms": 0, "error_rate": 0.0, "down": false }),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_stored = None;
    while Instant::now() < deadline {
        let outbox: Value = http
            .get(format!("{}/v1/outbox", system.reactions_url))
            .send()
            .await?
            .json()
            .await?;
        let stats: Value = http
            .get(format!("{}/v1/stats", system.notifications_url))
            .send()
            .await?
            .json()
            .await?;
        let stored = stats["stored"].as_u64();
        if outbox["pending"].as_u64() == Some(0) && stored == last_stored {
            return Ok(());
        }
        last_stored = stored;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("the system did not settle within 10 minutes of the previous run")
}

async fn put(http: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<()> {
    http.put(url).json(&body).send().await?.error_for_status()?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_cell(
    args: &Args,
    system: &System,
    http: &reqwest::Client,
    users: &[String],
    mode: &str,
    fault: &str,
    rate: u32,
) -> anyhow::Result<Cell> {
    let n = ((rate as f64) * args.duration.as_secs_f64())
        .round()
        .max(1.0) as u64;
    // Fresh posts: every (post, user, kind) is used once.
    let per_post = (users.len() * 3) as u64;
    let mut posts = Vec::new();
    for i in 0..n.div_ceil(per_post) {
        posts.push(
            seed::post(
                http,
                &system.reactions_url,
                &users[i as usize % users.len()],
                "load",
            )
            .await?,
        );
    }
    let faults_url = format!("{}/v1/faults", system.notifications_url);
    quiet(http, system, &faults_url).await?;
    let latency = if fault == "slow" { 200 } else { 0 };
    put(
        http,
        &faults_url,
        json!({ "latency_ms": latency, "error_rate": 0.0, "down": false }),
    )
    .await?;
    http.post(format!("{}/v1/stats/reset", system.notifications_url))
        .send()
        .await?;

    let bar = ProgressBar::new(n);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{mode} {fault} {rate}/s"));

    // The outage: down for the middle third of the run.
    let outage = (fault == "down").then(|| {
        let (http, url, third) = (http.clone(), faults_url.clone(), args.duration / 3);
        tokio::spawn(async move {
            tokio::time::sleep(third).await;
            let _ = http.put(&url).json(&json!({ "down": true })).send().await;
            tokio::time::sleep(third).await;
            let _ = http.put(&url).json(&json!({ "down": false })).send().await;
        })
    });

    let histogram = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds"),
    ));
    let counters = Arc::new(Counters::default());
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let intended = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(intended).await;
        let post = &posts[(i / per_post) as usize];
        let k = i % per_post;
        let user = &users[(k / 3) as usize];
        let kind = ["like", "love", "laugh"][(k % 3) as usize];
        let request = http
            .post(format!(
                "{}/v1/posts/{post}/reactions",
                system.reactions_url
            ))
            .json(&json!({ "user_id": user, "kind": kind }));
        let (histogram, counters, bar) = (histogram.clone(), counters.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let ok = matches!(request.send().await, Ok(r) if r.status().is_success());
            // From the intended send time, not the actual one.
            let us = intended.elapsed().as_micros().max(1) as u64;
            let _ = histogram
                .lock()
                .expect("histogram")
                .record(us.min(120_000_000));
            counters.add(ok);
            bar.inc(1);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(o) = outage {
        let _ = o.await;
    }
    put(http, &faults_url, json!({ "latency_ms": 0, "down": false })).await?;
    let (ok, errors) = counters.get();

    // Drain: wait until every accepted reaction has its notification.
    bar.set_message("draining");
    let drain_start = Instant::now();
    let mut stats = Value::Null;
    let mut drained = false;
    // Past the deadline the run counts as not drained, but the count goes on
    // (up to 10 minutes) so that *lost* is what never arrived, not what was late.
    while drain_start.elapsed() < args.drain_deadline.max(Duration::from_secs(600)) {
        stats = http
            .get(format!("{}/v1/stats", system.notifications_url))
            .send()
            .await?
            .json()
            .await?;
        if stats["stored"].as_u64().unwrap_or(0) >= ok {
            drained = drain_start.elapsed() < args.drain_deadline;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_with_message(if drained { "drained" } else { "NOT drained" });
    let h = histogram.lock().expect("histogram");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let sent = ok + errors;
    Ok(Cell {
        mode: mode.into(),
        fault: fault.into(),
        rate,
        sent,
        ok,
        errors,
        error_rate: errors as f64 / sent.max(1) as f64,
        throughput: ok as f64 / elapsed.max(args.duration.as_secs_f64()),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        accepted: ok,
        delivered: stats["stored"].as_u64().unwrap_or(0),
        drained,
        drain_secs: drain_start.elapsed().as_secs_f64(),
        e2e_p50_ms: stats["delay_ms"]["p50"].as_f64().unwrap_or(0.0),
        e2e_p99_ms: stats["delay_ms"]["p99"].as_f64().unwrap_or(0.0),
        e2e_max_ms: stats["delay_ms"]["max"].as_f64().unwrap_or(0.0),
    })
}
