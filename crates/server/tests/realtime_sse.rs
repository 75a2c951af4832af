//! Server-Sent Events against a real server: headers, keep-alive, resume
//! with Last-Event-ID (no loss, no duplicate), the reset event past
//! retention, filters, a restart mid-stream, and the per-client limit.

mod common;

use std::time::Duration;

use common::realtime::{create_topic, get_json, publish, Sse};
use common::{eventually, TestServer};
use serde_json::json;

fn events(s: &TestServer, topic: &str, query: &str) -> String {
    format!("{}/v1/topics/{topic}/events?{query}", s.url)
}

#[tokio::test]
async fn headers_retry_hint_and_keepalive() {
    let s = TestServer::start_with(|c| {
        c.realtime.keepalive_interval = Duration::from_millis(50);
        c.realtime.retry = Duration::from_millis(1234);
    })
    .await;
    create_topic(&s.url, "t", json!({})).await;
    let mut sse = Sse::open(&events(&s, "t", ""), None).await;
    let h = &sse.response_headers;
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert!(!h.contains_key("content-encoding"), "never compressed");
    let first = sse.frame().await.unwrap();
    assert_eq!(first.retry, Some(1234));
    assert_eq!(first.id, None);
    // Nothing is published: the next frame can only be the keep-alive.
    let idle = sse.frame().await.unwrap();
    assert_eq!(idle.comments, vec!["keep-alive".to_owned()]);
    assert_eq!((idle.id, idle.data), (None, None));
    // A message after a keep-alive still arrives, with its sequence as id.
    publish(&s.url, "t", None, &[], &["hello"]).await;
    let e = sse.event().await;
    assert_eq!(e.event.as_deref(), Some("message"));
    assert_eq!(e.id.as_deref(), Some("1"));
    let v = e.json();
    assert_eq!(v["body"], "hello");
    assert_eq!(v["seq"], 1);
    assert!(v["id"].is_string() && v["published_at"].is_u64());
}

