//! The reactions page in real headless Chromium, on the whole system: the
//! `courier` binary, both services and the page server, seeded as the demo
//! seeds them. Bob likes Alice's post on his page and Alice's page shows the
//! notification live (through Courier's /js/courier.js); then, in sync mode
//! with the notification service down, Bob's next click shows him the error.
//!
//! Driven by clients/browser-test/reactions.mjs (playwright-core, Debian's
//! chromium). Skipped, with the reason printed, when Chromium, node or
//! playwright-core is missing, unless `COURIER_BROWSER_TEST` is set: then a
//! missing piece fails the test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reactions_demo::page::{self, PageConfig};
use reactions_demo::{seed, Options, System};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The longest the script may go without a word; a healthy run takes a few seconds.
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

fn script_dir() -> PathBuf {
    workspace().join("clients/browser-test")
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
        println!("{line}");
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

fn step(name: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["step"] == name
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    http.get(url)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_shows_on_the_authors_page_and_a_sync_failure_on_the_users() {
    if let Some(why) = missing() {
        if std::env::var_os("COURIER_BROWSER_TEST").is_some() {
            panic!("COURIER_BROWSER_TEST is set but the browser test cannot run: {why}");
        }
        println!("skipped: {why}");
        return;
    }

    // The page server's port first: Courier must allow the page's origin.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}", listener.local_addr().unwrap());
    let system = System::start(Options {
        courier_bin: Some(reactions_demo::courier_binary().expect("a courier binary")),
        allowed_origins: vec![page_url.clone()],
        ..Options::default()
    })
    .await
    .expect("the system starts");
    let seeded = seed::seed(&system.reactions_url).await.expect("seed");
    let app = page::router(PageConfig {
        reactions_url: system.reactions_url.clone(),
        notifications_url: system.notifications_url.clone(),
        courier_url: system.courier_url.clone(),
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut child = Command::new("node")
        .arg(script_dir().join("reactions.mjs"))
        .arg(&page_url)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    expect(&mut lines, "both pages to open and go live", step("open")).await;
    let reacted = expect(&mut lines, "Bob's like", step("reacted")).await;
    assert_eq!(reacted["errors"], 0, "{reacted}");

    let notified = expect(
        &mut lines,
        "the notification on Alice's page",
        step("notified"),
    )
    .await;
    assert_eq!(
        notified["text"], "Bob reacted 👍 to your post",
        "{notified}"
    );
    assert_eq!(notified["unread"], 1, "{notified}");
    assert_eq!(notified["live"], "live", "{notified}");

    expect(
        &mut lines,
        "sync mode and the service down",
        step("sync_and_down"),
    )
    .await;
    let failed = expect(&mut lines, "the error on Bob's page", step("failed")).await;
    assert_eq!(failed["code"], "notification_failed", "{failed}");
    let toast = failed["toast"].as_str().unwrap_or_default();
    assert!(toast.starts_with("502 notification_failed"), "{failed}");
    assert_eq!(failed["errors"], 1, "{failed}");
    assert_eq!(failed["pressed"], false, "{failed}");
    assert_eq!(
        failed["alice_entries"], 1,
        "nothing more on Alice's page: {failed}"
    );
    expect(&mut lines, "the end", |v| v["done"] == true).await;
    let status = tokio::time::timeout(BROWSER_DEADLINE, child.wait())
        .await
        .expect("the script ends")
        .unwrap();
    assert!(status.success());

    // What the services hold agrees with the pages: the like stored and
    // notified once, the failed love undone.
    let http = reqwest::Client::new();
    let alice = &seeded.users[0];
    let post = &seeded.posts[0];
    let p = get(&http, format!("{}/v1/posts/{post}", system.reactions_url)).await;
    assert_eq!(p["author_id"], alice.as_str(), "{p}");
    assert_eq!(
        (p["counts"]["like"].as_i64(), p["counts"]["love"].as_i64()),
        (Some(1), Some(0)),
        "{p}"
    );
    let n = get(
        &http,
        format!(
            "{}/v1/users/{alice}/notifications",
            system.notifications_url
        ),
    )
    .await;
    let list = n["notifications"].as_array().expect("a list");
    assert_eq!(list.len(), 1, "{n}");
    assert_eq!(
        (list[0]["actor_name"].as_str(), list[0]["kind"].as_str()),
        (Some("Bob"), Some("like"))
    );

    server.abort();
    system.stop().await.unwrap();
}
