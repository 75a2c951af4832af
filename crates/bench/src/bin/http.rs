//! The real `courier` server over HTTP, fsync on, side by side with Redis
//! (`XADD`, AOF with `appendfsync always`), both driven by this program's
//! load generator; plus the same workloads in-process, for the cost of HTTP.
//!
//! `cargo build --release -p courier && cargo run --release -p courier-bench --bin http -- [--quick] [--secs N] [--dir DIR] [--courier PATH] [--redis-server PATH] [--no-fsync] [--only single-1|single-16|single-64|batch|pull] [--courier-only] [--preallocate BYTES]`
//!
//! The server binary is `--courier`, else `$COURIER_BIN`, else `courier` next
//! to this program (the same target directory). Redis is `--redis-server`,
//! else `$REDIS_SERVER`, else `/usr/bin/redis-server`; without it the Redis
//! column is skipped. Both servers listen on 127.0.0.1, use a temporary data
//! directory, and are stopped by their PID at the end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::{Method, StatusCode};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use courier_bench::child::{self, Courier, Spawned};
use courier_bench::load::{self, Outcome};
use courier_bench::machine::CpuMeter;
use courier_bench::report::{count, goals_table, micros, Goal, Table};
use courier_bench::{body, http, inproc, machine, resp, Options};
use courier_core::Engine;
use courier_embedded::EmbeddedConfig;

const BODY: usize = 256;
const SINGLE_CONNECTIONS: [usize; 3] = [1, 16, 64];
const BATCH: usize = 100;
const BATCH_CONNECTIONS: usize = 16;
const CONSUMERS: usize = 4;
const PULL_MAX: usize = 500;

/// The cases, in the order of the tables.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Single(usize),
    Batch,
    PullAck,
}

impl Case {
    fn all() -> Vec<Case> {
        let mut cases: Vec<Case> = SINGLE_CONNECTIONS
            .iter()
            .map(|&n| Case::Single(n))
            .collect();
        cases.extend([Case::Batch, Case::PullAck]);
        cases
    }

    /// The cases `--only` selects.
    fn chosen(options: &Options) -> Vec<Case> {
        Case::all()
            .into_iter()
            .filter(|c| options.wants(c.key()))
            .collect()
    }

    /// The name `--only` matches.
    fn key(self) -> &'static str {
        match self {
            Case::Single(1) => "single-1",
            Case::Single(16) => "single-16",
            Case::Single(_) => "single-64",
            Case::Batch => "batch",
            Case::PullAck => "pull",
        }
    }

    fn courier(self) -> String {
        match self {
            Case::Single(n) => format!("publish 1 msg/request, {n} connection{}", plural(n)),
            Case::Batch => {
                format!("batch publish {BATCH} msgs/request, {BATCH_CONNECTIONS} connections")
            }
            Case::PullAck => format!("pull (max {PULL_MAX}) + ack, {CONSUMERS} connections"),
        }
    }

    fn redis(self) -> Option<String> {
        match self {
            Case::Single(n) => Some(format!("XADD, {n} client{}", plural(n))),
            Case::Batch => Some(format!(
                "XADD pipelined {BATCH}/round trip, {BATCH_CONNECTIONS} clients"
            )),
            Case::PullAck => None,
        }
    }
}

/// One measured case, with the CPU used during it (CPU-seconds per second).
struct Measured {
    outcome: Outcome,
    /// This program, the load generator.
    client: f64,
    server: f64,
    /// Everything else on the (shared) machine.
    others: f64,
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

struct Programs {
    courier: PathBuf,
    redis: Option<PathBuf>,
    /// `--courier-only`: skip the in-process reference and Redis, for quick
    /// comparisons of server builds.
    courier_only: bool,
    /// `--preallocate BYTES`: `engine.embedded.preallocate_bytes` for the server and
    /// the in-process reference (else the engine's default).
    preallocate: u64,
}

fn main() -> Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    let programs = find_programs(&options)?;
    // Enough for pull + ack to run seconds, not one: short windows swing widely.
    let prefill: u64 = if options.quick { 50_000 } else { 3_000_000 };

