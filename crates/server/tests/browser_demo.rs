//! The demo page in real headless Chromium: it follows a topic over
//! Server-Sent Events, then over a WebSocket (through /js/courier.js), shows messages published over
//! the HTTP API, survives a server restart on the same port, and shows every
//! message exactly once.
//!
//! Driven by clients/browser-test/demo.mjs (playwright-core, Debian's
//! chromium). Skipped, with the reason printed, when Chromium, node or
//! playwright-core is missing, unless `COURIER_BROWSER_TEST` is set (as
//! .ci/run does): then a missing piece fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::realtime::{create_topic, publish};
use common::TestServer;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser part; a healthy run takes a few seconds.
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/browser-test")
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("no node on PATH".into());
    }
    if !script_dir().join("node_modules/playwright-core").exists() {
        return Some("playwright-core is not installed (npm ci in clients/browser-test)".into());
    }
    None
}

/// The next JSON line of the script that satisfies `want`.
async fn expect(
    lines: &mut Lines<BufReader<ChildStdout>>,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let line = tokio::time::timeout(BROWSER_DEADLINE, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("read the script's output")
            .unwrap_or_else(|| panic!("the script ended before {what}"));
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("not JSON from the script: {line}"));
        assert!(
            value.get("error").is_none() && value.get("pageerror").is_none(),
            "{value}"
        );
        if want(&value) {
            return value;
        }
    }
}

fn seqs_are(n: u64) -> impl Fn(&Value) -> bool {
    move |v| {
        v.get("seqs")
            .and_then(Value::as_array)
            .is_some_and(|s| s.len() as u64 >= n)
    }
}

#[tokio::test]
async fn demo_page_shows_every_message_once_across_a_restart() {
    if let Some(why) = missing() {
        if std::env::var_os("COURIER_BROWSER_TEST").is_some() {
            panic!("COURIER_BROWSER_TEST is set but the browser test cannot run: {why}");
        }
        println!("skipped: {why}");
        return;
    }
    // One after the other: two browsers at once would crowd two cores.
    for transport in ["sse", "ws"] {
        across_a_restart(transport).await;
    }
}

/// The page follows a topic over `transport`; the server restarts between
/// two rounds of publishes.
async fn across_a_restart(transport: &str) {
    let s = TestServer::start_with(|c| c.realtime.retry = Duration::from_millis(300)).await;
    create_topic(&s.url, "demo", json!({})).await;
    let url = format!("{}/demo?topic=demo&transport={transport}&from=new", s.url);
    let mut child = Command::new("node")
        .arg(script_dir().join("demo.mjs"))
        .arg(&url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    expect(&mut lines, "the page to subscribe", |v| {
        v["status"] == "open"
    })
    .await;

    let bodies: Vec<String> = (1..=5).map(|i| format!("before restart {i}")).collect();
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    assert_eq!(
        publish(&s.url, "demo", None, &[], &bodies).await,
        vec![1, 2, 3, 4, 5]
    );
    expect(&mut lines, "five messages on the page", seqs_are(5)).await;

    let s = s.restart_on_same_port().await;
    let bodies: Vec<String> = (6..=10).map(|i| format!("after restart {i}")).collect();
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    assert_eq!(
        publish(&s.url, "demo", None, &[], &bodies).await,
        vec![6, 7, 8, 9, 10]
    );
    expect(&mut lines, "ten messages on the page", seqs_are(10)).await;

    // A moment more: a duplicate would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"done\n").await.unwrap();
    let last = expect(&mut lines, "the final report", |v| v["done"] == true).await;
    assert_eq!(
        last["seqs"],
        json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        "every message exactly once, in order"
    );
    let status = tokio::time::timeout(BROWSER_DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
