//! The embedded engine in-process, fsync on: publish, pull+ack, memory with a
//! large backlog, and restart time.
//!
//! `cargo run --release -p courier-bench --bin core -- [--quick] [--secs N] [--dir DIR] [--backlog N] [--preallocate BYTES] [--no-fsync] [--only publish|pull|memory]`
//!
//! `--preallocate BYTES` opens every engine (children included) with
//! `EmbeddedConfig::preallocate_bytes` set to BYTES (0 turns it off).
//!
//! The backlog and the restart run in child processes (this program started
//! again with a hidden `__backlog` / `__reopen` argument), so their memory
//! figures are those of a fresh process holding only that backlog.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use courier_bench::load::Outcome;
use courier_bench::machine::CpuMeter;
use courier_bench::report::{count, goals_table, mib, micros, Goal, Table};
use courier_bench::{body, inproc, machine, Options};
use courier_core::{Engine, LeaseToken};
use courier_embedded::EmbeddedConfig;

const BODIES: [usize; 2] = [256, 4096];
const PUBLISHERS: [usize; 3] = [1, 16, 256];
const FAN_OUT: [usize; 3] = [1, 2, 4];
const CONSUMERS_PER_SUBSCRIPTION: usize = 4;
const PULL_MAX: usize = 500;
const BACKLOG_SUBSCRIPTIONS: [&str; 2] = ["idle-1", "idle-2"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("__backlog") => return child_backlog(&args[1..]),
        Some("__reopen") => return child_reopen(&args[1..]),
        Some("__crash") => return child_crash(&args[1..]),
        _ => {}
    }
    let options = Options::parse(args)?;
    let mut backlog: u64 = if options.quick { 100_000 } else { 10_000_000 };
    let mut preallocate = EmbeddedConfig::default().preallocate_bytes;
    let mut rest = options.rest.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--backlog" => backlog = rest.next().context("--backlog needs a count")?.parse()?,
            "--preallocate" => {
                preallocate = rest
                    .next()
                    .context("--preallocate needs a size in bytes")?
                    .parse()?
            }
            other => bail!("unknown argument '{other}'; see docs/benchmarks.md"),
        }
    }
    let prefill: u64 = if options.quick { 100_000 } else { 2_000_000 };

    machine::print_header("core (embedded engine, in-process)", &options.dir)?;
    if !options.fsync {
        println!("- **fsync OFF** (--no-fsync): an experiment, not a durable figure");
    }
    println!("- engine: preallocate_bytes {preallocate} (--preallocate BYTES)");
    println!(
        "- each timed case: {:?}; pull+ack backlog {}; memory backlog {}\n",
        options.case_time,
        count(prefill as f64),
        count(backlog as f64)
    );
    let runtime = runtime()?;
    let mut goals = Vec::new();

    if options.wants("publish") {
        runtime.block_on(publish_section(&options, preallocate, &mut goals))?;
    }
    if options.wants("pull") {
        runtime.block_on(pull_section(&options, preallocate, prefill, &mut goals))?;
    }
    if options.wants("memory") {
        memory_section(&options, preallocate, backlog, &mut goals)?;
    }

    goals_table(&goals).print();
    Ok(())
}

fn fsync_text(options: &Options) -> &'static str {
    if options.fsync {
        "fsync on"
    } else {
        "FSYNC OFF"
    }
}

fn latency_cells(o: &Outcome) -> [String; 4] {
    [
        micros(o.micros(0.5)),
        micros(o.micros(0.99)),
        micros(o.micros(0.999)),
        micros(o.latency.max()),
    ]
}