    machine::print_header(
        "http (courier serve over HTTP/1.1 vs Redis XADD)",
        &options.dir,
    )?;
    if !options.fsync {
        println!("- **fsync OFF** (--no-fsync, Courier and in-process only): an experiment, not a durable figure");
    }
    println!("- courier: {}", programs.courier.display());
    println!(
        "- engine: preallocate_bytes {} (--preallocate BYTES), server and in-process",
        programs.preallocate
    );
    match &programs.redis {
        Some(r) => println!("- redis: {} ({})", r.display(), redis_version(r)),
        None => println!("- redis: not found, Redis was skipped"),
    }
    println!(
        "- each timed case: {:?}; {BODY} B bodies; pull+ack backlog {}\n",
        options.case_time,
        count(prefill as f64)
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let inproc = if programs.courier_only {
        Vec::new()
    } else {
        println!("in-process reference (embedded engine, same workloads)…");
        runtime.block_on(in_process(&options, prefill, programs.preallocate))?
    };
    println!("courier over HTTP…");
    let courier = runtime.block_on(courier_http(&options, &programs, prefill))?;
    let redis = match &programs.redis {
        Some(_) if programs.courier_only => None,
        Some(path) => {
            println!("redis…");
            Some(runtime.block_on(redis_xadd(&options, path))?)
        }
        None => None,
    };
    drop(runtime);

    report(&inproc, &courier, redis.as_deref());
    Ok(())
}

fn find_programs(options: &Options) -> Result<Programs> {
    let mut courier = None;
    let mut redis = std::env::var_os("REDIS_SERVER").map(PathBuf::from);
    let mut courier_only = false;
    let mut preallocate = EmbeddedConfig::default().preallocate_bytes;
    let mut rest = options.rest.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--courier-only" => courier_only = true,
            "--preallocate" => {
                preallocate = rest
                    .next()
                    .context("--preallocate needs a size in bytes")?
                    .parse()?
            }
            "--courier" => courier = Some(rest.next().context("--courier needs a path")?.into()),
            "--redis-server" => {
                redis = Some(rest.next().context("--redis-server needs a path")?.into())
            }
            other => bail!("unknown argument '{other}'; see docs/benchmarks.md"),
        }
    }
    let courier = child::courier_program(courier)?;
    let redis = redis
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")))
        .filter(|p| p.is_file());
    Ok(Programs {
        courier,
        redis,
        courier_only,
        preallocate,
    })
}

fn redis_version(path: &Path) -> String {
    Command::new(path)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.split_whitespace()
                .find_map(|w| w.strip_prefix("v="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown version".into())
}

/// One in-process case, with the CPU this process used during it: the
/// engine's whole cost, its threads included, in cores.
struct InProcess {
    outcome: Outcome,
    cores: f64,
}

/// The same workloads against the embedded engine in this process.
async fn in_process(
    options: &Options,
    prefill: u64,
    preallocate: u64,
) -> Result<Vec<(Case, InProcess)>> {
    let dir = options.temp_dir("courier-bench-inproc-")?;
    let engine = inproc::open_with(dir.path(), options.fsync, preallocate).await?;
    let shared: Arc<dyn Engine> = engine.clone();
    let mut out = Vec::new();
    for case in Case::chosen(options) {
        let topic = match case {
            Case::Single(n) => format!("single-{n}"),
            Case::Batch => "batch".into(),
            Case::PullAck => "work".into(),
        };
        inproc::create_topic(shared.as_ref(), &topic).await?;
        if case == Case::PullAck {
            inproc::prefill(shared.clone(), &topic, prefill, body(BODY)).await?;
            inproc::create_subscription(shared.as_ref(), "work-q", &topic).await?;
        }
        let meter = CpuMeter::start(&["self"])?;
        let outcome = match case {
            Case::Single(n) => {
                inproc::publish(shared.clone(), &topic, n, body(BODY), 1, options.case_time).await?
            }
            Case::Batch => {
                inproc::publish(
                    shared.clone(),
                    &topic,
                    BATCH_CONNECTIONS,
                    body(BODY),
                    BATCH,
                    options.case_time,
                )
                .await?
            }
            Case::PullAck => {
                inproc::pull_ack(
                    shared.clone(),
                    &["work-q".into()],
                    CONSUMERS,
                    PULL_MAX,
                    options.case_time,
                )
                .await?
            }
        };
        let cores = meter.stop()?.processes[0];
        out.push((case, InProcess { outcome, cores }));
    }
    engine.shutdown().await?;
    Ok(out)
}

/// Measures `run` and the CPU this process and `server` used meanwhile.
async fn measured(
    server: u32,
    run: impl std::future::Future<Output = Result<Outcome>>,
) -> Result<Measured> {
    let meter = CpuMeter::start(&["self", &server.to_string()])?;
    let outcome = run.await?;
    let cpu = meter.stop()?;
    Ok(Measured {
        outcome,
        client: cpu.processes[0],
        server: cpu.processes[1],
        others: cpu.others,
    })
}

async fn connections(addr: SocketAddr, n: usize) -> Result<std::vec::IntoIter<http::Conn>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(http::Conn::connect(addr).await?);
    }
    Ok(conns.into_iter())
}

