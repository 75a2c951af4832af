//! Real-time delivery: fan-out to many browsers' connections, and publishing
//! over a WebSocket, each next to a well-known peer in the same run.
//!
//! - **fan-out**: N clients (10,000 by default) follow one topic, over
//!   Server-Sent Events, then over the WebSocket; one message per second is
//!   published (open loop, HTTP) with its intended send time in the body, and
//!   each client records how long after that time it got it. Server memory
//!   per idle connection is the server's resident memory with the N
//!   connections open, minus before they connected, over N. Next to Courier,
//!   the same clients follow an nginx with the nchan module (`nginx` and
//!   `libnginx-mod-nchan`; skipped, with the reason, when not installed).
//! - **publish**: one WebSocket publishes small messages with client-chosen
//!   ids, keeping 256 unanswered publishes in flight (fsync on, the default);
//!   next to it, NATS JetStream async publish with the same window to a
//!   file-storage stream (with `Nats-Msg-Id`, its dedup id).
//!
//! `cargo build --release -p courier -p courier-bench && ./target/release/realtime [--quick] [--clients N] [--secs N] [--only sse|ws|publish] [--dir DIR] [--courier PATH]`
//!
//! Courier is `--courier`, else `$COURIER_BIN`, else `courier` next to this
//! program. nginx, nchan's module and `nats-server` are looked for where
//! Debian installs them; every server is this run's own, on a free port of
//! 127.0.0.1, stopped by its PID at the end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::{Method, StatusCode};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use courier_bench::child::{self, Courier, Spawned};
use courier_bench::machine::{self, CpuMeter};
use courier_bench::openloop::OpenLoop;
use courier_bench::report::{count, goals_table, micros, Goal, Table};
use courier_bench::tally::{histogram, stamped, Tally};
use courier_bench::{http, Options};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The topic (nchan: channel) the fan-out clients follow.
const TOPIC: &str = "rt";
/// The topic (JetStream: subject) of the publish case.
const PUB_TOPIC: &str = "rtpub";
/// Bytes of a message body: the 20-digit stamp, then letters.
const BODY: usize = 64;
/// Unanswered publishes in flight in the publish case (Courier's default
/// `realtime.ws_publishes_in_flight`).
const WINDOW: usize = 256;
/// Clients that connect at once while ramping up.
const RAMP_BATCH: usize = 250;
/// Open files this program asks for (and its servers inherit).
const NOFILE: u64 = 200_000;
/// How long after the last publish the fan-out waits for stragglers.
const DRAIN: Duration = Duration::from_secs(10);
/// nginx worker processes: Courier is one process using both cores.
const NGINX_WORKERS: usize = 2;
/// nchan's shared memory zone (its message store and IPC).
const NCHAN_SHM: &str = "256M";
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
const NGINX: &str = "/usr/sbin/nginx";
const NATS_SERVER: &str = "/usr/sbin/nats-server";
const KIB: f64 = 1024.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Sse,
    Ws,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Sse => "SSE",
            Transport::Ws => "WebSocket",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Broker {
    Courier,
    Nchan,
}

struct Settings {
    options: Options,
    clients: usize,
    /// Fan-out messages: one per second for this many seconds.
    messages: u64,
    publish_time: Duration,
    courier: PathBuf,
    /// nchan's module when nginx and it are installed; else why not.
    nchan: std::result::Result<PathBuf, String>,
    nats: std::result::Result<PathBuf, String>,
}

/// Resident memory of a server (all its processes), from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default)]
struct ServerMemory {
    /// Σ `VmRSS` of the processes.
    rss: u64,
    /// Σ (`RssAnon` + `RssFile`) + the largest `RssShmem`: shared memory
    /// counted once, not once per process that touched it.
    unique: u64,
}

/// One fan-out case's figures.
struct FanOut {
    clients: usize,
    messages: u64,
    delivered: u64,
    unstamped: u64,
    latency: Histogram<u64>,
    before: ServerMemory,
    idle: ServerMemory,
    connect_time: Duration,
    /// Cores the server used while the messages went out.
    server_cpu: f64,
    bench_cpu: f64,
    /// nchan's own account of its shared memory, when it gives one.
    shm_used: Option<String>,
}

impl FanOut {
    fn per_connection(&self) -> f64 {
        self.idle.unique.saturating_sub(self.before.unique) as f64 / self.clients.max(1) as f64
    }
    fn per_connection_rss(&self) -> f64 {
        self.idle.rss.saturating_sub(self.before.rss) as f64 / self.clients.max(1) as f64
    }
    fn expected(&self) -> u64 {
        self.clients as u64 * self.messages
    }
}

/// One publish case's figures.
struct Published {
    answered: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    server_cpu: f64,
}