/// (a) Publishers each publishing one message per call, fresh engine per case.
async fn publish_section(
    options: &Options,
    preallocate: u64,
    goals: &mut Vec<(Goal, String)>,
) -> Result<()> {
    let mut table = Table::new(
        &format!(
            "Publish, one message per call (in-process, {}, preallocate_bytes {preallocate})",
            fsync_text(options),
        ),
        [
            "case",
            "msgs/s",
            "MiB/s",
            "p50",
            "p99",
            "p999",
            "max",
            "CPU (cores)",
            "others' CPU",
        ],
    );
    for size in BODIES {
        for publishers in PUBLISHERS {
            let dir = options.temp_dir("courier-bench-publish-")?;
            let engine = inproc::open_with(dir.path(), options.fsync, preallocate).await?;
            inproc::create_topic(engine.as_ref(), "bench").await?;
            let meter = CpuMeter::start(&["self"])?;
            let o = inproc::publish(
                engine.clone(),
                "bench",
                publishers,
                body(size),
                1,
                options.case_time,
            )
            .await?;
            let cpu = meter.stop()?;
            engine.shutdown().await?;
            let case = format!(
                "{size} B, {publishers} publisher{}",
                if publishers == 1 { "" } else { "s" }
            );
            let [p50, p99, p999, max] = latency_cells(&o);
            let mibs = o.rate() * size as f64 / (1 << 20) as f64;
            table.row([
                case.clone(),
                count(o.rate()),
                format!("{mibs:.1}"),
                p50,
                p99.clone(),
                p999,
                max,
                format!("{:.2}", cpu.processes[0]),
                format!("{:.2}", cpu.others),
            ]);
            if size == 256 && publishers == 256 {
                goals.push((
                    Goal::new(
                        "≥ 500,000 durable 256 B msgs/s, 256 publishers",
                        o.rate() >= 500_000.0,
                    ),
                    format!("{} msgs/s", count(o.rate())),
                ));
            }
            if size == 256 && publishers == 1 {
                goals.push((
                    Goal::new(
                        "single publisher: publish p99 < 1 ms",
                        o.micros(0.99) < 1000,
                    ),
                    format!("p99 {p99}"),
                ));
            }
        }
    }
    table.print();
    Ok(())
}

/// (b) A pre-filled topic drained by consumers that pull a batch and ack it;
/// 1 subscription (a work queue), then 2 and 4 (fan-out: every subscription
/// gets every message; the rate counts deliveries of all of them).
async fn pull_section(
    options: &Options,
    preallocate: u64,
    prefill: u64,
    goals: &mut Vec<(Goal, String)>,
) -> Result<()> {
    let dir = options.temp_dir("courier-bench-pull-")?;
    let engine = inproc::open_with(dir.path(), options.fsync, preallocate).await?;
    let shared: Arc<dyn Engine> = engine.clone();
    inproc::create_topic(shared.as_ref(), "work").await?;
    let took = inproc::prefill(shared.clone(), "work", prefill, body(256)).await?;
    println!(
        "pre-filled {} × 256 B in {:.1} s ({} msgs/s, batches of 1000)",
        count(prefill as f64),
        took.as_secs_f64(),
        count(prefill as f64 / took.as_secs_f64())
    );
    let mut table = Table::new(
        &format!(
            "Pull + ack, batches of up to {PULL_MAX}, {CONSUMERS_PER_SUBSCRIPTION} consumers per subscription (in-process, {}); latency of one pull + ack",
            fsync_text(options)
        ),
        ["case", "msgs/s", "msgs/batch", "p50", "p99", "p999", "max", "CPU (cores)", "others' CPU"],
    );
    for subs in FAN_OUT {
        let names: Vec<String> = (0..subs).map(|i| format!("fan{subs}-{i}")).collect();
        for name in &names {
            inproc::create_subscription(shared.as_ref(), name, "work").await?;
        }
        let meter = CpuMeter::start(&["self"])?;
        let o = inproc::pull_ack(
            shared.clone(),
            &names,
            CONSUMERS_PER_SUBSCRIPTION,
            PULL_MAX,
            options.case_time,
        )
        .await?;
        let cpu = meter.stop()?;
        let [p50, p99, p999, max] = latency_cells(&o);
        let case = if subs == 1 {
            "1 subscription (work queue)".to_string()
        } else {
            format!("{subs} subscriptions (fan-out)")
        };
        let per_batch = o.msgs as f64 / o.ops.max(1) as f64;
        table.row([
            case,
            count(o.rate()),
            format!("{per_batch:.0}"),
            p50,
            p99,
            p999,
            max,
            format!("{:.2}", cpu.processes[0]),
            format!("{:.2}", cpu.others),
        ]);
        if subs == 1 {
            goals.push((
                Goal::new(
                    "pull+ack ≥ 300,000 msgs/s (1 subscription)",
                    o.rate() >= 300_000.0,
                ),
                format!("{} msgs/s", count(o.rate())),
            ));
        }
        if o.msgs >= prefill * subs as u64 {
            println!(
                "note: {subs} subscription(s) drained the whole backlog before the time was up"
            );
        }
    }
    engine.shutdown().await?;
    table.print();
    Ok(())
}