/// Starts `courier serve` and runs every case against it over HTTP/1.1.
async fn courier_http(
    options: &Options,
    programs: &Programs,
    prefill: u64,
) -> Result<Vec<(Case, Measured)>> {
    let dir = options.temp_dir("courier-bench-http-")?;
    let config = format!(
        "[engine.embedded]\npreallocate_bytes = {}\n",
        programs.preallocate
    );
    let Courier { mut server, addr } =
        Courier::start(&programs.courier, dir.path(), &config, options.fsync)?;
    let pid = server.pid();
    println!("courier (pid {pid}) listening on {addr}");

    let mut admin = http::Conn::connect(addr).await?;
    // Topics first, on a connection that is then dropped: the server closes
    // connections idle for longer than its header read timeout.
    for case in Case::all() {
        let topic = topic_of(case);
        admin
            .json(
                Method::PUT,
                &format!("/v1/topics/{topic}"),
                Bytes::from_static(b"{}"),
                &[StatusCode::CREATED, StatusCode::OK],
            )
            .await?;
    }
    drop(admin);
    let mut out = Vec::new();
    for case in Case::chosen(options) {
        let topic = topic_of(case);
        let m = match case {
            Case::Single(n) => {
                let path = format!("/v1/topics/{topic}/messages");
                let mut conns = connections(addr, n).await?;
                measured(
                    pid,
                    load::run(n, options.case_time, |mut w| {
                        let (mut conn, path, body) = (
                            conns.next().expect("a connection per worker"),
                            path.clone(),
                            body(BODY),
                        );
                        async move {
                            while w.running() {
                                let t = Instant::now();
                                let (status, answer) = conn
                                    .send(
                                        Method::POST,
                                        &path,
                                        "application/octet-stream",
                                        body.clone(),
                                    )
                                    .await?;
                                if status != StatusCode::CREATED {
                                    bail!(
                                        "publish: {status}: {}",
                                        String::from_utf8_lossy(&answer)
                                    );
                                }
                                w.record(t, 1);
                            }
                            Ok(w)
                        }
                    }),
                )
                .await?
            }
            Case::Batch => {
                let path = format!("/v1/topics/{topic}/messages/batch");
                let batch = http::batch_body(&body(BODY), BATCH);
                let mut conns = connections(addr, BATCH_CONNECTIONS).await?;
                measured(
                    pid,
                    load::run(BATCH_CONNECTIONS, options.case_time, |mut w| {
                        let (mut conn, path, batch) = (
                            conns.next().expect("a connection per worker"),
                            path.clone(),
                            batch.clone(),
                        );
                        async move {
                            while w.running() {
                                let t = Instant::now();
                                conn.json(
                                    Method::POST,
                                    &path,
                                    batch.clone(),
                                    &[StatusCode::CREATED],
                                )
                                .await?;
                                w.record(t, BATCH as u64);
                            }
                            Ok(w)
                        }
                    }),
                )
                .await?
            }
            Case::PullAck => {
                let took = http::prefill(addr, topic, prefill, &body(BODY)).await?;
                println!(
                    "pre-filled {} × {BODY} B over HTTP in {:.1} s (batches of 1000)",
                    count(prefill as f64),
                    took.as_secs_f64()
                );
                let config = serde_json::json!({ "topic": topic, "start": "earliest" }).to_string();
                // A fresh connection: the server closes idle ones (its header read timeout).
                http::Conn::connect(addr)
                    .await?
                    .json(
                        Method::PUT,
                        "/v1/subscriptions/work-q",
                        config.into(),
                        &[StatusCode::CREATED],
                    )
                    .await?;
                let mut conns = connections(addr, CONSUMERS).await?;
                measured(pid, load::run(CONSUMERS, options.case_time, |mut w| {
                    let mut conn = conns.next().expect("a connection per worker");
                    let pull = Bytes::from(
                        serde_json::json!({ "consumer": format!("consumer-{}", w.index), "max_messages": PULL_MAX }).to_string(),
                    );
                    async move {
                        while w.running() {
                            let t = Instant::now();
                            let answer = conn.json(Method::POST, "/v1/subscriptions/work-q/pull", pull.clone(), &[StatusCode::OK]).await?;
                            let pulled: http::Pulled = serde_json::from_slice(&answer)?;
                            if pulled.messages.is_empty() {
                                break;
                            }
                            if pulled.messages.iter().any(|m| m.body.map(str::len) != Some(BODY)) {
                                bail!("pulled a message with an unexpected body");
                            }
                            let tokens: Vec<&str> = pulled.messages.iter().map(|m| m.token).collect();
                            let answer = conn.json(Method::POST, "/v1/subscriptions/work-q/ack", http::ack_body(&tokens), &[StatusCode::OK]).await?;
                            let (ok, all) = http::acked(&answer)?;
                            if ok != tokens.len() || all != tokens.len() {
                                bail!("{ok} of {} fresh leases acked", tokens.len());
                            }
                            w.record(t, tokens.len() as u64);
                        }
                        Ok(w)
                    }
                }))
                .await?
            }
        };
        out.push((case, m));
    }
    let stopped = server.stop(Duration::from_secs(30));
    println!(
        "courier stopped (SIGTERM to pid {pid}) in {:.2} s",
        stopped.as_secs_f64()
    );
    Ok(out)
}

