//! Long polls against a real server: an answer at once when data is there,
//! an empty answer at the deadline with the cursor unchanged, a wake-up on
//! publish, filters moving the cursor, and the reset past retention.

mod common;

use std::time::{Duration, Instant};

use common::realtime::{create_topic, get_json, publish};
use common::{eventually, TestServer};
use serde_json::{json, Value};

async fn poll(s: &TestServer, topic: &str, query: &str) -> Value {
    let (status, v) = get_json(&format!("{}/v1/topics/{topic}/poll?{query}", s.url)).await;
    assert_eq!(status, 200, "{v}");
    v
}

fn seqs(v: &Value) -> Vec<u64> {
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn answers_at_once_when_data_is_there() {
    let s = TestServer::start().await;
    create_topic(&s.url, "t", json!({})).await;
    publish(&s.url, "t", None, &[], &["a", "b", "c"]).await;
    let started = Instant::now();
    let v = poll(&s, "t", "cursor=1&wait_ms=30000").await;
    assert!(started.elapsed() < Duration::from_secs(15), "did not wait");
    assert_eq!(seqs(&v), vec![1, 2, 3]);
    assert_eq!(v["next_cursor"], 4);
    assert_eq!(v["reset"], Value::Null);
    assert_eq!(v["messages"][0]["body"], "a");
    // max bounds the answer; the cursor goes on from there.
    let v = poll(&s, "t", "cursor=1&max=2").await;
    assert_eq!((seqs(&v), v["next_cursor"].clone()), (vec![1, 2], json!(3)));
    let v = poll(&s, "t", "cursor=3&wait_ms=0").await;
    assert_eq!(
        seqs(&v),
        vec![3],
        "wait_ms=0 still returns data that is there"
    );
    let (status, v) = get_json(&format!("{}/v1/topics/t/poll?max=0", s.url)).await;
    assert_eq!((status, v["code"].clone()), (400, json!("invalid_query")));
    let (status, _) = get_json(&format!("{}/v1/topics/t/poll?bogus=1", s.url)).await;
    assert_eq!(status, 400);
    let (status, _) = get_json(&format!("{}/v1/topics/nope/poll", s.url)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn times_out_empty_with_the_cursor_unchanged() {
    let s = TestServer::start().await;
    create_topic(&s.url, "t", json!({})).await;
    publish(&s.url, "t", None, &[], &["a"]).await;
    let v = poll(&s, "t", "cursor=2&wait_ms=100").await;
    assert_eq!(v, json!({"messages": [], "next_cursor": 2, "reset": null}));
    // Without a cursor the poll starts at the topic's end and says where that is.
    let v = poll(&s, "t", "wait_ms=50").await;
    assert_eq!(v, json!({"messages": [], "next_cursor": 2, "reset": null}));
}

#[tokio::test]
async fn wakes_up_on_publish() {
    let s = TestServer::start().await;
    create_topic(&s.url, "t", json!({})).await;
    let url = format!("{}/v1/topics/t/poll?cursor=1&wait_ms=30000", s.url);
    let started = Instant::now();
    let waiting = tokio::spawn(async move { get_json(&url).await });
    publish(&s.url, "t", None, &[], &["late"]).await;
    let (status, v) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(seqs(&v), vec![1]);
    assert_eq!(v["messages"][0]["body"], "late");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "woken, not timed out"
    );
}

#[tokio::test]
async fn filters_move_the_cursor_past_what_they_skip() {
    let s = TestServer::start().await;
    create_topic(&s.url, "t", json!({})).await;
    publish(&s.url, "t", Some("a"), &[], &["1"]).await;
    publish(&s.url, "t", Some("b"), &[("user", "42")], &["2"]).await;
    publish(&s.url, "t", Some("a"), &[("user", "42")], &["3"]).await;
    publish(&s.url, "t", Some("b"), &[], &["4"]).await;
    let v = poll(&s, "t", "cursor=1&key=a&header.user=42&wait_ms=0").await;
    assert_eq!(seqs(&v), vec![3]);
    let v = poll(&s, "t", "cursor=4&key=a&wait_ms=50").await;
    assert_eq!(seqs(&v), Vec::<u64>::new());
    assert_eq!(v["next_cursor"], 5, "past the filtered-out message");
}

#[tokio::test]
async fn a_cursor_removed_by_retention_gets_a_reset() {
    let s = TestServer::start_with(|c| c.engine.set_embedded("retention_interval", 20)).await;
    create_topic(&s.url, "t", json!({"retention": {"max_messages": 2}})).await;
    publish(&s.url, "t", None, &[], &["1", "2", "3", "4", "5", "6"]).await;
    let first = eventually("retention trims the topic", || async {
        let (_, info) = get_json(&format!("{}/v1/topics/t", s.url)).await;
        let first = info["first_seq"].as_u64().unwrap();
        (first > 1).then_some(first)
    })
    .await;
    let v = poll(&s, "t", "cursor=1").await;
    assert_eq!(
        v["reset"],
        json!({"lost": first - 1, "up_to": first - 1, "next": first})
    );
    assert_eq!(seqs(&v), (first..=6).collect::<Vec<_>>());
    assert_eq!(v["next_cursor"], 7);
}

#[tokio::test]
async fn cursor_zero_on_an_empty_topic_waits_only_its_wait() {
    let s = TestServer::start().await;
    create_topic(&s.url, "empty", json!({})).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        poll(&s, "empty", "cursor=0&wait_ms=50&key=k"),
    )
    .await
    .expect("a poll of an empty topic answers after its wait");
    assert_eq!(answer["messages"], json!([]));
    assert_eq!(answer["next_cursor"], 1);
}
