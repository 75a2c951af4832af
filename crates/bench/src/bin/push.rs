//! Push delivery: Courier POSTs each message (or a batch) to the instances of
//! a service, here in-process HTTP receivers; next to it, in the same run,
//! RabbitMQ consumers on a durable queue. Two kinds of case:
//!
//! - **throughput**: a backlog of N × 256 B is pre-filled, then consuming
//!   starts (the push subscription is created; the RabbitMQ consumers
//!   subscribe) and the clock runs until the handlers have seen all N;
//! - **latency**: messages are published at a fixed rate (open loop) with
//!   their intended send time inside, and each handler records how long
//!   after that time it got the message (coordinated omission corrected).
//!
//! `cargo build --release -p courier && cargo run --release -p courier-bench --bin push -- [--quick] [--secs N] [--runs N] [--rate R] [--messages N] [--only NAME] [--dir DIR] [--courier PATH] [--no-fsync]`
//!
//! Courier is `--courier`, else `$COURIER_BIN`, else `courier` next to this
//! program, started once per case with a fresh data directory and a config
//! that declares the service and its instances. RabbitMQ is
//! `$COURIER_BENCH_AMQP_URL`, else a local one as guest; it is shared and
//! never reconfigured: each case declares its own queue and deletes it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::{Method, StatusCode};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use courier_bench::child::{self, Courier};
use courier_bench::machine::{self, CpuMeter};
use courier_bench::openloop::OpenLoop;
use courier_bench::receiver::{Receiver, BATCH_PATH, SINGLE_PATH};
use courier_bench::report::{count, goals_table, micros, Goal, Table};
use courier_bench::tally::{stamped, Tally};
use courier_bench::{amqp, body, http, Options};
use hdrhistogram::Histogram;

const BODY: usize = 256;
/// Requests in flight at once per push subscription, and per instance.
const MAX_CONCURRENT: usize = 256;
/// Unacked messages per RabbitMQ consumer (`basic.qos`).
const PREFETCH: u16 = 256;
const BATCH: usize = 100;
/// Batch push drains this many times the backlog of the other cases: at
/// hundreds of thousands of messages per second, 200,000 would be gone in
/// well under a second, too short a window to mean much.
const BATCH_BACKLOG: u64 = 5;
/// Connections publishing to Courier in the latency case. Each has one
/// publish outstanding, answered after its fsync: with 64, a disk stall of
/// a few milliseconds still leaves free senders at 5,000 msgs/s (the peer
/// of RabbitMQ's confirms left in flight).
const PUBLISH_CONNECTIONS: usize = 64;
/// Channels publishing to RabbitMQ in the latency case, each on its own connection.
const RABBIT_PUBLISHERS: usize = 4;
const SERVICE: &str = "bench";
const TOPIC: &str = "bench";
/// The goals' rate for the latency case.
const GOAL_RATE: f64 = 5_000.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Courier,
    RabbitMq,
}

/// The cases, in the order they run and are printed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    /// Courier drains a backlog by pushing `batch` messages per request to `instances` receivers.
    Push { instances: usize, batch: usize },
    /// RabbitMQ `consumers` drain a queue.
    Consume { consumers: usize },
    /// Open loop at a fixed rate: publish to handler.
    Latency(System),
}

impl Case {
    fn all() -> Vec<Case> {
        vec![
            Case::Push {
                instances: 1,
                batch: 1,
            },
            Case::Push {
                instances: 4,
                batch: 1,
            },
            Case::Push {
                instances: 1,
                batch: BATCH,
            },
            Case::Push {
                instances: 4,
                batch: BATCH,
            },
            Case::Consume { consumers: 1 },
            Case::Consume { consumers: 4 },
            Case::Latency(System::Courier),
            Case::Latency(System::RabbitMq),
        ]
    }

    /// The name `--only` matches: by prefix, or by one of its dash-separated
    /// words (`--only rabbit` takes `rabbit-1`, `rabbit-4` and `latency-rabbit`).
    fn key(self) -> String {
        match self {
            Case::Push { instances, batch } => format!(
                "courier-{}-{instances}",
                if batch == 1 { "single" } else { "batch" }
            ),
            Case::Consume { consumers } => format!("rabbit-{consumers}"),
            Case::Latency(System::Courier) => "latency-courier".into(),
            Case::Latency(System::RabbitMq) => "latency-rabbit".into(),
        }
    }