impl Published {
    fn rate(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs_given = args.iter().any(|a| a == "--secs");
    let options = Options::parse(args)?;
    let settings = settings(options, secs_given)?;
    let nofile = raise_nofile();

    machine::print_header(
        "realtime (fan-out over SSE and WebSocket vs nchan; WebSocket publish vs JetStream)",
        &settings.options.dir,
    )?;
    println!("- courier: {}", settings.courier.display());
    match &settings.nchan {
        Ok(module) => println!(
            "- nchan: {} ({}), {NGINX_WORKERS} worker processes, nchan_shared_memory_size {NCHAN_SHM}",
            nginx_version(),
            module.display()
        ),
        Err(why) => println!("- nchan: skipped: {why}"),
    }
    match &settings.nats {
        Ok(p) => println!("- nats-server: {} ({})", nats_version(p), p.display()),
        Err(why) => println!("- nats-server: skipped: {why}"),
    }
    println!("- open files: {nofile}");
    println!(
        "- fan-out: {} clients per case, 1 message/s of {BODY} B for {} s (open loop, published over HTTP); publish: 1 WebSocket, {WINDOW} publishes in flight, {BODY} B, {:?}\n",
        count(settings.clients as f64),
        settings.messages,
        settings.publish_time
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut fanouts: Vec<(Transport, Broker, std::result::Result<FanOut, String>)> = Vec::new();
    for transport in [Transport::Sse, Transport::Ws] {
        let key = match transport {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        };
        if !settings.options.wants(key) {
            continue;
        }
        for broker in [Broker::Courier, Broker::Nchan] {
            let result = match (broker, &settings.nchan) {
                (Broker::Nchan, Err(why)) => Err(format!("skipped: {why}")),
                _ => {
                    eprintln!("fan-out: {broker:?} over {} …", transport.name());
                    let r = runtime
                        .block_on(fan_out(&settings, broker, transport))
                        .with_context(|| format!("fan-out {broker:?} {}", transport.name()));
                    match r {
                        Ok(f) => {
                            eprintln!(
                                "  {} of {} delivered, p99 {}, {:.1} KiB per connection",
                                count(f.delivered as f64),
                                count(f.expected() as f64),
                                micros(quantile(&f.latency, 0.99)),
                                f.per_connection() / KIB
                            );
                            Ok(f)
                        }
                        Err(e) if broker == Broker::Nchan => {
                            eprintln!("  nchan failed: {e:#}");
                            Err(format!("failed: {e:#}"))
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            fanouts.push((transport, broker, result));
        }
    }

    let mut publishes: Vec<(String, std::result::Result<Published, String>)> = Vec::new();
    if settings.options.wants("publish") {
        eprintln!("publish: Courier over WebSocket …");
        let c = runtime.block_on(courier_publish(&settings, settings.options.fsync))?;
        eprintln!("  {} msgs/s", count(c.rate()));
        publishes.push((
            format!(
                "Courier, 1 WebSocket, {WINDOW} in flight, fsync {}",
                if settings.options.fsync { "on" } else { "OFF" }
            ),
            Ok(c),
        ));
        match &settings.nats {
            Ok(program) => {
                eprintln!("publish: JetStream …");
                let n = runtime
                    .block_on(nats_publish(&settings, program, false))
                    .map_err(|e| format!("failed: {e:#}"));
                if let Ok(n) = &n {
                    eprintln!("  {} msgs/s", count(n.rate()));
                }
                publishes.push((
                    format!("JetStream file storage, async publish, {WINDOW} in flight (server default sync)"),
                    n,
                ));
                eprintln!("publish: JetStream with sync_interval: always …");
                let n = runtime
                    .block_on(nats_publish(&settings, program, true))
                    .map_err(|e| format!("{e:#}"));
                publishes.push((
                    format!("JetStream file storage, {WINDOW} in flight, sync_interval: always"),
                    n,
                ));
            }
            Err(why) => publishes.push(("JetStream".into(), Err(format!("skipped: {why}")))),
        }
        if settings.options.fsync {
            // What the same path does without waiting for the disk: how
            // much of the figure above is the fsync.
            eprintln!("publish: Courier over WebSocket, fsync off …");
            let c = runtime.block_on(courier_publish(&settings, false))?;
            eprintln!("  {} msgs/s", count(c.rate()));
            publishes.push((
                format!("Courier, 1 WebSocket, {WINDOW} in flight, fsync OFF (experiment)"),
                Ok(c),
            ));
        }
    }
    drop(runtime);
    report(&settings, &fanouts, &publishes);
    Ok(())
}

fn settings(options: Options, secs_given: bool) -> Result<Settings> {
    let mut clients = if options.quick { 2_000 } else { 10_000 };
    let mut courier = None;
    let mut rest = options.rest.iter();
    while let Some(arg) = rest.next() {
        let mut value = |what: &str| rest.next().with_context(|| format!("{arg} needs {what}"));
        match arg.as_str() {
            "--clients" => clients = value("a number")?.parse()?,
            "--courier" => courier = Some(PathBuf::from(value("a path")?)),
            other => bail!("unknown argument '{other}'; see docs/benchmarks.md"),
        }
    }
    if clients == 0 || clients > 50_000 {
        bail!("--clients must be between 1 and 50,000");
    }
    let (messages, publish_time) = if secs_given {
        (
            options.case_time.as_secs().max(1),
            options.case_time.min(Duration::from_secs(30)),
        )
    } else if options.quick {
        (5, Duration::from_secs(3))
    } else {
        (20, Duration::from_secs(10))
    };
    if let Some(only) = options.only.as_deref() {
        if !["sse", "ws", "publish"].iter().any(|k| k.starts_with(only)) {
            bail!("--only takes sse, ws or publish");
        }
    }
    Ok(Settings {
        courier: child::courier_program(courier)?,
        nchan: nchan_module(),
        nats: if Path::new(NATS_SERVER).is_file() {
            Ok(PathBuf::from(NATS_SERVER))
        } else {
            Err(format!("no {NATS_SERVER} (apt-get install nats-server)"))
        },
        options,
        clients,
        messages,
        publish_time,
    })
}

/// Raises this process's open-file limit (its servers inherit it); returns
/// the soft limit in force.
fn raise_nofile() -> u64 {
    use rlimit::Resource;
    if Resource::NOFILE.set(NOFILE, NOFILE).is_err() {
        // Not allowed to raise the hard limit: up to it, then.
        let _ = rlimit::increase_nofile_limit(NOFILE);
    }
    Resource::NOFILE.get().map_or(0, |(soft, _)| soft)
}

fn quantile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

// ---------------------------------------------------------------- memory

/// `VmRSS`, `RssAnon`, `RssFile`, `RssShmem` of `pid`, in bytes.
fn rss_parts(pid: u32) -> Result<[u64; 4]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let mut out = [0u64; 4];
    for (i, field) in ["VmRSS:", "RssAnon:", "RssFile:", "RssShmem:"]
        .iter()
        .enumerate()
    {
        if let Some(line) = status.lines().find(|l| l.starts_with(field)) {
            out[i] = line[field.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                * 1024;
        }
    }
    Ok(out)
}

fn server_memory(pids: &[u32]) -> Result<ServerMemory> {
    let mut m = ServerMemory::default();
    let mut shmem = 0;
    for &pid in pids {
        let [rss, anon, file, shm] = rss_parts(pid)?;
        m.rss += rss;
        m.unique += anon + file;
        shmem = shmem.max(shm);
    }
    m.unique += shmem;
    Ok(m)
}

/// The processes whose parent is `parent` (nginx's workers).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

// ---------------------------------------------------------------- servers

/// A server under test for the fan-out, with what the clients need to know.
struct Server {
    /// Dropped first: the server stops before its directory goes.
    process: ServerProcess,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

enum ServerProcess {
    Courier(Courier),
    Nginx(Spawned),
}

impl Server {
    fn pids(&self) -> Vec<u32> {
        match &self.process {
            ServerProcess::Courier(c) => vec![c.pid()],
            ServerProcess::Nginx(n) => {
                let mut pids = vec![n.pid()];
                pids.extend(children_of(n.pid()));
                pids
            }
        }
    }

    fn sse_path(&self) -> String {
        match self.process {
            ServerProcess::Courier(_) => format!("/v1/topics/{TOPIC}/events"),
            ServerProcess::Nginx(_) => format!("/sub?id={TOPIC}"),
        }
    }

    fn ws_path(&self) -> String {
        match self.process {
            ServerProcess::Courier(_) => "/v1/ws".into(),
            ServerProcess::Nginx(_) => format!("/sub?id={TOPIC}"),
        }
    }

    /// The frame a WebSocket client subscribes with, when the protocol has one.
    fn ws_subscribe(&self) -> Option<String> {
        match self.process {
            ServerProcess::Courier(_) => Some(format!(
                r#"{{"op":"subscribe","id":"s","topic":"{TOPIC}","from":"new"}}"#
            )),
            ServerProcess::Nginx(_) => None,
        }
    }

    fn publish_path(&self) -> String {
        match self.process {
            ServerProcess::Courier(_) => format!("/v1/topics/{TOPIC}/messages"),
            ServerProcess::Nginx(_) => format!("/pub?id={TOPIC}"),
        }
    }

    /// Listeners the server counts on the topic.
    async fn listeners(&self, conn: &mut http::Conn) -> Result<usize> {
        match self.process {
            ServerProcess::Courier(_) => {
                let answer = conn
                    .json(
                        Method::GET,
                        &format!("/v1/topics/{TOPIC}/presence"),
                        Bytes::new(),
                        &[StatusCode::OK],
                    )
                    .await?;
                let v: serde_json::Value = serde_json::from_slice(&answer)?;
                Ok(v["listeners"]
                    .as_u64()
                    .context("no listeners in presence")? as usize)
            }
            ServerProcess::Nginx(_) => {
                let (status, answer) = conn
                    .send(Method::GET, "/status", "text/plain", Bytes::new())
                    .await?;
                if status != StatusCode::OK {
                    bail!("nchan_stub_status: {status}");
                }
                stub_status(&answer, "subscribers")
                    .context("no subscribers in nchan_stub_status")?
                    .parse()
                    .context("nchan_stub_status subscribers")
            }
        }
    }

    /// nchan's own account of its shared memory in use.
    async fn shm_used(&self, conn: &mut http::Conn) -> Option<String> {
        if let ServerProcess::Nginx(_) = self.process {
            let (_, answer) = conn
                .send(Method::GET, "/status", "text/plain", Bytes::new())
                .await
                .ok()?;
            stub_status(&answer, "shared memory used")
        } else {
            None
        }
    }
}

/// A field of nchan_stub_status's text (`subscribers: 10000`).
fn stub_status(text: &[u8], field: &str) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

async fn start_courier(s: &Settings, fsync: bool) -> Result<Server> {
    let dir = s.options.temp_dir("courier-bench-realtime-")?;
    // Room for every client from 127.0.0.1, plus the publisher and presence.
    let config = format!(
        "[server]\nmax_connections = {limit}\n\n[realtime]\nmax_connections = {limit}\nmax_connections_per_ip = 0\n",
        limit = s.clients * 2 + 100
    );
    let courier = Courier::start(&s.courier, dir.path(), &config, fsync)?;
    let addr = courier.addr;
    for topic in [TOPIC, PUB_TOPIC] {
        http::Conn::connect(addr)
            .await?
            .json(
                Method::PUT,
                &format!("/v1/topics/{topic}"),
                Bytes::from_static(b"{}"),
                &[StatusCode::CREATED, StatusCode::OK],
            )
            .await?;
    }
    Ok(Server {
        process: ServerProcess::Courier(courier),
        addr,
        _dir: dir,
    })
}

/// nchan's module, if nginx and it are installed.
fn nchan_module() -> std::result::Result<PathBuf, String> {
    if !Path::new(NGINX).is_file() {
        return Err(format!(
            "no {NGINX} (apt-get install nginx libnginx-mod-nchan)"
        ));
    }
    if !Path::new(NCHAN_MODULE).is_file() {
        return Err(format!(
            "no {NCHAN_MODULE} (apt-get install libnginx-mod-nchan)"
        ));
    }
    Ok(PathBuf::from(NCHAN_MODULE))
}

fn nginx_version() -> String {
    Command::new(NGINX)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_else(|_| "nginx".into())
        .replace("nginx version: ", "")
}

fn nats_version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// nginx with nchan: a publisher location, a subscriber location that
/// speaks EventSource and WebSocket, and the stub status.
fn nginx_config(dir: &Path, module: &Path, port: u16, clients: usize) -> String {
    let d = dir.display();
    let connections = clients * 2 + 1024;
    format!(
        r#"load_module {module};
worker_processes {NGINX_WORKERS};
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections {connections};
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    nchan_shared_memory_size {NCHAN_SHM};
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /pub {{
            nchan_publisher;
            nchan_channel_id $arg_id;
            nchan_message_buffer_length 100;
            nchan_message_timeout 1h;
        }}
        location = /sub {{
            nchan_subscriber websocket eventsource;
            nchan_channel_id $arg_id;
        }}
        location = /status {{
            nchan_stub_status;
        }}
    }}
}}
"#,
        module = module.display(),
        nofile = rlimit::Resource::NOFILE
            .get()
            .map_or(NOFILE, |(soft, _)| soft),
    )
}

async fn start_nginx(s: &Settings, module: &Path) -> Result<Server> {
    let dir = s.options.temp_dir("courier-bench-nchan-")?;
    let port = child::free_port()?;
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, nginx_config(dir.path(), module, port, s.clients))?;
    let log = std::fs::File::create(dir.path().join("stderr.log"))?;
    let mut command = Command::new(NGINX);
    command
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let nginx = Spawned::start("nginx", command)?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    if let Err(e) = child::wait_listening(addr, Duration::from_secs(10)) {
        let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        let err = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        return Err(e.context(format!("nginx's log:\n{log}{err}")));
    }
    // The workers are up once they answer.
    let mut conn = http::Conn::connect(addr).await?;
    let (status, _) = conn
        .send(Method::GET, "/status", "text/plain", Bytes::new())
        .await?;
    if status != StatusCode::OK {
        bail!("nchan_stub_status answered {status}");
    }
    Ok(Server {
        process: ServerProcess::Nginx(nginx),
        addr,
        _dir: dir,
    })
}

// ---------------------------------------------------------------- clients

/// What all the clients of one case share.
struct Clients {
    tally: Tally,
    ready: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Clients {
    fn failed(&self, e: anyhow::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .get_or_insert_with(|| format!("{e:#}"));
    }
}

/// Where a stamp is in what a client received: after `"body":"` in
/// Courier's JSON, else (nchan's raw message) at the start.
fn stamp_source(data: &[u8]) -> &[u8] {
    const BODY_FIELD: &[u8] = b"\"body\":\"";
    match memchr::memmem::find(data, BODY_FIELD) {
        Some(i) => &data[i + BODY_FIELD.len()..],
        None => data,
    }
}

/// Reads more of `stream` into `raw`; fails at the end of the stream.
async fn read_more(stream: &mut TcpStream, raw: &mut Vec<u8>) -> Result<()> {
    raw.reserve(2048);
    if stream.read_buf(raw).await? == 0 {
        bail!("the server closed the connection");
    }
    Ok(())
}

/// An event stream's body: de-chunked (both servers send it chunked), then
/// split into lines; each `data:` line goes to the tally.
struct EventStream {
    chunked: bool,
    /// Bytes left of the current chunk.
    left: usize,
    /// A chunk ended; its CRLF is due.
    crlf: bool,
    line: Vec<u8>,
    ended: bool,
}

impl EventStream {
    fn new(chunked: bool) -> EventStream {
        EventStream {
            chunked,
            left: 0,
            crlf: false,
            line: Vec::with_capacity(256),
            ended: false,
        }
    }

    /// Takes what it can of `raw`, leaving an incomplete chunk header.
    fn feed(&mut self, raw: &mut Vec<u8>, tally: &Tally) -> Result<()> {
        if !self.chunked {
            self.payload(raw, tally);
            raw.clear();
            return Ok(());
        }
        let mut pos = 0;
        loop {
            if self.left > 0 {
                let n = self.left.min(raw.len() - pos);
                if n == 0 {
                    break;
                }
                self.payload(&raw[pos..pos + n], tally);
                pos += n;
                self.left -= n;
                self.crlf = self.left == 0;
            } else if self.crlf {
                if raw.len() - pos < 2 {
                    break;
                }
                pos += 2;
                self.crlf = false;
            } else {
                let Some(i) = memchr::memmem::find(&raw[pos..], b"\r\n") else {
                    break;
                };
                let head = std::str::from_utf8(&raw[pos..pos + i])?;
                let size = head.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .with_context(|| format!("bad chunk size '{head}'"))?;
                pos += i + 2;
                if size == 0 {
                    self.ended = true;
                    break;
                }
                self.left = size;
            }
        }
        raw.drain(..pos);
        Ok(())
    }

    fn payload(&mut self, mut bytes: &[u8], tally: &Tally) {
        while let Some(i) = memchr::memchr(b'\n', bytes) {
            self.line.extend_from_slice(&bytes[..i]);
            let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
            if let Some(data) = line.strip_prefix(b"data:") {
                let data = data.strip_prefix(b" ").unwrap_or(data);
                tally.one(stamp_source(data));
            }
            self.line.clear();
            bytes = &bytes[i + 1..];
        }
        self.line.extend_from_slice(bytes);
    }
}

async fn sse_client(addr: SocketAddr, path: String, clients: Arc<Clients>) -> Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\ncache-control: no-cache\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut raw = Vec::with_capacity(1024);
    let (head_len, chunked) = loop {
        read_more(&mut stream, &mut raw).await?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(n) = response.parse(&raw)? {
            if response.code != Some(200) {
                bail!(
                    "{path}: {:?}: {}",
                    response.code,
                    String::from_utf8_lossy(&raw[n..])
                );
            }
            let chunked = response.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding")
                    && memchr::memmem::find(&h.value.to_ascii_lowercase(), b"chunked").is_some()
            });
            break (n, chunked);
        }
    };
    raw.drain(..head_len);
    clients.ready.fetch_add(1, Ordering::Relaxed);
    let mut events = EventStream::new(chunked);
    loop {
        events.feed(&mut raw, &clients.tally)?;
        if events.ended {
            return Ok(());
        }
        read_more(&mut stream, &mut raw).await?;
    }
}

