//! Runs the built `courier` binary: the server as a child process, and the
//! client commands against it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_client::{Client, Publish};
use courier_core::TopicConfig;

const BIN: &str = env!("CARGO_BIN_EXE_courier");
const DEADLINE: Duration = Duration::from_secs(30);

/// A `courier serve` child process; killed if the test fails before stopping it.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data_dir: &Path) -> Self {
        Self::start_with_env(data_dir, &[])
    }

    fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("COURIER_LISTEN")
            .env_remove("COURIER_DATA_DIR")
            .env_remove("COURIER_RATE_LIMIT")
            .env_remove("COURIER_RATE_BURST")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn courier serve");
        // The one line `serve` prints on stdout names the address it bound.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("courier listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        Self { child, url }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit on its own and returns its exit code.
    fn wait_exit(&mut self) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited, not killed by a signal");
            }
            assert!(
                start.elapsed() < DEADLINE,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        self.sigterm();
        assert_eq!(self.wait_exit(), 0);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn courier(url: &str, args: &[&str]) -> Output {
    courier_stdin(url, args, None)
}

fn courier_stdin(url: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("COURIER_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn help_everywhere() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["topic", "create", "--help"],
        vec!["sub", "create", "--help"],
        vec!["publish", "--help"],
        vec!["pull", "--help"],
        vec!["tail", "--help"],
        vec!["dlq", "replay", "--help"],
        vec!["ack", "--help"],
        vec!["nack", "--help"],
        vec!["extend", "--help"],
        vec!["sub", "update", "--help"],
        vec!["subscription", "update", "--help"],
        vec!["capabilities", "--help"],
    ] {
        let out = courier("http://127.0.0.1:1", &args);
        let text = ok(&out);
        assert!(text.contains("Usage"), "{args:?}");
    }
    assert!(ok(&courier("http://127.0.0.1:1", &["--help"])).contains("Exit codes"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(
        courier("http://127.0.0.1:1", &["bogus"]).status.code(),
        Some(2)
    );
    assert_eq!(
        courier("http://127.0.0.1:1", &["pull"]).status.code(),
        Some(2)
    );
    assert_eq!(
        courier("http://127.0.0.1:1", &["publish", "t", "--delay", "soon"])
            .status
            .code(),
        Some(2)
    );
    // Tokens are required, extend needs --by, and an update needs something to change.
    for args in [
        vec!["ack", "work"],
        vec!["extend", "work", "1-1"],
        vec!["sub", "update", "work"],
    ] {
        assert_eq!(
            courier("http://127.0.0.1:1", &args).status.code(),
            Some(2),
            "{args:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten_address = 'x'\n").unwrap();
    let out = courier(
        "http://127.0.0.1:1",
        &["serve", "--config", bad.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}

#[test]
fn unreachable_broker_exits_5_and_names_the_url() {
    // Port 1 on loopback: nothing listens there.
    let out = courier("http://127.0.0.1:1", &["stats"]);
    assert_eq!(out.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot reach the broker at http://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--url") && stderr.contains("COURIER_URL"),
        "{stderr}"
    );
}

/// `--json` errors are one object on stderr: `{"error":{"code","message","exit_code"}}`.
fn json_error(out: &Output) -> serde_json::Value {
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let error = &doc["error"];
    assert!(error["code"].is_string(), "{doc}");
    assert!(error["message"].is_string(), "{doc}");
    assert_eq!(
        error["exit_code"].as_i64(),
        out.status.code().map(i64::from),
        "{doc}"
    );
    error.clone()
}

#[test]
fn json_errors_are_one_object_on_stderr() {
    let unreachable = json_error(&courier("http://127.0.0.1:1", &["--json", "stats"]));
    assert_eq!(unreachable["code"], "unreachable");
    assert!(unreachable["message"]
        .as_str()
        .unwrap()
        .contains("http://127.0.0.1:1"));
    // Usage errors too, wherever --json stands.
    for args in [
        vec!["--json", "pull"],
        vec!["pull", "work", "--wait", "2", "--json"],
        vec!["--json", "bogus"],
    ] {
        let error = json_error(&courier("http://127.0.0.1:1", &args));
        assert_eq!(error["code"], "usage", "{args:?}");
        assert_eq!(error["exit_code"], 2, "{args:?}");
    }
}

#[test]
fn bare_number_durations_are_refused() {
    for args in [
        vec!["pull", "work", "--wait", "2"],
        vec!["publish", "t", "x", "--delay", "500"],
        vec!["extend", "work", "1-1", "--by", "30"],
        vec![
            "sub",
            "create",
            "s",
            "--topic",
            "t",
            "--ack-deadline",
            "60000",
        ],
    ] {
        let out = courier("http://127.0.0.1:1", &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("give a unit: "), "{args:?}: {stderr}");
    }
    let stderr = String::from_utf8_lossy(
        &courier("http://127.0.0.1:1", &["pull", "work", "--wait", "2"]).stderr,
    )
    .into_owned();
    assert!(stderr.contains("give a unit: 2s or 2ms"), "{stderr}");
    // With a unit (or a plain 0) the flag parses; only the broker is missing.
    for args in [
        vec!["pull", "work", "--wait", "2s"],
        vec!["pull", "work", "--wait", "500ms"],
        vec!["nack", "work", "1-1", "--delay", "0"],
    ] {
        let out = courier("http://127.0.0.1:1", &args);
        assert_eq!(out.status.code(), Some(5), "{args:?}");
    }
}

/// The help of every command that takes positional arguments describes each of them,
/// and durations show their units.
#[test]
fn help_describes_positionals_and_units() {
    for args in [
        vec!["topic", "create"],
        vec!["topic", "show"],
        vec!["topic", "delete"],
        vec!["sub", "create"],
        vec!["sub", "show"],
        vec!["sub", "update"],
        vec!["sub", "delete"],
        vec!["publish"],
        vec!["pull"],
        vec!["tail"],
        vec!["ack"],
        vec!["nack"],
        vec!["extend"],
        vec!["dlq", "list"],
        vec!["dlq", "replay"],
    ] {
        let mut help_args = args.clone();
        help_args.push("--help");
        let text = ok(&courier("http://127.0.0.1:1", &help_args));
        let section: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "Arguments:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect();
        assert!(!section.is_empty(), "{args:?} lists no arguments:\n{text}");
        for line in section
            .iter()
            .filter(|l| l.trim_start().starts_with(['<', '[']))
        {
            let described = line
                .split_once(['>', ']'])
                .map(|(_, rest)| rest.trim_start_matches(['.', ']', '>']).trim());
            assert!(
                described.is_some_and(|d| !d.is_empty()),
                "{args:?}: undescribed argument {line:?}"
            );
        }
    }
    let pull = ok(&courier("http://127.0.0.1:1", &["pull", "--help"]));
    assert!(pull.contains("--wait [<DURATION>]"), "{pull}");
    assert!(pull.contains("with a unit"), "{pull}");
    // serve takes no client flags.
    let serve = ok(&courier("http://127.0.0.1:1", &["serve", "--help"]));
    assert!(!serve.contains("--url"), "{serve}");
    assert!(!serve.contains("--json"), "{serve}");
    assert!(serve.contains("--listen"), "{serve}");
}

#[test]
fn rate_limited_exits_5() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &[("COURIER_RATE_LIMIT", "1"), ("COURIER_RATE_BURST", "1")],
    );
    // One request a second (`capabilities` makes one request): the first goes through, and one of the next few (the
    // very next, unless this machine takes a second to start a process) is refused.
    ok(&courier(&server.url, &["capabilities"]));
    let start = Instant::now();
    let refused = loop {
        let out = courier(&server.url, &["capabilities"]);
        if !out.status.success() {
            break out;
        }
        assert!(start.elapsed() < DEADLINE, "never rate limited");
    };
    assert_eq!(refused.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("rate_limited"), "{stderr}");
    assert!(stderr.contains("retry after 1 s"), "{stderr}");
    server.stop();
}

#[test]
fn client_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = server.url.clone();

    assert!(ok(&courier(&url, &["topic", "create", "orders"])).contains("created topic orders"));
    assert!(ok(&courier(&url, &["topic", "create", "orders"])).contains("already exists"));
    let out = courier(&url, &["topic", "create", "orders", "--dedup-window", "1s"]);
    assert_eq!(out.status.code(), Some(4), "conflict");
    assert_eq!(
        courier(&url, &["topic", "show", "nope"]).status.code(),
        Some(3)
    );
    let error = json_error(&courier(&url, &["--json", "topic", "show", "nope"]));
    assert_eq!(error["exit_code"], 3);
    assert!(
        error["code"].as_str().unwrap().contains("not_found"),
        "{error}"
    );
    assert_eq!(
        courier(&url, &["topic", "create", "a b"]).status.code(),
        Some(2)
    );

    ok(&courier(
        &url,
        &[
            "sub",
            "create",
            "work",
            "--topic",
            "orders",
            "--max-attempts",
            "3",
            "--ack-deadline",
            "10s",
        ],
    ));
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&courier(&url, &["--json", "sub", "show", "work"]))).unwrap();
    assert_eq!(shown["config"]["retry"]["max_attempts"], 3);
    assert_eq!(shown["config"]["ack_deadline"], 10_000);

    // Update some settings; the others, and the rest of the retry policy, stay.
    let updated = ok(&courier(
        &url,
        &[
            "subscription",
            "update",
            "work",
            "--ack-deadline",
            "20s",
            "--max-attempts",
            "4",
        ],
    ));
    assert!(updated.contains("updated subscription work"), "{updated}");
    assert!(updated.contains("ack deadline:  20000 ms"), "{updated}");
    let shown: serde_json::Value = serde_json::from_str(&ok(&courier(
        &url,
        &["--json", "sub", "update", "work", "--max-attempts", "3"],
    )))
    .unwrap();
    assert_eq!(shown["config"]["retry"]["max_attempts"], 3);
    assert_eq!(shown["config"]["retry"]["initial_backoff"], 100);
    assert_eq!(shown["config"]["ack_deadline"], 20_000);
    assert_eq!(
        courier(&url, &["sub", "update", "nope", "--max-in-flight", "5"])
            .status
            .code(),
        Some(3)
    );
    assert_eq!(
        courier(&url, &["sub", "update", "work", "--max-in-flight", "0"])
            .status
            .code(),
        Some(2),
        "an invalid value is a usage error"
    );

    let caps = ok(&courier(&url, &["capabilities"]));
    assert!(caps.contains("engine:             embedded"), "{caps}");
    assert!(caps.contains("ordering_keys"), "{caps}");
    let caps: serde_json::Value =
        serde_json::from_str(&ok(&courier(&url, &["--json", "capabilities"]))).unwrap();
    assert!(caps["features"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("subscription_update")));

    // BODY argument, stdin, and a file with one message per line.
    let r = json_lines(&ok(&courier(
        &url,
        &[
            "--json", "publish", "orders", "first", "--key", "k", "--header", "trace=t1", "--id",
            "one",
        ],
    )));
    assert_eq!(r[0]["id"], "one");
    ok(&courier_stdin(
        &url,
        &["publish", "orders"],
        Some(b"from stdin"),
    ));
    let file = dir.path().join("lines.txt");
    std::fs::write(&file, "a\nb\nc\n").unwrap();
    let receipts = json_lines(&ok(&courier(
        &url,
        &[
            "--json",
            "publish",
            "orders",
            "--file",
            file.to_str().unwrap(),
        ],
    )));
    assert_eq!(receipts.len(), 3);

    let topics = ok(&courier(&url, &["topic", "list"]));
    assert!(topics.contains("orders"));

    // Pull everything and ack it.
    let pulled: Vec<serde_json::Value> = serde_json::from_str(&ok(&courier(
        &url,
        &[
            "--json", "pull", "work", "--max", "10", "--wait", "2s", "--ack",
        ],
    )))
    .unwrap();
    let bodies: Vec<_> = pulled.iter().map(|d| d["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, vec!["first", "from stdin", "a", "b", "c"]);
    assert_eq!(pulled[0]["headers"]["trace"], "t1");
    assert_eq!(pulled[0]["key"], "k");
    // `--ack` settled them by token: the tokens settle nothing any more.
    let first_token = pulled[0]["token"].as_str().unwrap().to_owned();
    let out = courier(&url, &["ack", "work", &first_token]);
    assert_eq!(out.status.code(), Some(1), "nothing took effect");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{first_token} not_found\n")
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nothing was acked: 1 not_found"),
        "{stderr}"
    );

    // The human pull line shows the token; extend and ack take it.
    ok(&courier(&url, &["publish", "orders", "held"]));
    let line = ok(&courier(&url, &["pull", "work", "--wait", "5s"]));
    let token = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("token="))
        .unwrap_or_else(|| panic!("no token in {line:?}"))
        .to_owned();
    assert!(line.starts_with(&format!("#6 token={token} id=")), "{line}");
    let extended = ok(&courier(&url, &["extend", "work", &token, "--by", "1m"]));
    assert_eq!(extended, format!("{token} ok\n"));
    // Partly effective: exit 0, each outcome printed, in order.
    let results: serde_json::Value = serde_json::from_str(&ok(&courier(
        &url,
        &["--json", "ack", "work", &token, "12345-1", "garbage"],
    )))
    .unwrap();
    assert_eq!(
        results,
        serde_json::json!([
            { "token": token, "outcome": "ok" },
            { "token": "12345-1", "outcome": "not_found" },
            { "token": "garbage", "outcome": "not_found" },
        ])
    );

    // tail --count stops by itself.
    ok(&courier(&url, &["publish", "orders", "x1"]));
    ok(&courier(&url, &["publish", "orders", "x2"]));
    let tailed = json_lines(&ok(&courier(
        &url,
        &["--json", "tail", "work", "--count", "2", "--ack"],
    )));
    assert_eq!(tailed.len(), 2);

    // nack until dead, then the dead-letter commands.
    ok(&courier(&url, &["publish", "orders", "doomed"]));
    let mut previous: Option<String> = None;
    for attempt in 1..=3 {
        let d: Vec<serde_json::Value> = serde_json::from_str(&ok(&courier(
            &url,
            &["--json", "pull", "work", "--wait", "5s"],
        )))
        .unwrap();
        assert_eq!(d.len(), 1, "attempt {attempt}");
        assert_eq!(d[0]["attempt"], attempt);
        let token = d[0]["token"].as_str().unwrap().to_owned();
        // The previous attempt's token lost its lease: nothing is nacked, exit 1.
        if let Some(stale) = &previous {
            let out = courier(&url, &["nack", "work", stale, "--delay", "0"]);
            assert_eq!(out.status.code(), Some(1), "attempt {attempt}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("{stale} lease_lost\n")
            );
            assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was nacked"));
        }
        let nacked = ok(&courier(
            &url,
            &["nack", "work", &token, "--delay", "0", "--error", "nope"],
        ));
        assert_eq!(nacked, format!("{token} ok\n"));
        previous = Some(token);
    }
    let start = Instant::now();
    let dead = loop {
        let dead: Vec<serde_json::Value> =
            serde_json::from_str(&ok(&courier(&url, &["--json", "dlq", "list", "work"]))).unwrap();
        if !dead.is_empty() {
            break dead;
        }
        assert!(start.elapsed() < DEADLINE, "never dead-lettered");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(dead[0]["body"], "doomed");
    assert!(ok(&courier(&url, &["dlq", "replay", "work"])).contains("replayed 1"));
    let back: Vec<serde_json::Value> = serde_json::from_str(&ok(&courier(
        &url,
        &["--json", "pull", "work", "--wait", "5s", "--ack"],
    )))
    .unwrap();
    assert_eq!(back[0]["body"], "doomed");

    let stats: serde_json::Value =
        serde_json::from_str(&ok(&courier(&url, &["--json", "stats"]))).unwrap();
    assert!(stats["published_total"].as_u64().unwrap() >= 9);
    assert!(ok(&courier(&url, &["sub", "list"])).contains("work"));
    assert_eq!(
        courier(&url, &["topic", "delete", "orders"]).status.code(),
        Some(4)
    );
    // --force takes the subscription along; --json says what went.
    let deleted: serde_json::Value = serde_json::from_str(&ok(&courier(
        &url,
        &["--json", "topic", "delete", "orders", "--force"],
    )))
    .unwrap();
    assert_eq!(
        deleted,
        serde_json::json!({ "deleted": "topic", "name": "orders" })
    );
    assert_eq!(
        courier(&url, &["ack", "work", "1-1"]).status.code(),
        Some(3)
    );
    assert_eq!(
        courier(&url, &["topic", "show", "orders"]).status.code(),
        Some(3)
    );

    server.stop();
}

/// SIGTERM while several publishers are busy: the server exits 0 and every
/// publish it acknowledged is there after a restart.
#[test]
fn sigterm_during_publish_burst_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = Client::new(&server.url).unwrap();
    runtime
        .block_on(client.create_topic("burst", &TopicConfig::default()))
        .unwrap();

    let acknowledged: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let client = client.clone();
            let acknowledged = acknowledged.clone();
            runtime.spawn(async move {
                for i in 0.. {
                    let options = Publish {
                        id: Some(format!("p{p}-{i}")),
                        ..Publish::default()
                    };
                    match client.publish("burst", format!("{p}:{i}"), &options).await {
                        Ok(r) => {
                            acknowledged.lock().unwrap().insert(r.seq, r.id);
                        }
                        // Refused or cut off: not acknowledged, so it may or may not be stored.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();

    // Let the burst get going, then pull the plug mid-stream.
    let start = Instant::now();
    while acknowledged.lock().unwrap().len() < 200 {
        assert!(
            start.elapsed() < DEADLINE,
            "publishes are not getting through"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.sigterm();
    assert_eq!(server.wait_exit(), 0, "graceful shutdown exits 0");
    for p in publishers {
        runtime.block_on(p).unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 200);

    let server = Server::start(dir.path());
    let client = Client::new(&server.url).unwrap();
    let mut stored = BTreeMap::new();
    let mut from = 0;
    loop {
        let page = runtime
            .block_on(client.browse("burst", from, 1000))
            .unwrap();
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for m in page {
            stored.insert(m.seq, m.id);
        }
    }
    for (seq, id) in &acknowledged {
        assert_eq!(
            stored.get(seq),
            Some(id),
            "acknowledged seq {seq} ({id}) was lost"
        );
    }
    drop(runtime);
    server.stop();
}

/// SIGTERM while pushes are in flight: the server exits 0, the pushes in
/// flight finish within the grace, and after a restart every message reaches
/// the consumer; with one attempt allowed, none is dead-lettered by the
/// shutdown.
#[test]
fn sigterm_during_push_burst_delivers_everything_after_restart() {
    use courier_client::wire::InstanceRegistration;
    use courier_core::{PushConfig, RetryPolicy, SubscriptionConfig};
    use std::collections::BTreeSet;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The consumer: 50 ms per message, remembering every message id it took.
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let consumer_url = runtime.block_on(async {
        let seen = seen.clone();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let id = headers["ce-id"].to_str().unwrap().to_string();
                seen.lock().unwrap().insert(id);
                axum::http::StatusCode::NO_CONTENT
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    });

    let dir = tempfile::tempdir().unwrap();
    let setup = |server: &Server| {
        let client = Client::new(&server.url).unwrap();
        let registration = InstanceRegistration {
            url: consumer_url.clone(),
            id: Some("consumer".into()),
            weight: None,
        };
        runtime
            .block_on(client.register_instance("consumer", &registration))
            .unwrap();
        client
    };
    let mut server = Server::start(dir.path());
    let client = setup(&server);
    runtime
        .block_on(client.create_topic("burst", &TopicConfig::default()))
        .unwrap();
    let config = SubscriptionConfig {
        push: Some(PushConfig {
            service: "consumer".into(),
            max_concurrent: 8,
            ..PushConfig::default()
        }),
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        ..SubscriptionConfig::for_topic("burst")
    };
    runtime
        .block_on(client.create_subscription("pushed", &config))
        .unwrap();
    let batch = (0..300)
        .map(|i| courier_client::wire::PublishMessage {
            id: Some(format!("m{i}")),
            body: Some(format!("{i}")),
            ..Default::default()
        })
        .collect();
    runtime
        .block_on(client.publish_batch("burst", batch))
        .unwrap();

    let start = Instant::now();
    while seen.lock().unwrap().len() < 20 {
        assert!(start.elapsed() < DEADLINE, "pushes are not getting through");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.sigterm();
    assert_eq!(server.wait_exit(), 0, "graceful shutdown exits 0");
    let before_restart = seen.lock().unwrap().len();
    assert!(before_restart < 300, "the burst was cut by the shutdown");

    // The consumer registers again, as it would at its next heartbeat.
    let server = Server::start(dir.path());
    let client = setup(&server);
    let start = Instant::now();
    loop {
        let info = runtime.block_on(client.subscription("pushed")).unwrap();
        if info.backlog == 0 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "backlog left: {}", info.backlog);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        300,
        "every message reached the consumer"
    );
    let letters = runtime.block_on(client.dead_letters("pushed", 10)).unwrap();
    assert!(letters.is_empty(), "the shutdown dead-lettered {letters:?}");
    drop(runtime);
    server.stop();
}

/// The service commands, push flags, release and reject from the command line.
#[test]
fn service_and_push_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = server.url.clone();

    let out = ok(&courier(
        &url,
        &["service", "register", "hooks", "http://127.0.0.1:9"],
    ));
    assert!(out.contains("registered 127.0.0.1:9 in hooks"), "{out}");
    let out = ok(&courier(
        &url,
        &[
            "service",
            "define",
            "hooks",
            "--balance",
            "least_request",
            "--health-path",
            "/up",
        ],
    ));
    assert!(out.contains("defined"), "{out}");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&courier(&url, &["--json", "service", "show", "hooks"]))).unwrap();
    assert_eq!(shown["config"]["balance"], "least_request");
    assert_eq!(shown["config"]["health_check"]["path"], "/up");
    assert_eq!(shown["stats"]["instances"][0]["id"], "127.0.0.1:9");
    assert!(ok(&courier(&url, &["service", "list"])).contains("hooks"));
    let bad = courier(&url, &["service", "register", "hooks", "ftp://x"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a bad URL is the caller's error"
    );

    ok(&courier(&url, &["topic", "create", "t"]));
    ok(&courier(
        &url,
        &[
            "sub",
            "create",
            "p",
            "--topic",
            "t",
            "--push-service",
            "hooks",
            "--push-path",
            "/in",
            "--push-timeout",
            "5s",
        ],
    ));
    let sub: serde_json::Value =
        serde_json::from_str(&ok(&courier(&url, &["--json", "sub", "show", "p"]))).unwrap();
    assert_eq!(sub["config"]["push"]["path"], "/in");
    assert_eq!(sub["config"]["push"]["timeout"], 5000);
    assert!(ok(&courier(&url, &["stats"])).contains("push p -> hooks"));
    ok(&courier(&url, &["sub", "update", "p", "--no-push"]));
    let sub: serde_json::Value =
        serde_json::from_str(&ok(&courier(&url, &["--json", "sub", "show", "p"]))).unwrap();
    assert!(sub["config"].get("push").is_none(), "{sub}");

    // Release and reject, by the tokens pull prints.
    ok(&courier(&url, &["publish", "t", "one"]));
    ok(&courier(&url, &["publish", "t", "two"]));
    let pulled: serde_json::Value =
        serde_json::from_str(&ok(&courier(&url, &["--json", "pull", "p", "--max", "2"]))).unwrap();
    let token = |i: usize| pulled[i]["token"].as_str().unwrap().to_string();
    assert!(ok(&courier(&url, &["release", "p", &token(0)])).contains("ok"));
    let again = courier(&url, &["release", "p", &token(0)]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "a stale token releases nothing"
    );
    ok(&courier(
        &url,
        &["reject", "p", &token(1), "--error", "bad input"],
    ));
    let start = Instant::now();
    loop {
        let letters = ok(&courier(&url, &["dlq", "list", "p"]));
        if letters.contains("two") {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the rejected message never reached the dead letters"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(&courier(
        &url,
        &["service", "deregister", "hooks", "127.0.0.1:9"],
    ));
    ok(&courier(&url, &["service", "delete", "hooks"]));
    server.stop();
}