fn topic_of(case: Case) -> &'static str {
    match case {
        Case::Single(1) => "single-1",
        Case::Single(16) => "single-16",
        Case::Single(_) => "single-64",
        Case::Batch => "batch",
        Case::PullAck => "work",
    }
}

/// Starts `redis-server` with an fsync-always AOF and runs the XADD cases.
async fn redis_xadd(options: &Options, program: &Path) -> Result<Vec<(Case, Measured)>> {
    let dir = options.temp_dir("courier-bench-redis-")?;
    let port = child::free_port()?;
    let mut command = Command::new(program);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir.path())
        .args(["--daemonize", "no", "--logfile", ""])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut server = Spawned::start("redis-server", command)?;
    let pid = server.pid();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    child::wait_listening(addr, Duration::from_secs(10))?;
    resp::Conn::connect(addr)
        .await?
        .round_trip(&resp::command(&[b"PING"]), 1)
        .await?;
    println!("redis-server (pid {pid}) listening on {addr}, appendfsync always");

    let mut out = Vec::new();
    for case in Case::chosen(options) {
        let (clients, per_trip) = match case {
            Case::Single(n) => (n, 1),
            Case::Batch => (BATCH_CONNECTIONS, BATCH),
            Case::PullAck => continue,
        };
        let commands = resp::xadd(topic_of(case), &body(BODY), per_trip);
        let mut conns = Vec::with_capacity(clients);
        for _ in 0..clients {
            conns.push(resp::Conn::connect(addr).await?);
        }
        let mut conns = conns.into_iter();
        let m = measured(
            pid,
            load::run(clients, options.case_time, |mut w| {
                let (mut conn, commands) = (
                    conns.next().expect("a connection per worker"),
                    commands.clone(),
                );
                async move {
                    while w.running() {
                        let t = Instant::now();
                        conn.round_trip(&commands, per_trip).await?;
                        w.record(t, per_trip as u64);
                    }
                    Ok(w)
                }
            }),
        )
        .await?;
        out.push((case, m));
    }
    let stopped = server.stop(Duration::from_secs(30));
    println!(
        "redis-server stopped (SIGTERM to pid {pid}) in {:.2} s",
        stopped.as_secs_f64()
    );
    Ok(out)
}

fn find(list: &[(Case, Measured)], case: Case) -> Option<&Measured> {
    list.iter().find(|(c, _)| *c == case).map(|(_, m)| m)
}