#[tokio::test]
async fn resume_with_last_event_id_loses_and_repeats_nothing() {
    let s = TestServer::start().await;
    create_topic(&s.url, "t", json!({})).await;
    publish(&s.url, "t", None, &[], &["1", "2", "3", "4", "5"]).await;
    let mut sse = Sse::open(&events(&s, "t", "from=earliest"), None).await;
    assert_eq!(sse.seqs(3).await, vec![1, 2, 3]);
    drop(sse); // disconnect after seeing 3
    publish(&s.url, "t", None, &[], &["6", "7"]).await;
    let mut sse = Sse::open(&events(&s, "t", "from=earliest"), Some(3)).await;
    assert_eq!(
        sse.seqs(4).await,
        vec![4, 5, 6, 7],
        "Last-Event-ID wins over from"
    );
    publish(&s.url, "t", None, &[], &["8"]).await;
    assert_eq!(sse.seqs(1).await, vec![8], "then live");
    // The query parameter does the same for clients that cannot set headers.
    let mut sse = Sse::open(&events(&s, "t", "last_event_id=6"), None).await;
    assert_eq!(sse.seqs(2).await, vec![7, 8]);
    // Explicit starts: a sequence, and max_events ends the stream.
    let mut sse = Sse::open(&events(&s, "t", "from=seq:5&max_events=2"), None).await;
    assert_eq!(sse.seqs(2).await, vec![5, 6]);
    assert!(sse.frame().await.is_none(), "ended after max_events");
    let mut sse = Sse::open(&events(&s, "t", "from=time:0&max_events=1"), None).await;
    assert_eq!(sse.seqs(1).await, vec![1]);
    // Bad positions are refused before the stream starts.
    let bad = Sse::request(&events(&s, "t", "from=later"), None, None).await;
    assert_eq!(bad.status(), 400);
    let bad = Sse::request(&events(&s, "t", ""), None, None).await;
    assert_eq!(bad.status(), 200);
    let missing = Sse::request(&events(&s, "nope", ""), None, None).await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn resume_past_retention_starts_with_a_reset() {
    let s = TestServer::start_with(|c| {
        c.engine.set_embedded("retention_interval", 20);
    })
    .await;
    create_topic(&s.url, "t", json!({"retention": {"max_messages": 3}})).await;
    let bodies: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    publish(&s.url, "t", None, &[], &bodies).await;
    let first = eventually("retention trims the topic", || async {
        let (_, info) = get_json(&format!("{}/v1/topics/t", s.url)).await;
        let first = info["first_seq"].as_u64().unwrap();
        (first > 2).then_some(first)
    })
    .await;
    let mut sse = Sse::open(&events(&s, "t", ""), Some(1)).await;
    let reset = sse.event().await;
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert_eq!(reset.id, None, "control events carry no id");
    assert_eq!(
        reset.json(),
        json!({"lost": first - 2, "up_to": first - 1, "next": first})
    );
    let rest = sse.seqs((11 - first) as usize).await;
    assert_eq!(rest, (first..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn key_and_header_filters() {
    let s = TestServer::start().await;
    create_topic(&s.url, "n", json!({})).await;
    let q = "from=earliest&key=user-42&header.kind=mention&header.lang=en";
    let mut sse = Sse::open(&events(&s, "n", q), None).await;
    let mention = [("kind", "mention"), ("lang", "en")];
    publish(&s.url, "n", Some("user-7"), &mention, &["not mine"]).await; // 1
    publish(
        &s.url,
        "n",
        Some("user-42"),
        &[("kind", "like"), ("lang", "en")],
        &["x"],
    )
    .await; // 2
    publish(&s.url, "n", Some("user-42"), &[("kind", "mention")], &["x"]).await; // 3
    publish(&s.url, "n", Some("user-42"), &mention, &["yes"]).await; // 4
    publish(&s.url, "n", None, &mention, &["no key"]).await; // 5
    publish(&s.url, "n", Some("user-42"), &mention, &["again"]).await; // 6
    let e = sse.event().await;
    assert_eq!((e.seq(), e.json()["body"].clone()), (4, json!("yes")));
    assert_eq!(e.json()["key"], "user-42");
    assert_eq!(sse.seqs(1).await, vec![6]);

    // Presence counts the listener under its filter, and /metrics per topic.
    let (status, p) = get_json(&format!("{}/v1/topics/n/presence", s.url)).await;
    assert_eq!(status, 200);
    assert_eq!(
        p,
        json!({"topic": "n", "listeners": 1, "filters": [
            {"filter": "header.kind=mention&header.lang=en&key=user-42", "listeners": 1}
        ]})
    );
    let metrics = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("courier_realtime_listeners{topic=\"n\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("courier_realtime_events_sent_total{transport=\"sse\"}"));
    assert!(metrics.contains("courier_realtime_connections_opened_total{transport=\"sse\"}"));
    drop(sse);
    eventually("the listener is uncounted", || async {
        let (_, p) = get_json(&format!("{}/v1/topics/n/presence", s.url)).await;
        (p["listeners"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn restart_mid_stream_resumes_on_the_same_data() {
    let s = TestServer::start().await;
    create_topic(&s.url, "t", json!({})).await;
    publish(&s.url, "t", None, &[], &["1", "2", "3"]).await;
    let mut sse = Sse::open(&events(&s, "t", "from=earliest"), None).await;
    assert_eq!(sse.seqs(3).await, vec![1, 2, 3]);
    let s = s.restart().await;
    // The stream ended cleanly at shutdown.
    loop {
        match sse.frame().await {
            None => break,
            Some(f) => assert!(f.data.is_none(), "nothing more was published: {f:?}"),
        }
    }
    publish(&s.url, "t", None, &[], &["4", "5"]).await;
    let mut sse = Sse::open(&events(&s, "t", ""), Some(3)).await;
    assert_eq!(sse.seqs(2).await, vec![4, 5]);
}

#[tokio::test]
async fn per_client_connection_limit() {
    let s = TestServer::start_with(|c| c.realtime.max_connections_per_ip = 2).await;
    create_topic(&s.url, "t", json!({})).await;
    let a = Sse::open(&events(&s, "t", ""), None).await;
    let _b = Sse::open(&events(&s, "t", "key=k"), None).await;
    let refused = Sse::request(&events(&s, "t", ""), None, None).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "too_many_connections");
    drop(a);
    eventually("a place frees up when a stream ends", || async {
        let r = Sse::request(&events(&s, "t", ""), None, None).await;
        (r.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn total_connection_limit() {
    let s = TestServer::start_with(|c| c.realtime.max_connections = 1).await;
    create_topic(&s.url, "t", json!({})).await;
    let _a = Sse::open(&events(&s, "t", ""), None).await;
    let refused = Sse::request(&events(&s, "t", ""), None, None).await;
    assert_eq!(refused.status(), 503);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "realtime_full");
}