/// Small buffers: ten thousand of these live in this process.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 << 10)
}

async fn ws_client(
    addr: SocketAddr,
    path: String,
    subscribe: Option<String>,
    clients: Arc<Clients>,
) -> Result<()> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}{path}"),
        stream,
        Some(ws_config()),
    )
    .await?;
    if let Some(frame) = subscribe {
        ws.send(Message::text(frame)).await?;
        loop {
            match ws.next().await.context("closed before subscribed")?? {
                Message::Text(t) if t.contains(r#""op":"subscribed""#) => break,
                Message::Text(t) if t.contains(r#""op":"error""#) => bail!("subscribe: {t}"),
                _ => {}
            }
        }
    }
    clients.ready.fetch_add(1, Ordering::Relaxed);
    while let Some(message) = ws.next().await {
        match message? {
            Message::Text(t) => clients.tally.one(stamp_source(t.as_bytes())),
            Message::Binary(b) => clients.tally.one(stamp_source(&b)),
            Message::Close(_) => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- fan-out

async fn fan_out(s: &Settings, broker: Broker, transport: Transport) -> Result<FanOut> {
    let server = match broker {
        Broker::Courier => start_courier(s, s.options.fsync).await?,
        Broker::Nchan => {
            let module = s.nchan.as_ref().map_err(|w| anyhow::anyhow!("{w}"))?;
            start_nginx(s, module).await?
        }
    };
    let mut control = http::Conn::connect(server.addr).await?;
    // Let the server settle after its start before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server_memory(&server.pids())?;

    let anchor = Instant::now();
    let clients = Arc::new(Clients {
        tally: Tally::timed(anchor),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        first_error: Mutex::new(None),
    });
    let mut tasks: Vec<JoinHandle<()>> = Vec::with_capacity(s.clients);
    let connecting = Instant::now();
    let mut progress = Instant::now();
    while tasks.len() < s.clients {
        let batch = RAMP_BATCH.min(s.clients - tasks.len());
        for _ in 0..batch {
            let clients = clients.clone();
            let addr = server.addr;
            tasks.push(match transport {
                Transport::Sse => {
                    let path = server.sse_path();
                    tokio::spawn(async move {
                        if let Err(e) = sse_client(addr, path, clients.clone()).await {
                            clients.failed(e);
                        }
                    })
                }
                Transport::Ws => {
                    let (path, subscribe) = (server.ws_path(), server.ws_subscribe());
                    tokio::spawn(async move {
                        if let Err(e) = ws_client(addr, path, subscribe, clients.clone()).await {
                            clients.failed(e);
                        }
                    })
                }
            });
        }
        let batch_started = Instant::now();
        loop {
            let settled =
                clients.ready.load(Ordering::Relaxed) + clients.failed.load(Ordering::Relaxed);
            if clients.failed.load(Ordering::Relaxed) > 0 {
                let first = clients.first_error.lock().clone().unwrap_or_default();
                abort(&tasks);
                bail!(
                    "{} of {} clients failed to connect; the first: {first}",
                    clients.failed.load(Ordering::Relaxed),
                    tasks.len()
                );
            }
            if settled >= tasks.len() {
                break;
            }
            if batch_started.elapsed() > Duration::from_secs(30) {
                abort(&tasks);
                bail!(
                    "only {settled} of {} clients connected after 30 s",
                    tasks.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if progress.elapsed() >= Duration::from_secs(2) {
            eprintln!("  {} of {} connected", tasks.len(), s.clients);
            progress = Instant::now();
        }
    }
    // The server counts them all as listeners before anything is published.
    let counted = Instant::now();
    loop {
        let n = server.listeners(&mut control).await?;
        if n >= s.clients {
            break;
        }
        if counted.elapsed() > Duration::from_secs(30) {
            abort(&tasks);
            bail!(
                "the server counts {n} of {} listeners after 30 s",
                s.clients
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_time = connecting.elapsed();
    eprintln!(
        "  {} clients connected and subscribed in {:.1} s",
        count(s.clients as f64),
        connect_time.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = server_memory(&server.pids())?;
    let shm_used = server.shm_used(&mut control).await;

    // One message per second, each stamped with its intended send time.
    let pids: Vec<String> = server.pids().iter().map(|p| p.to_string()).collect();
    let mut meter_pids: Vec<&str> = pids.iter().map(String::as_str).collect();
    meter_pids.push("self");
    let meter = CpuMeter::start(&meter_pids)?;
    let schedule = OpenLoop::start(anchor, 1.0, Duration::from_secs(s.messages));
    let path = server.publish_path();
    let publisher = {
        let schedule = schedule.clone();
        let mut conn = http::Conn::connect(server.addr).await?;
        tokio::spawn(async move {
            while let Some(intended) = schedule.next().await {
                schedule.sending(intended);
                let (status, answer) = conn
                    .send(Method::POST, &path, "text/plain", stamped(intended, BODY))
                    .await?;
                if !status.is_success() {
                    bail!("publish: {status}: {}", String::from_utf8_lossy(&answer));
                }
            }
            anyhow::Ok(())
        })
    };
    let expected = s.clients as u64 * s.messages;
    let mut progress = Instant::now();
    let mut published_at = None;
    loop {
        let delivered = clients.tally.handled();
        if delivered >= expected {
            break;
        }
        if publisher.is_finished() && published_at.is_none() {
            published_at = Some(Instant::now());
        }
        if published_at.is_some_and(|t| t.elapsed() > DRAIN) {
            eprintln!(
                "  {delivered} of {expected} delivered {DRAIN:?} after the last publish; going on"
            );
            break;
        }
        if progress.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "  {} of {expected} delivered ({} messages sent)",
                count(delivered as f64),
                schedule.sent_count()
            );
            progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu = meter.stop()?;
    publisher.await.context("the publisher panicked")??;
    let server_cpu = cpu.processes[..pids.len()].iter().sum();
    let bench_cpu = cpu.processes[pids.len()];
    abort(&tasks);
    drop(control);
    drop(server);
    Ok(FanOut {
        clients: s.clients,
        messages: s.messages,
        delivered: clients.tally.handled(),
        unstamped: clients.tally.unstamped(),
        latency: clients.tally.latency(),
        before,
        idle,
        connect_time,
        server_cpu,
        bench_cpu,
        shm_used,
    })
}

fn abort(tasks: &[JoinHandle<()>]) {
    for t in tasks {
        t.abort();
    }
}

// ---------------------------------------------------------------- publish

/// `ref` of a `published` frame: `"<n>-<sent ns>"`; returns the sent time.
fn sent_of(frame: &str) -> Option<u64> {
    let start = frame.find(r#""ref":""#)? + 7;
    let end = start + frame[start..].find('"')?;
    frame[start..end].split_once('-')?.1.parse().ok()
}

async fn courier_publish(s: &Settings, fsync: bool) -> Result<Published> {
    let server = start_courier(s, fsync).await?;
    let stream = TcpStream::connect(server.addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{}/v1/ws", server.addr), stream)
        .await
        .context("WebSocket handshake")?;
    let (mut sink, mut frames) = ws.split();
    let window = Arc::new(Semaphore::new(WINDOW));
    let anchor = Instant::now();
    let end = anchor + s.publish_time;
    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let meter = CpuMeter::start(&[&server.pids()[0].to_string()])?;
    let writer = {
        let (window, sent, done, wake) = (window.clone(), sent.clone(), done.clone(), wake.clone());
        let body = String::from_utf8(courier_bench::body(BODY).to_vec())?;
        tokio::spawn(async move {
            let mut i = 0usize;
            let frame = |i: usize| {
                let ns = anchor.elapsed().as_nanos();
                Message::text(format!(
                    r#"{{"op":"publish","ref":"{i}-{ns}","topic":"{PUB_TOPIC}","id":"m-{i}","body":"{body}"}}"#
                ))
            };
            'outer: loop {
                window.acquire().await?.forget();
                if Instant::now() >= end {
                    break;
                }
                sink.feed(frame(i)).await?;
                i += 1;
                while let Ok(permit) = window.try_acquire() {
                    permit.forget();
                    if Instant::now() >= end {
                        break 'outer;
                    }
                    sink.feed(frame(i)).await?;
                    i += 1;
                }
                sink.flush().await?;
                sent.store(i, Ordering::Release);
            }
            sink.flush().await?;
            sent.store(i, Ordering::Release);
            done.store(true, Ordering::Release);
            wake.notify_one();
            anyhow::Ok(sink)
        })
    };
    let mut latency = histogram();
    let mut answered = 0usize;
    let mut last = anchor;
    loop {
        if done.load(Ordering::Acquire) && answered >= sent.load(Ordering::Acquire) {
            break;
        }
        tokio::select! {
            frame = frames.next() => {
                let frame = frame.context("the server closed the WebSocket")??;
                let Message::Text(t) = frame else { continue };
                if t.contains(r#""op":"published""#) {
                    let sent_ns = sent_of(&t).with_context(|| format!("no ref in {t}"))?;
                    let now = anchor.elapsed().as_nanos() as u64;
                    latency.saturating_record((now.saturating_sub(sent_ns) / 1_000).max(1));
                    answered += 1;
                    last = Instant::now();
                    window.add_permits(1);
                } else if t.contains(r#""op":"error""#) {
                    bail!("publish refused: {t}");
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => bail!("no answer for 30 s ({answered} answered)"),
        }
    }
    let cpu = meter.stop()?;
    let sink = writer.await.context("the writer panicked")??;
    drop(sink);
    drop(server);
    Ok(Published {
        answered: answered as u64,
        elapsed: last.duration_since(anchor),
        latency,
        server_cpu: cpu.processes[0],
    })
}

async fn nats_publish(s: &Settings, program: &Path, sync_always: bool) -> Result<Published> {
    use async_nats::jetstream::{self, stream};
    let dir = s.options.temp_dir("courier-bench-nats-")?;
    let port = child::free_port()?;
    let log_path = dir.path().join("nats.log");
    let log = std::fs::File::create(&log_path)?;
    let mut command = Command::new(program);
    if sync_always {
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\", sync_interval: always }}\n",
                dir.path().join("js").display()
            ),
        )?;
        command.arg("-c").arg(conf);
    } else {
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("js"));
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut server = Spawned::start("nats-server", command)?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = server.child_mut().try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "not available: nats-server refused the config: {}",
                log.trim()
            );
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("nats-server did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = async_nats::connect(addr.to_string()).await?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "RTBENCH".into(),
        subjects: vec![PUB_TOPIC.into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("create stream: {e}"))?;
    let payload = courier_bench::body(BODY);
    let meter = CpuMeter::start(&[&server.pid().to_string()])?;
    let anchor = Instant::now();
    let end = anchor + s.publish_time;
    let mut in_flight = FuturesUnordered::new();
    let mut latency = histogram();
    let mut answered = 0u64;
    let mut last = anchor;
    let mut i = 0u64;
    loop {
        while in_flight.len() < WINDOW && Instant::now() < end {
            let sent = Instant::now();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("m-{i}").as_str());
            i += 1;
            let ack = js
                .publish_with_headers(PUB_TOPIC, headers, payload.clone())
                .await
                .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
            in_flight.push(async move { ack.await.map(|_| sent) });
        }
        match in_flight.next().await {
            Some(Ok(sent)) => {
                latency.saturating_record(sent.elapsed().as_micros().max(1) as u64);
                answered += 1;
                last = Instant::now();
            }
            Some(Err(e)) => bail!("publish ack: {e}"),
            None => break,
        }
    }
    let cpu = meter.stop()?;
    drop(js);
    server.stop(Duration::from_secs(10));
    Ok(Published {
        answered,
        elapsed: last.duration_since(anchor),
        latency,
        server_cpu: cpu.processes[0],
    })
}

// ---------------------------------------------------------------- report

fn report(
    s: &Settings,
    fanouts: &[(Transport, Broker, std::result::Result<FanOut, String>)],
    publishes: &[(String, std::result::Result<Published, String>)],
) {
    let mut goals: Vec<(Goal, String)> = Vec::new();
    let full = s.clients >= 10_000;
    for transport in [Transport::Sse, Transport::Ws] {
        let rows: Vec<_> = fanouts.iter().filter(|(t, _, _)| *t == transport).collect();
        if rows.is_empty() {
            continue;
        }
        let mut table = Table::new(
            &format!(
                "Fan-out over {}: {} clients, 1 message/s for {} s",
                transport.name(),
                count(s.clients as f64),
                s.messages
            ),
            [
                "server",
                "delivered",
                "p50",
                "p99",
                "max",
                "memory / idle connection",
                "Σ VmRSS Δ / connection",
                "server RSS before → idle",
                "server CPU (cores)",
                "connect + subscribe",
            ],
        );
        for (_, broker, result) in &rows {
            let name = match broker {
                Broker::Courier => "Courier".to_string(),
                Broker::Nchan => format!("nginx + nchan ({NGINX_WORKERS} workers)"),
            };
            match result {
                Ok(f) => {
                    let mut memory = format!("{:.1} KiB", f.per_connection() / KIB);
                    if let Some(shm) = &f.shm_used {
                        memory.push_str(&format!(" (shm used {shm})"));
                    }
                    table.row([
                        name,
                        format!(
                            "{} of {}{}",
                            count(f.delivered as f64),
                            count(f.expected() as f64),
                            if f.unstamped > 0 {
                                format!(" ({} unstamped)", f.unstamped)
                            } else {
                                String::new()
                            }
                        ),
                        micros(quantile(&f.latency, 0.5)),
                        micros(quantile(&f.latency, 0.99)),
                        micros(f.latency.max()),
                        memory,
                        format!("{:.1} KiB", f.per_connection_rss() / KIB),
                        format!(
                            "{:.1} → {:.1} MiB",
                            f.before.unique as f64 / KIB / KIB,
                            f.idle.unique as f64 / KIB / KIB
                        ),
                        format!("{:.2} (bench {:.2})", f.server_cpu, f.bench_cpu),
                        format!("{:.1} s", f.connect_time.as_secs_f64()),
                    ]);
                }
                Err(why) => table.row([name, why.clone()]),
            }
        }
        table.print();
        let courier = rows.iter().find_map(|(_, b, r)| match (b, r) {
            (Broker::Courier, Ok(f)) => Some(f),
            _ => None,
        });
        let nchan = rows.iter().find_map(|(_, b, r)| match (b, r) {
            (Broker::Nchan, Ok(f)) => Some(f),
            _ => None,
        });
        if let Some(c) = courier {
            let t = transport.name();
            let judge = |text: String, met: bool| {
                if full {
                    Goal::new(text, met)
                } else {
                    Goal::not_applicable(text)
                }
            };
            let p99 = quantile(&c.latency, 0.99);
            let complete = c.delivered >= c.expected();
            goals.push((
                judge(
                    format!("{t} fan-out to 10,000: p99 < 100 ms, every message delivered"),
                    p99 < 100_000 && complete,
                ),
                format!(
                    "{} ({} of {})",
                    micros(p99),
                    count(c.delivered as f64),
                    count(c.expected() as f64)
                ),
            ));
            goals.push((
                judge(
                    format!("{t}: < 20 KiB server memory per idle connection"),
                    c.per_connection() < 20.0 * KIB,
                ),
                format!("{:.1} KiB", c.per_connection() / KIB),
            ));
            if let Some(n) = nchan {
                let np99 = quantile(&n.latency, 0.99);
                goals.push((
                    judge(
                        format!("{t}: p99 no worse than nchan's"),
                        p99 <= np99.max(1) * 11 / 10,
                    ),
                    format!("{} vs {}", micros(p99), micros(np99)),
                ));
                goals.push((
                    judge(
                        format!("{t}: memory per connection no worse than nchan's"),
                        c.per_connection() <= n.per_connection() * 1.1,
                    ),
                    format!(
                        "{:.1} KiB vs {:.1} KiB",
                        c.per_connection() / KIB,
                        n.per_connection() / KIB
                    ),
                ));
            }
        }
    }
    if s.clients > 0
        && fanouts
            .iter()
            .any(|(_, b, r)| *b == Broker::Nchan && r.is_ok())
    {
        println!(
            "\nLatency is from each message's intended send time (open loop, 1 message/s, published over HTTP; Courier's publish includes its fsync) to the client that read it, over all clients × messages. \
Memory per idle connection: server resident memory with the clients connected and subscribed minus before, over the clients; for nginx, the master and its {NGINX_WORKERS} workers: Σ(RssAnon + RssFile) + the largest RssShmem (the shared zone counted once; `Σ VmRSS` counts it once per worker). nchan keeps subscribers in each worker's own memory and messages and channel state in its shared zone ({NCHAN_SHM} reserved, only the pages touched are resident)."
        );
    }

    if !publishes.is_empty() {
        let mut table = Table::new(
            &format!(
                "Publish over one connection, {WINDOW} in flight, {BODY} B messages with ids, {:?}",
                s.publish_time
            ),
            [
                "system",
                "msgs/s",
                "p50",
                "p99",
                "max",
                "answered",
                "server CPU (cores)",
            ],
        );
        for (name, result) in publishes {
            match result {
                Ok(p) => table.row([
                    name.clone(),
                    count(p.rate()),
                    micros(quantile(&p.latency, 0.5)),
                    micros(quantile(&p.latency, 0.99)),
                    micros(p.latency.max()),
                    count(p.answered as f64),
                    format!("{:.2}", p.server_cpu),
                ]),
                Err(why) => table.row([name.clone(), why.clone()]),
            }
        }
        table.print();
        println!(
            "\nCourier answers a publish once it is fsynced (group commit). JetStream's file store acknowledges once the message is written to the OS, not fsynced: it syncs in the background (newer servers: `sync_interval`, default 2 min; `always` fsyncs each write)."
        );
        let courier = publishes.first().and_then(|(_, r)| r.as_ref().ok());
        let nats = publishes.get(1).and_then(|(_, r)| r.as_ref().ok());
        if let (Some(c), Some(n)) = (courier, nats) {
            goals.push((
                Goal::new(
                    "WebSocket publish ≥ 2 × JetStream async publish (256 in flight)",
                    c.rate() >= 2.0 * n.rate(),
                ),
                format!(
                    "{} vs {} msgs/s ({:.2}×)",
                    count(c.rate()),
                    count(n.rate()),
                    c.rate() / n.rate().max(1e-9)
                ),
            ));
        }
    }
    if !goals.is_empty() {
        goals_table(&goals).print();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_bench::tally::stamp_of;

    #[test]
    fn event_stream_dechunks_and_finds_stamps() {
        let tally = Tally::timed(Instant::now());
        let mut events = EventStream::new(true);
        let event = format!(
            "id: 1\nevent: message\ndata: {{\"seq\":1,\"body\":\"{}\"}}\n\n",
            String::from_utf8(stamped(5, BODY).to_vec()).unwrap()
        );
        let chunked = format!("c\r\nretry: 3000\n\r\n{:x}\r\n{event}\r\n", event.len());
        let mut raw = Vec::new();
        // Byte by byte: every split point of chunk headers and lines.
        for b in chunked.as_bytes() {
            raw.push(*b);
            events.feed(&mut raw, &tally).unwrap();
        }
        assert_eq!(tally.handled(), 1);
        assert_eq!(tally.unstamped(), 0);
        raw.extend_from_slice(b"0\r\n\r\n");
        events.feed(&mut raw, &tally).unwrap();
        assert!(events.ended);
    }

    #[test]
    fn stamps_and_refs() {
        let raw = stamped(42, BODY);
        assert_eq!(stamp_of(stamp_source(&raw)), Some(42));
        assert_eq!(
            sent_of(r#"{"op":"published","ref":"7-123","seq":1}"#),
            Some(123)
        );
        assert_eq!(
            stub_status(b"channels: 1\nsubscribers: 10000\n", "subscribers").as_deref(),
            Some("10000")
        );
    }
}