fn report(
    inproc: &[(Case, InProcess)],
    courier: &[(Case, Measured)],
    redis: Option<&[(Case, Measured)]>,
) {
    let lat = |o: &Outcome| {
        [
            micros(o.micros(0.5)),
            micros(o.micros(0.99)),
            micros(o.micros(0.999)),
        ]
    };

    let mut side = Table::new(
        &format!("Courier over HTTP vs Redis XADD, {BODY} B, fsync on both (latency per request / round trip)"),
        [
            "Courier case", "msgs/s", "p50", "p99", "p999", "Redis case", "msgs/s", "p50", "p99", "p999", "Courier/Redis",
        ],
    );
    let mut cpu = Table::new(
        "CPU during each case (CPU-seconds per second)",
        ["case", "load generator", "server", "others on the machine"],
    );
    for case in Case::all() {
        let Some(c) = find(courier, case) else {
            continue;
        };
        let r = redis.and_then(|r| find(r, case));
        let mut row = vec![case.courier(), count(c.outcome.rate())];
        row.extend(lat(&c.outcome));
        match (r, case.redis()) {
            (Some(r), Some(name)) => {
                row.push(name);
                row.push(count(r.outcome.rate()));
                row.extend(lat(&r.outcome));
                row.push(format!("{:.2}", c.outcome.rate() / r.outcome.rate()));
            }
            (None, Some(name)) if redis.is_none() => {
                row.extend([
                    name,
                    "skipped".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                ]);
            }
            _ => row.extend([
                "—".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]),
        }
        side.row(row);
        let cores = |m: &Measured| {
            [
                format!("{:.2}", m.client),
                format!("{:.2}", m.server),
                format!("{:.2}", m.others),
            ]
        };
        let [a, b, o] = cores(c);
        cpu.row([format!("Courier: {}", case.courier()), a, b, o]);
        if let (Some(r), Some(name)) = (r, case.redis()) {
            let [a, b, o] = cores(r);
            cpu.row([format!("Redis: {name}"), a, b, o]);
        }
    }
    side.print();
    cpu.print();

    let mut cost = Table::new(
        "Cost of HTTP: the same workload in-process vs over HTTP",
        [
            "case",
            "in-process msgs/s",
            "CPU µs/msg",
            "HTTP msgs/s",
            "CPU µs/msg (server + generator)",
            "HTTP / in-process",
        ],
    );
    let mut goals: Vec<(Goal, String)> = Vec::new();
    for (case, i) in inproc {
        let Some(c) = find(courier, *case) else {
            continue;
        };
        let ratio = c.outcome.rate() / i.outcome.rate();
        // Cores per message/s is CPU-seconds per message.
        let per_msg = |cores: f64, rate: f64| format!("{:.2}", cores / rate * 1e6);
        cost.row([
            case.courier(),
            count(i.outcome.rate()),
            per_msg(i.cores, i.outcome.rate()),
            count(c.outcome.rate()),
            format!(
                "{} ({} + {})",
                per_msg(c.server + c.client, c.outcome.rate()),
                per_msg(c.server, c.outcome.rate()),
                per_msg(c.client, c.outcome.rate())
            ),
            format!("{ratio:.2}"),
        ]);
        goals.push((
            Goal::new(
                format!("HTTP ≥ half of in-process: {}", case.courier()),
                ratio >= 0.5,
            ),
            format!("{ratio:.2}"),
        ));
    }
    cost.print();

    if let Some(c) = find(courier, Case::Batch) {
        goals.insert(
            0,
            (
                Goal::new(
                    "batch publish ≥ 250,000 msgs/s",
                    c.outcome.rate() >= 250_000.0,
                ),
                format!("{} msgs/s", count(c.outcome.rate())),
            ),
        );
    }
    let single64 = Case::Single(64);
    if let (Some(c), Some(r)) = (
        find(courier, single64),
        redis.and_then(|r| find(r, single64)),
    ) {
        goals.insert(
            1,
            (
                Goal::new(
                    "publish, 64 connections ≥ Redis XADD, 64 unpipelined clients",
                    c.outcome.rate() >= r.outcome.rate(),
                ),
                format!(
                    "{} vs {} msgs/s",
                    count(c.outcome.rate()),
                    count(r.outcome.rate())
                ),
            ),
        );
    }
    goals_table(&goals).print();
}