    fn chosen(only: Option<&str>) -> Vec<Case> {
        Case::all()
            .into_iter()
            .filter(|c| {
                let key = c.key();
                only.is_none_or(|o| key.starts_with(o) || key.split('-').any(|w| w == o))
            })
            .collect()
    }

    fn system(self) -> System {
        match self {
            Case::Push { .. } => System::Courier,
            Case::Consume { .. } => System::RabbitMq,
            Case::Latency(system) => system,
        }
    }

    fn name(self) -> String {
        match self {
            Case::Push {
                instances,
                batch: 1,
            } => format!(
                "Courier single push, {instances} instance{}",
                plural(instances)
            ),
            Case::Push { instances, batch } => format!(
                "Courier batch push ({batch}/request), {instances} instance{}",
                plural(instances)
            ),
            Case::Consume { consumers } => {
                format!("RabbitMQ, {consumers} consumer{}", plural(consumers))
            }
            Case::Latency(System::Courier) => format!(
                "Courier single push, 1 instance, max_concurrent {MAX_CONCURRENT} (publish: {PUBLISH_CONNECTIONS} HTTP connections)"
            ),
            Case::Latency(System::RabbitMq) => format!(
                "RabbitMQ, 1 consumer, prefetch {PREFETCH} (publish: {RABBIT_PUBLISHERS} channels, confirms in flight)"
            ),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Everything a run is told, beyond the shared [`Options`].
struct Settings {
    options: Options,
    runs: usize,
    /// The pre-filled backlog of the throughput cases.
    messages: u64,
    /// The latency cases' rate, messages per second, and length.
    rate: f64,
    latency_time: Duration,
    /// The `courier` program, when a Courier case is chosen.
    courier: Option<PathBuf>,
    /// RabbitMQ's URL when it answered; else why it is skipped.
    rabbit: std::result::Result<String, String>,
}

/// A throughput case's figures.
struct Drained {
    /// Messages the handlers saw (the backlog, plus any redelivery).
    handled: u64,
    elapsed: Duration,
    /// CPU-seconds per second: this program (generator and receivers), the
    /// server (when its PID is known), and the rest of the machine.
    bench_cpu: f64,
    server_cpu: Option<f64>,
    others_cpu: f64,
    backlog: u64,
}

impl Drained {
    fn rate(&self) -> f64 {
        self.backlog as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A latency case's figures.
struct Timed {
    published: u64,
    delivered: u64,
    /// Intended send time to handler, µs.
    latency: Histogram<u64>,
    /// Intended send time to the moment a sender took the message, µs.
    lag: Histogram<u64>,
}

enum Figures {
    Drained(Drained),
    Timed(Timed),
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs_given = args.iter().any(|a| a == "--secs");
    let options = Options::parse(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let settings = runtime.block_on(settings(options, secs_given))?;
    let cases: Vec<Case> = Case::chosen(settings.options.only.as_deref())
        .into_iter()
        .filter(|c| c.system() == System::Courier || settings.rabbit.is_ok())
        .collect();
    if cases.is_empty() {
        bail!("no case to run (see --only in docs/benchmarks.md)");
    }

    machine::print_header(
        "push (push delivery to HTTP services vs RabbitMQ consumers)",
        &settings.options.dir,
    )?;
    if !settings.options.fsync {
        println!("- **fsync OFF** (--no-fsync, Courier only): an experiment, not a durable figure");
    }
    match &settings.courier {
        Some(c) => println!("- courier: {}", c.display()),
        None => println!("- courier: no Courier case chosen"),
    }
    match &settings.rabbit {
        Ok(url) => println!(
            "- rabbitmq: {} (durable classic queue, persistent messages, publisher confirms)",
            amqp::redacted(url)
        ),
        Err(why) => println!("- rabbitmq: skipped: {why}"),
    }
    println!(
        "- throughput: a pre-filled backlog of {} × {BODY} B ({} for batch push), drained; latency: {} msgs/s for {:?}, open loop; {} run{} of each case, interleaved\n",
        count(settings.messages as f64),
        count((settings.messages * BATCH_BACKLOG) as f64),
        count(settings.rate),
        settings.latency_time,
        settings.runs,
        plural(settings.runs),
    );

    let mut results: Vec<(Case, Vec<Figures>)> = cases.iter().map(|&c| (c, Vec::new())).collect();
    for run in 1..=settings.runs {
        for (case, figures) in &mut results {
            eprintln!("run {run}/{}: {} …", settings.runs, case.key());
            let f = runtime
                .block_on(run_case(&settings, *case, run))
                .with_context(|| format!("case {}", case.key()))?;
            match &f {
                Figures::Drained(d) => eprintln!(
                    "  {}: {} msgs/s ({} handled in {:.2} s)",
                    case.key(),
                    count(d.rate()),
                    count(d.handled as f64),
                    d.elapsed.as_secs_f64()
                ),
                Figures::Timed(t) => eprintln!(
                    "  {}: {} of {} delivered, p99 {}",
                    case.key(),
                    count(t.delivered as f64),
                    count(t.published as f64),
                    micros(quantile(&t.latency, 0.99))
                ),
            }
            figures.push(f);
        }
    }
    drop(runtime);
    report(&settings, &results);
    Ok(())
}

async fn settings(options: Options, secs_given: bool) -> Result<Settings> {
    let mut runs = 1;
    let mut messages = if options.quick { 20_000 } else { 200_000 };
    let mut rate = GOAL_RATE;
    let mut courier = None;
    let mut rest = options.rest.iter();
    while let Some(arg) = rest.next() {
        let mut value = |what: &str| rest.next().with_context(|| format!("{arg} needs {what}"));
        match arg.as_str() {
            "--runs" => runs = value("a number")?.parse()?,
            "--messages" => messages = value("a number")?.parse()?,
            "--rate" => rate = value("messages per second")?.parse()?,
            "--courier" => courier = Some(PathBuf::from(value("a path")?)),
            other => bail!("unknown argument '{other}'; see docs/benchmarks.md"),
        }
    }
    if runs == 0 || messages == 0 || !(rate > 0.0 && rate <= 1e6) {
        bail!("--runs and --messages must be at least 1, --rate between 0 and 1,000,000");
    }
    let latency_time = if secs_given {
        options.case_time
    } else if options.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(10)
    };
    let cases = Case::chosen(options.only.as_deref());
    let courier = if cases.iter().any(|c| c.system() == System::Courier) {
        Some(child::courier_program(courier)?)
    } else {
        None
    };
    let rabbit = if cases.iter().any(|c| c.system() == System::RabbitMq) {
        let url = amqp::url();
        match amqp::connect(&url).await {
            Ok(connection) => {
                let _ = connection.close(200, "done".into()).await;
                Ok(url)
            }
            Err(e) => {
                let why = format!("{e:#}");
                eprintln!("RabbitMQ is not reachable ({why}); its cases are skipped");
                Err(why)
            }
        }
    } else {
        Err("no RabbitMQ case chosen".into())
    };
    Ok(Settings {
        options,
        runs,
        messages,
        rate,
        latency_time,
        courier,
        rabbit,
    })
}

async fn run_case(s: &Settings, case: Case, run: usize) -> Result<Figures> {
    let queue = || {
        format!(
            "courier-bench-push-{}-{}-{run}",
            std::process::id(),
            case.key()
        )
    };
    Ok(match case {
        Case::Push { instances, batch } => {
            Figures::Drained(courier_drain(s, instances, batch).await?)
        }
        Case::Consume { consumers } => Figures::Drained(
            with_queue(s, &queue(), |url, q| rabbit_drain(s, url, q, consumers)).await?,
        ),
        Case::Latency(System::Courier) => Figures::Timed(courier_latency(s).await?),
        Case::Latency(System::RabbitMq) => {
            Figures::Timed(with_queue(s, &queue(), |url, q| rabbit_latency(s, url, q)).await?)
        }
    })
}

// ---------------------------------------------------------------- Courier

/// The config of a server whose service [`SERVICE`] has `receivers` as its instances.
fn service_config(receivers: &[Receiver]) -> String {
    let instances: Vec<String> = receivers
        .iter()
        .map(|r| format!("{{ url = \"{}\" }}", r.url()))
        .collect();
    format!(
        "[[services]]\nname = \"{SERVICE}\"\ninstances = [{}]\nbalance = \"round_robin\"\nmax_concurrent_per_instance = {MAX_CONCURRENT}\n",
        instances.join(", ")
    )
}

/// A Courier server and the receivers it pushes to. Fields drop in order:
/// the server stops before its receivers close and its data directory goes.
struct PushSetup {
    courier: Courier,
    _receivers: Vec<Receiver>,
    _dir: tempfile::TempDir,
}

/// Starts `instances` receivers counting into `tally`, and a Courier server
/// (fresh data directory) whose service has them as its instances, with the topic created.
async fn courier_with_receivers(
    s: &Settings,
    instances: usize,
    tally: &Arc<Tally>,
) -> Result<PushSetup> {
    let mut receivers = Vec::with_capacity(instances);
    for _ in 0..instances {
        receivers.push(Receiver::start(tally.clone()).await?);
    }
    let dir = s.options.temp_dir("courier-bench-push-")?;
    let program = s.courier.as_ref().context("no courier program")?;
    let courier = Courier::start(
        program,
        dir.path(),
        &service_config(&receivers),
        s.options.fsync,
    )?;
    http::Conn::connect(courier.addr)
        .await?
        .json(
            Method::PUT,
            &format!("/v1/topics/{TOPIC}"),
            Bytes::from_static(b"{}"),
            &[StatusCode::CREATED, StatusCode::OK],
        )
        .await?;
    Ok(PushSetup {
        courier,
        _receivers: receivers,
        _dir: dir,
    })
}

/// Creates push subscription `name` on [`TOPIC`].
async fn subscribe(addr: SocketAddr, name: &str, start: &str, batch: usize) -> Result<()> {
    let path = if batch == 1 { SINGLE_PATH } else { BATCH_PATH };
    let config = serde_json::json!({
        "topic": TOPIC,
        "start": start,
        "push": {
            "service": SERVICE,
            "path": path,
            "batch_size": batch,
            "max_concurrent": MAX_CONCURRENT,
            "timeout": 10_000,
        },
    });
    http::Conn::connect(addr)
        .await?
        .json(
            Method::PUT,
            &format!("/v1/subscriptions/{name}"),
            config.to_string().into(),
            &[StatusCode::CREATED, StatusCode::OK],
        )
        .await?;
    Ok(())
}

/// Waits (up to 10 s) until subscription `name` reports an empty backlog
/// and `acked` acks, so the next case starts on a quiet server; says so on
/// stderr if it does not.
async fn settle(addr: SocketAddr, name: &str, acked: u64) -> Result<()> {
    let started = Instant::now();
    let mut last = serde_json::Value::Null;
    while started.elapsed() < Duration::from_secs(10) {
        let answer = http::Conn::connect(addr)
            .await?
            .json(
                Method::GET,
                &format!("/v1/subscriptions/{name}"),
                Bytes::new(),
                &[StatusCode::OK],
            )
            .await?;
        last = serde_json::from_slice(&answer)?;
        let field = |f: &str| last.get(f).and_then(serde_json::Value::as_u64);
        if field("backlog") == Some(0) && field("acked_total").is_none_or(|a| a >= acked) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("  subscription {name} not settled after 10 s: {last}");
    Ok(())
}

async fn courier_drain(s: &Settings, instances: usize, batch: usize) -> Result<Drained> {
    let backlog = if batch == 1 {
        s.messages
    } else {
        s.messages * BATCH_BACKLOG
    };
    let tally = Arc::new(Tally::counting(Instant::now()));
    let mut setup = courier_with_receivers(s, instances, &tally).await?;
    let courier = &mut setup.courier;
    eprintln!("  pre-filling {} × {BODY} B …", count(backlog as f64));
    let took = http::prefill(courier.addr, TOPIC, backlog, &body(BODY)).await?;
    eprintln!(
        "  pre-filled {} × {BODY} B in {:.2} s",
        count(backlog as f64),
        took.as_secs_f64()
    );
    let meter = CpuMeter::start(&["self", &courier.pid().to_string()])?;
    let started = Instant::now();
    subscribe(courier.addr, "drain", "earliest", batch).await?;
    let elapsed = tally
        .wait_for(backlog, started, drain_timeout(backlog), "courier")
        .await?;
    let cpu = meter.stop()?;
    settle(courier.addr, "drain", backlog).await?;
    let handled = tally.handled();
    courier.server.stop(Duration::from_secs(30));
    Ok(Drained {
        handled,
        elapsed,
        bench_cpu: cpu.processes[0],
        server_cpu: Some(cpu.processes[1]),
        others_cpu: cpu.others,
        backlog,
    })
}

/// How long draining `n` messages may take before the case fails.
fn drain_timeout(n: u64) -> Duration {
    Duration::from_secs(120.max(n / 1_000))
}

async fn courier_latency(s: &Settings) -> Result<Timed> {
    let anchor = Instant::now();
    let tally = Arc::new(Tally::timed(anchor));
    let mut setup = courier_with_receivers(s, 1, &tally).await?;
    let courier = &mut setup.courier;
    subscribe(courier.addr, "live", "new", 1).await?;
    let mut conns = Vec::with_capacity(PUBLISH_CONNECTIONS);
    for _ in 0..PUBLISH_CONNECTIONS {
        conns.push(http::Conn::connect(courier.addr).await?);
    }
    let schedule = OpenLoop::start(anchor, s.rate, s.latency_time);
    let path = format!("/v1/topics/{TOPIC}/messages");
    let senders: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (schedule, path) = (schedule.clone(), path.clone());
            tokio::spawn(async move {
                while let Some(intended) = schedule.next().await {
                    schedule.sending(intended);
                    let (status, answer) = conn
                        .send(
                            Method::POST,
                            &path,
                            "application/octet-stream",
                            stamped(intended, BODY),
                        )
                        .await?;
                    if status != StatusCode::CREATED {
                        bail!("publish: {status}: {}", String::from_utf8_lossy(&answer));
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for sender in senders {
        sender.await.context("a sender panicked")??;
    }
    let published = schedule.sent_count();
    let timed = finish_latency(&tally, &schedule, published, "courier").await;
    courier.server.stop(Duration::from_secs(30));
    Ok(timed)
}

/// Waits up to 30 s for the last deliveries of a latency case and gathers its figures.
async fn finish_latency(tally: &Tally, schedule: &OpenLoop, published: u64, what: &str) -> Timed {
    if let Err(e) = tally
        .wait_for(published, Instant::now(), Duration::from_secs(30), what)
        .await
    {
        eprintln!("  {e:#}");
    }
    if tally.unstamped() > 0 {
        eprintln!("  {} deliveries without a send time", tally.unstamped());
    }
    Timed {
        published,
        delivered: tally.handled(),
        latency: tally.latency(),
        lag: schedule.lag(),
    }
}

// ---------------------------------------------------------------- RabbitMQ

/// Runs `body` with a fresh durable queue `queue`, deleted afterwards whatever happened.
async fn with_queue<T, F, Fut>(s: &Settings, queue: &str, body: F) -> Result<T>
where
    F: FnOnce(String, String) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let url = s.rabbit.clone().map_err(anyhow::Error::msg)?;
    let admin = amqp::connect(&url).await?;
    amqp::declare(&admin, queue).await?;
    let result = body(url, queue.to_string()).await;
    let deleted = amqp::delete(&admin, queue).await;
    let _ = admin.close(200, "done".into()).await;
    let value = result?;
    deleted?;
    Ok(value)
}

async fn rabbit_drain(
    s: &Settings,
    url: String,
    queue: String,
    consumers: usize,
) -> Result<Drained> {
    let connection = amqp::connect(&url).await?;
    eprintln!(
        "  pre-filling {} × {BODY} B (persistent, confirmed) …",
        count(s.messages as f64)
    );
    let took = amqp::prefill(&connection, &queue, s.messages, &body(BODY)).await?;
    let _ = connection.close(200, "done".into()).await;
    eprintln!(
        "  pre-filled {} × {BODY} B (persistent, confirmed) in {:.2} s",
        count(s.messages as f64),
        took.as_secs_f64()
    );
    let tally = Arc::new(Tally::counting(Instant::now()));
    // RabbitMQ's CPU, when its Erlang VM is the only one on the machine.
    let beam = machine::pid_named("beam.smp").map(|p| p.to_string());
    let mut pids = vec!["self".to_string()];
    pids.extend(beam.clone());
    let pids: Vec<&str> = pids.iter().map(String::as_str).collect();
    let meter = CpuMeter::start(&pids)?;
    let started = Instant::now();
    let running = amqp::Consumers::start(&url, &queue, consumers, PREFETCH, tally.clone()).await?;
    let elapsed = tally
        .wait_for(s.messages, started, drain_timeout(s.messages), "rabbitmq")
        .await?;
    let cpu = meter.stop()?;
    running.stop().await?;
    Ok(Drained {
        handled: tally.handled(),
        elapsed,
        bench_cpu: cpu.processes[0],
        server_cpu: cpu.processes.get(1).copied(),
        others_cpu: cpu.others,
        backlog: s.messages,
    })
}

async fn rabbit_latency(s: &Settings, url: String, queue: String) -> Result<Timed> {
    let anchor = Instant::now();
    let tally = Arc::new(Tally::timed(anchor));
    let running = amqp::Consumers::start(&url, &queue, 1, PREFETCH, tally.clone()).await?;
    let mut publishers = Vec::with_capacity(RABBIT_PUBLISHERS);
    for _ in 0..RABBIT_PUBLISHERS {
        publishers.push(amqp::connect(&url).await?);
    }
    let schedule = OpenLoop::start(anchor, s.rate, s.latency_time);
    let senders: Vec<_> = publishers
        .iter()
        .map(|p| amqp::publish_open_loop(p, &queue, schedule.clone(), BODY))
        .collect();
    let mut published = 0;
    for sent in futures_util::future::join_all(senders).await {
        published += sent?;
    }
    for publisher in publishers {
        let _ = publisher.close(200, "done".into()).await;
    }
    let timed = finish_latency(&tally, &schedule, published, "rabbitmq").await;
    running.stop().await?;
    Ok(timed)
}

// ---------------------------------------------------------------- report

/// The median of `xs` (the mean of the middle two for an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn quantile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

fn drained(figures: &[Figures]) -> Vec<&Drained> {
    figures
        .iter()
        .filter_map(|f| match f {
            Figures::Drained(d) => Some(d),
            Figures::Timed(_) => None,
        })
        .collect()
}

fn timed(figures: &[Figures]) -> Vec<&Timed> {
    figures
        .iter()
        .filter_map(|f| match f {
            Figures::Timed(t) => Some(t),
            Figures::Drained(_) => None,
        })
        .collect()
}

/// Each run's value, ` / `-separated, when there is more than one run.
fn each(values: &[String]) -> String {
    if values.len() > 1 {
        values.join(" / ")
    } else {
        "".into()
    }
}

fn report(s: &Settings, results: &[(Case, Vec<Figures>)]) {
    let of = |case: Case| results.iter().find(|(c, _)| *c == case).map(|(_, f)| f);
    let runs_note = if s.runs > 1 {
        format!("median of {} runs, cell by cell", s.runs)
    } else {
        "1 run".into()
    };

    let mut throughput = Vec::new();
    for (case, figures) in results {
        let d = drained(figures);
        if d.is_empty() {
            continue;
        }
        let detail = match case {
            Case::Push { .. } => format!(" (max_concurrent {MAX_CONCURRENT})"),
            _ => format!(" (prefetch {PREFETCH}, one ack per message)"),
        };
        let cell = |f: &dyn Fn(&Drained) -> f64| {
            format!("{:.2}", median(d.iter().map(|x| f(x)).collect()))
        };
        throughput.push(vec![
            format!("{}{detail}", case.name()),
            count(d[0].backlog as f64),
            count(median(d.iter().map(|x| x.rate()).collect())),
            each(&d.iter().map(|x| count(x.rate())).collect::<Vec<_>>()),
            count(median(d.iter().map(|x| x.handled as f64).collect())),
            cell(&|x| x.bench_cpu),
            if d.iter().all(|x| x.server_cpu.is_some()) {
                cell(&|x| x.server_cpu.unwrap_or(0.0))
            } else {
                "(in others)".into()
            },
            cell(&|x| x.others_cpu),
        ]);
    }
    print_table(
        s,
        &format!(
            "Throughput: drain a pre-filled backlog of {BODY} B messages, fsync on ({runs_note})"
        ),
        &[
            "case",
            "backlog",
            "msgs/s",
            "each run",
            "handled",
            "bench CPU",
            "server CPU",
            "others' CPU",
        ],
        throughput,
    );

    let mut latency = Vec::new();
    for (case, figures) in results {
        let t = timed(figures);
        if t.is_empty() {
            continue;
        }
        let q = |q: f64| {
            micros(median(t.iter().map(|x| quantile(&x.latency, q) as f64).collect()) as u64)
        };
        latency.push(vec![
            case.name(),
            count(median(t.iter().map(|x| x.published as f64).collect())),
            count(median(t.iter().map(|x| x.delivered as f64).collect())),
            q(0.5),
            q(0.99),
            each(
                &t.iter()
                    .map(|x| micros(quantile(&x.latency, 0.99)))
                    .collect::<Vec<_>>(),
            ),
            q(0.999),
            micros(median(t.iter().map(|x| x.latency.max() as f64).collect()) as u64),
            micros(median(t.iter().map(|x| quantile(&x.lag, 0.99) as f64).collect()) as u64),
        ]);
    }
    print_table(
        s,
        &format!(
            "Delivery latency: {} msgs/s for {:?}, open loop, from the intended send time to the handler ({runs_note})",
            count(s.rate),
            s.latency_time
        ),
        &[
            "case",
            "published",
            "delivered",
            "p50",
            "p99",
            "each run",
            "p999",
            "max",
            "sender lag p99",
        ],
        latency,
    );
    goals_table(&goals(s, &of)).print();
}

/// Prints a table unless it has no rows; its "each run" column only when
/// there was more than one run.
fn print_table(s: &Settings, title: &str, headers: &[&str], mut rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        return;
    }
    let mut headers = headers.to_vec();
    if s.runs == 1 {
        if let Some(i) = headers.iter().position(|h| *h == "each run") {
            headers.remove(i);
            for row in &mut rows {
                row.remove(i);
            }
        }
    }
    let mut table = Table::new(title, headers);
    for row in rows {
        table.row(row);
    }
    table.print();
}

fn goals<'a>(s: &Settings, of: &dyn Fn(Case) -> Option<&'a Vec<Figures>>) -> Vec<(Goal, String)> {
    let full_size = !s.options.quick;
    let judge = |text: &str, met: bool, applies: bool| {
        if applies {
            Goal::new(text, met)
        } else {
            Goal::not_applicable(text)
        }
    };
    let rates = |case: Case| -> Option<Vec<f64>> {
        let d = drained(of(case)?);
        (!d.is_empty()).then(|| d.iter().map(|x| x.rate()).collect())
    };
    let p99s = |case: Case| -> Option<Vec<f64>> {
        let t = timed(of(case)?);
        (!t.is_empty()).then(|| {
            t.iter()
                .map(|x| quantile(&x.latency, 0.99) as f64)
                .collect()
        })
    };
    let mut goals = Vec::new();

    let single = Case::Push {
        instances: 1,
        batch: 1,
    };
    if let Some(r) = rates(single) {
        let m = median(r);
        goals.push((
            judge(
                "≥ 30,000 single pushes/s to one instance",
                m >= 30_000.0,
                full_size,
            ),
            format!("{} msgs/s", count(m)),
        ));
    }

    let batch = Case::Push {
        instances: 1,
        batch: BATCH,
    };
    let text = "batch push (1 instance) ≥ 2× RabbitMQ's 1-consumer rate, same run";
    match (rates(batch), rates(Case::Consume { consumers: 1 })) {
        (Some(b), Some(r)) => {
            // The median of the per-run ratios, as in docs/benchmarks.md.
            let ratios: Vec<f64> = b.iter().zip(&r).map(|(b, r)| b / r).collect();
            let m = median(ratios.clone());
            goals.push((
                judge(text, m >= 2.0, full_size),
                format!(
                    "{} vs {} msgs/s: {m:.2}×{}",
                    count(median(b)),
                    count(median(r)),
                    if ratios.len() > 1 {
                        format!(
                            " ({})",
                            ratios
                                .iter()
                                .map(|x| format!("{x:.2}"))
                                .collect::<Vec<_>>()
                                .join(" / ")
                        )
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        (Some(_), None) => goals.push((Goal::not_applicable(text), "RabbitMQ not run".into())),
        _ => {}
    }

    let at_goal_rate = full_size && s.rate == GOAL_RATE;
    if let Some(c) = p99s(Case::Latency(System::Courier)) {
        let m = median(c.clone());
        goals.push((
            judge(
                "delivery p99 at 5,000 msgs/s < 5 ms",
                m < 5_000.0,
                at_goal_rate,
            ),
            micros(m as u64),
        ));
        let text = "delivery p99 at 5,000 msgs/s ≤ RabbitMQ's, same run";
        match p99s(Case::Latency(System::RabbitMq)) {
            Some(r) => {
                let mr = median(r);
                goals.push((
                    judge(text, m <= mr, at_goal_rate),
                    format!("{} vs {}", micros(m as u64), micros(mr as u64)),
                ));
            }
            None => goals.push((Goal::not_applicable(text), "RabbitMQ not run".into())),
        }
    }
    goals
}