/// (c) and (d): builds the backlog in one child process, restarts on it in another.
fn memory_section(
    options: &Options,
    preallocate: u64,
    backlog: u64,
    goals: &mut Vec<(Goal, String)>,
) -> Result<()> {
    let dir = options.temp_dir("courier-bench-backlog-")?;
    let data = dir.path().to_string_lossy().to_string();
    println!(
        "building a backlog of {} × 256 B with {} idle subscriptions (child process)…",
        count(backlog as f64),
        BACKLOG_SUBSCRIPTIONS.len()
    );
    let fsync = if options.fsync { "fsync" } else { "no-fsync" };
    let prealloc = &preallocate.to_string();
    let built = run_child(&["__backlog", &data, &backlog.to_string(), fsync, prealloc])?;
    let on_disk = dir_size(dir.path())?;
    println!("restarting on it (child process)…");
    let started = Instant::now();
    let reopened = run_child(&["__reopen", &data, fsync, prealloc])?;
    let process = started.elapsed();

    let crash_publishes = (backlog / 20).max(1_000);
    println!(
        "publishing {} more with client ids, then exiting without shutdown (child process)…",
        count(crash_publishes as f64)
    );
    // The crash child gives message 1 back under the lease the restart probe took.
    let token = reopened
        .get("token")
        .context("the restart probe printed no lease token")?
        .clone();
    run_child(&[
        "__crash",
        &data,
        &crash_publishes.to_string(),
        &token,
        fsync,
        prealloc,
    ])?;
    println!("restarting after that crash (child process)…");
    let after_crash = run_child(&["__reopen", &data, fsync, prealloc])?;

    let get = |m: &HashMap<String, String>, k: &str| {
        m.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let mut table = Table::new(
        &format!(
            "Memory with a backlog of {} × 256 B and restart ({})",
            count(backlog as f64),
            fsync_text(options)
        ),
        ["what", "figure"],
    );
    let rss_after = get(&built, "rss_after") as u64;
    table.row([
        "RSS before the backlog (engine open, empty)".into(),
        mib(get(&built, "rss_before") as u64),
    ]);
    table.row(["RSS with the backlog (VmRSS)".into(), mib(rss_after)]);
    table.row([
        "peak RSS while building it (VmHWM)".into(),
        mib(get(&built, "hwm_after") as u64),
    ]);
    table.row([
        "backlog build rate (batches of 1000)".into(),
        format!(
            "{} msgs/s",
            count(backlog as f64 / get(&built, "build_secs"))
        ),
    ]);
    table.row(["data on disk".into(), mib(on_disk)]);
    table.row([
        "engine shutdown".into(),
        format!("{:.2} s", get(&built, "shutdown_secs")),
    ]);
    table.row([
        "restart: open()".into(),
        format!("{:.2} s", get(&reopened, "open_secs")),
    ]);
    let restart = get(&reopened, "first_pull_secs");
    table.row([
        "restart: open() until the first pull returns message 1".into(),
        format!("{restart:.2} s"),
    ]);
    table.row([
        "restart: whole child process (exec, open, pull, shutdown)".into(),
        format!("{:.2} s", process.as_secs_f64()),
    ]);
    table.row([
        "RSS after the restart and first pull (VmRSS)".into(),
        mib(get(&reopened, "rss") as u64),
    ]);
    table.row([
        "peak RSS during the restart (VmHWM)".into(),
        mib(get(&reopened, "hwm") as u64),
    ]);
    table.row([
        "backlog each subscription reports after the restart".into(),
        count(get(&reopened, "backlog")),
    ]);
    table.row([
        format!(
            "restart after a crash that followed {} publishes with client ids: open() to first pull",
            count(crash_publishes as f64)
        ),
        format!("{:.2} s", get(&after_crash, "first_pull_secs")),
    ]);
    table.row([
        "RSS after that restart (VmRSS; the dedup table holds those ids)".into(),
        mib(get(&after_crash, "rss") as u64),
    ]);
    table.print();

    let judge = |text: &str, met: bool| {
        if backlog >= 10_000_000 {
            Goal::new(text, met)
        } else {
            Goal::not_applicable(text)
        }
    };
    goals.push((
        judge("RSS < 256 MiB with a 10M backlog", rss_after < 256 << 20),
        mib(rss_after),
    ));
    goals.push((
        judge(
            "restart in seconds (< 10 s from open() to the first pull), 10M backlog",
            restart < 10.0,
        ),
        format!("{restart:.2} s"),
    ));
    Ok(())
}

/// Runs this program again with `args` and returns the `key=value` pairs of its `RESULT` line.
fn run_child(args: &[&str]) -> Result<HashMap<String, String>> {
    let exe = std::env::current_exe()?;
    let output = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running child {args:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("child {args:?} failed ({}): {stdout}", output.status);
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("child {args:?} printed no RESULT: {stdout}"))?;
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').context("malformed RESULT")?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// What every child process is told: `DIR [COUNT] fsync|no-fsync PREALLOCATE_BYTES`.
struct ChildArgs {
    dir: PathBuf,
    fsync: bool,
    preallocate: u64,
}

impl ChildArgs {
    fn parse(args: &[String], name: &str) -> Result<ChildArgs> {
        let [dir, fsync, prealloc] = args else {
            bail!("usage: {name} DIR fsync|no-fsync PREALLOCATE_BYTES")
        };
        Ok(ChildArgs {
            dir: dir.into(),
            fsync: fsync == "fsync",
            preallocate: prealloc.parse()?,
        })
    }

    /// The same with a message count after `DIR`.
    fn parse_with_count(args: &[String], name: &str) -> Result<(ChildArgs, u64)> {
        let [dir, n, rest @ ..] = args else {
            bail!("usage: {name} DIR COUNT fsync|no-fsync PREALLOCATE_BYTES")
        };
        let flags: Vec<String> = std::iter::once(dir.clone())
            .chain(rest.iter().cloned())
            .collect();
        Ok((ChildArgs::parse(&flags, name)?, n.parse()?))
    }

    async fn open(&self) -> Result<Arc<courier_embedded::EmbeddedEngine>> {
        inproc::open_with(&self.dir, self.fsync, self.preallocate).await
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Child: opens a fresh engine in `dir`, publishes `count` messages to a topic
/// with idle subscriptions, reports memory before and after, shuts down.
fn child_backlog(args: &[String]) -> Result<()> {
    let (child, n) = ChildArgs::parse_with_count(args, "__backlog")?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let engine = child.open().await?;
        inproc::create_topic(engine.as_ref(), "backlog").await?;
        for name in BACKLOG_SUBSCRIPTIONS {
            inproc::create_subscription(engine.as_ref(), name, "backlog").await?;
        }
        let before = machine::memory()?;
        let took = inproc::prefill(engine.clone(), "backlog", n, body(256)).await?;
        let after = machine::memory()?;
        let t = Instant::now();
        engine.shutdown().await?;
        println!(
            "RESULT rss_before={} rss_after={} hwm_after={} build_secs={} shutdown_secs={}",
            before.rss,
            after.rss,
            after.hwm,
            took.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// Child: publishes `count` messages with client ids on the backlog, gives
/// message 1 back (nacks the lease `TOKEN` the restart probe took) to the
/// subscription the probe pulls from, then exits without `shutdown`: a crash,
/// as far as the files are concerned. The next open must replay the journal
/// and re-learn the ids written since the last checkpoint.
///
/// Arguments: `DIR COUNT TOKEN fsync|no-fsync PREALLOCATE_BYTES`.
fn child_crash(args: &[String]) -> Result<()> {
    let [dir, n, token, rest @ ..] = args else {
        bail!("usage: __crash DIR COUNT TOKEN fsync|no-fsync PREALLOCATE_BYTES")
    };
    let flags: Vec<String> = [dir.clone(), n.clone()]
        .into_iter()
        .chain(rest.iter().cloned())
        .collect();
    let (child, n) = ChildArgs::parse_with_count(&flags, "__crash")?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let engine = child.open().await?;
        let sub = BACKLOG_SUBSCRIPTIONS[0];
        let token = LeaseToken::new(token.as_str());
        let outcome = engine
            .nack(sub, &[token], Some(Duration::ZERO), None)
            .await?;
        // Lost only if the lease ran out first (a very slow open): then message
        // 1 comes back on its own, after its backoff.
        if outcome != [courier_core::Outcome::Ok] {
            eprintln!("note: giving message 1 back: {outcome:?}");
        }
        let body = body(256);
        for start in (0..n).step_by(1000) {
            let batch = (start..(start + 1000).min(n))
                .map(|i| courier_core::NewMessage {
                    id: Some(format!("crash-{i}")),
                    body: body.clone(),
                    ..Default::default()
                })
                .collect();
            engine.publish("backlog", batch).await?;
        }
        println!("RESULT published={n}");
        std::process::exit(0)
    })
}

/// Child: opens the engine on `dir` and times it until the first message is pulled.
fn child_reopen(args: &[String]) -> Result<()> {
    let child = ChildArgs::parse(args, "__reopen")?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let started = Instant::now();
        let engine = child.open().await?;
        let opened = started.elapsed();
        let token =
            inproc::first_message(engine.as_ref(), BACKLOG_SUBSCRIPTIONS[0], &body(256)).await?;
        let first = started.elapsed();
        let memory = machine::memory()?;
        let backlog = engine.subscription(BACKLOG_SUBSCRIPTIONS[1]).await?.backlog;
        engine.shutdown().await?;
        println!(
            "RESULT open_secs={} first_pull_secs={} rss={} hwm={} backlog={backlog} token={token}",
            opened.as_secs_f64(),
            first.as_secs_f64(),
            memory.rss,
            memory.hwm
        );
        Ok(())
    })
}
