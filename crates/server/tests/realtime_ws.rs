//! The WebSocket protocol against a real server: subscribe and receive,
//! resume with `after` (no loss, no duplicate), the reset past retention,
//! filters, auth denials, concurrent publishes answered by ref, slow-client
//! eviction (close 4008), a restart mid-stream (close 1001, then resume),
//! consume and ack with lease tokens, and the JS client and demo page routes.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::realtime::{create_topic, get_json, publish};
use common::{eventually, TestServer, DEADLINE};
use courier_api::realtime::{Audience, Claims, Grant, Grants};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking the JSON frames.
struct Client {
    ws: Ws,
}

impl Client {
    async fn open(s: &TestServer) -> Client {
        Self::open_with(s, None).await.expect("upgrade succeeds")
    }

    /// Opens `/v1/ws` with an optional bearer token; `Err(status)` when refused.
    async fn open_with(s: &TestServer, bearer: Option<&str>) -> Result<Client, u16> {
        let mut request = format!("ws://{}/v1/ws", s.addr)
            .into_client_request()
            .unwrap();
        if let Some(token) = bearer {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, response)) => {
                assert_eq!(response.status(), 101);
                Ok(Client { ws })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// The next JSON frame; panics on a close.
    async fn frame(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .expect("a readable frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Reads until the close frame: its code, and the JSON frames before it.
    async fn until_close(&mut self) -> (u16, String, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let message = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame in time");
            match message {
                Some(Ok(Message::Text(text))) => before.push(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string(), before)
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    async fn subscribe(&mut self, frame: Value) {
        let id = frame["id"].clone();
        self.send(frame).await;
        let answer = self.frame().await;
        assert_eq!(answer, json!({"op": "subscribed", "sub": id}), "{answer}");
    }

    /// The next `n` message frames of `sub`: their sequences.
    async fn seqs(&mut self, sub: &str, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while out.len() < n {
            let f = self.frame().await;
            assert_eq!(f["op"], "message", "{f}");
            assert_eq!(f["sub"], sub, "{f}");
            assert_eq!(f["seq"], f["message"]["seq"]);
            out.push(f["seq"].as_u64().unwrap());
        }
        out
    }
}

#[tokio::test]
async fn subscribe_receive_and_unsubscribe() {
    let s = TestServer::start().await;
    create_topic(&s.url, "a", json!({})).await;
    create_topic(&s.url, "b", json!({})).await;
    let mut c = Client::open(&s).await;
    c.subscribe(json!({"op": "subscribe", "id": "A", "topic": "a"}))
        .await;
    c.subscribe(json!({"op": "subscribe", "id": "B", "topic": "b", "from": "earliest"}))
        .await;
    publish(&s.url, "a", Some("k"), &[("h", "v")], &["hello"]).await;
    let f = c.frame().await;
    assert_eq!(f["op"], "message");
    assert_eq!(f["sub"], "A");
    assert_eq!(f["seq"], 1);
    assert_eq!(f["message"]["body"], "hello");
    assert_eq!(f["message"]["key"], "k");
    assert_eq!(f["message"]["headers"], json!({"h": "v"}));
    publish(&s.url, "b", None, &[], &["x", "y"]).await;
    assert_eq!(c.seqs("B", 2).await, vec![1, 2]);

    // Presence counts each subscription of the connection.
    let (_, p) = get_json(&format!("{}/v1/topics/a/presence", s.url)).await;
    assert_eq!(p["listeners"], 1);

    // Ids are unique per connection; unknown topics and bad starts are errors.
    c.send(json!({"op": "subscribe", "id": "A", "topic": "b"}))
        .await;
    let e = c.frame().await;
    assert_eq!(
        (e["op"].as_str(), e["sub"].as_str()),
        (Some("error"), Some("A"))
    );
    assert_eq!(e["code"], "invalid_field");
    c.send(json!({"op": "subscribe", "id": "C", "topic": "nope"}))
        .await;
    assert_eq!(c.frame().await["code"], "topic_not_found");
    c.send(json!({"op": "subscribe", "id": "D", "topic": "a", "from": "later"}))
        .await;
    assert_eq!(c.frame().await["code"], "invalid_field");
    c.send(json!({"op": "launch"})).await;
    assert_eq!(c.frame().await["code"], "invalid_field");
    c.send(Value::String("{not json".into())).await;
    c.ws.send(Message::text("{not json")).await.unwrap();
    let e = c.frame().await;
    assert_eq!(e["op"], "error");
    let e = c.frame().await;
    assert_eq!(e["code"], "malformed_json");

    c.send(json!({"op": "unsubscribe", "id": "A"})).await;
    assert_eq!(c.frame().await, json!({"op": "unsubscribed", "sub": "A"}));
    c.send(json!({"op": "ping", "ref": "p"})).await;
    assert_eq!(c.frame().await, json!({"op": "pong", "ref": "p"}));
    publish(&s.url, "a", None, &[], &["unseen"]).await;
    publish(&s.url, "b", None, &[], &["z"]).await;
    assert_eq!(c.seqs("B", 1).await, vec![3], "A is gone, B goes on");
    eventually("A's listener is uncounted", || async {
        let (_, p) = get_json(&format!("{}/v1/topics/a/presence", s.url)).await;
        (p["listeners"] == 0).then_some(())
    })
    .await;

    // A plain GET is no upgrade.
    let plain = reqwest::get(format!("{}/v1/ws", s.url)).await.unwrap();
    assert_eq!(plain.status(), 400);
    let problem: Value = plain.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_header");
}

#[tokio::test]
async fn resume_with_after_loses_and_repeats_nothing() {
    let s = TestServer::start().await;
    create_topic(&s.url, "t", json!({})).await;
    publish(&s.url, "t", None, &[], &["1", "2", "3", "4", "5"]).await;
    let mut c = Client::open(&s).await;
    c.subscribe(json!({"op": "subscribe", "id": "s", "topic": "t", "from": "earliest"}))
        .await;
    assert_eq!(c.seqs("s", 3).await, vec![1, 2, 3]);
    drop(c); // disconnect after seeing 3
    publish(&s.url, "t", None, &[], &["6", "7"]).await;
    let mut c = Client::open(&s).await;
    c.subscribe(
        json!({"op": "subscribe", "id": "s", "topic": "t", "from": "earliest", "after": 3}),
    )
    .await;
    assert_eq!(
        c.seqs("s", 4).await,
        vec![4, 5, 6, 7],
        "after wins over from"
    );
    publish(&s.url, "t", None, &[], &["8"]).await;
    assert_eq!(c.seqs("s", 1).await, vec![8], "then live");
    c.subscribe(json!({"op": "subscribe", "id": "t", "topic": "t", "from": "seq:7"}))
        .await;
    assert_eq!(c.seqs("t", 2).await, vec![7, 8]);
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
    let mut c = Client::open(&s).await;
    c.subscribe(json!({"op": "subscribe", "id": "r", "topic": "t", "after": 1}))
        .await;
    let reset = c.frame().await;
    assert_eq!(
        reset,
        json!({"op": "reset", "sub": "r", "lost": first - 2, "up_to": first - 1, "next": first})
    );
    let rest = c.seqs("r", (11 - first) as usize).await;
    assert_eq!(rest, (first..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn key_and_header_filters() {
    let s = TestServer::start().await;
    create_topic(&s.url, "n", json!({})).await;
    let mut c = Client::open(&s).await;
    c.subscribe(
        json!({"op": "subscribe", "id": "f", "topic": "n", "key": "user-42",
        "headers": {"kind": "mention", "lang": "en"}}),
    )
    .await;
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
    publish(&s.url, "n", Some("user-42"), &mention, &["yes"]).await; // 3
    publish(&s.url, "n", None, &mention, &["no key"]).await; // 4
    publish(&s.url, "n", Some("user-42"), &mention, &["again"]).await; // 5
    let f = c.frame().await;
    assert_eq!(
        (f["seq"].as_u64(), f["message"]["body"].as_str()),
        (Some(3), Some("yes"))
    );
    assert_eq!(c.seqs("f", 1).await, vec![5]);
    let (_, p) = get_json(&format!("{}/v1/topics/n/presence", s.url)).await;
    assert_eq!(
        p["filters"],
        json!([{"filter": "header.kind=mention&header.lang=en&key=user-42", "listeners": 1}])
    );
}

#[tokio::test]
async fn many_concurrent_publishes_are_answered_by_ref() {
    let s = TestServer::start_with(|c| c.realtime.ws_publishes_in_flight = 64).await;
    create_topic(&s.url, "t", json!({})).await;
    let mut c = Client::open(&s).await;
    c.subscribe(json!({"op": "subscribe", "id": "s", "topic": "t"}))
        .await;
    const N: usize = 300;
    for i in 0..N {
        c.send(
            json!({"op": "publish", "ref": format!("r{i}"), "topic": "t",
            "body": format!("m{i}"), "headers": {"n": i.to_string()}}),
        )
        .await;
    }
    // Answers come as publishes complete, each naming its ref; the
    // subscription sees every message once.
    let mut seq_of_ref = HashMap::new();
    let mut seen = Vec::new();
    while seq_of_ref.len() < N || seen.len() < N {
        let f = c.frame().await;
        match f["op"].as_str().unwrap() {
            "published" => {
                let r = f["ref"].as_str().unwrap().to_owned();
                assert!(f["id"].is_string());
                assert!(seq_of_ref.insert(r, f["seq"].as_u64().unwrap()).is_none());
            }
            "message" => seen.push(f["seq"].as_u64().unwrap()),
            other => panic!("unexpected {other}: {f}"),
        }
    }
    let mut seqs: Vec<u64> = seq_of_ref.values().copied().collect();
    seqs.sort();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    assert_eq!(seen, (1..=N as u64).collect::<Vec<_>>());
    // A failed publish is an error with its ref; the connection goes on.
    c.send(json!({"op": "publish", "ref": "bad", "topic": "nope", "body": "x"}))
        .await;
    assert_eq!(
        c.frame().await,
        json!({"op": "error", "ref": "bad", "code": "topic_not_found",
            "message": "topic 'nope' does not exist"})
    );
    c.send(
        json!({"op": "publish", "ref": "both", "topic": "t", "body": "x", "body_base64": "eA=="}),
    )
    .await;
    let e = c.frame().await;
    assert_eq!(
        (e["ref"].as_str(), e["code"].as_str()),
        (Some("both"), Some("invalid_argument"))
    );
    c.send(json!({"op": "publish", "ref": "typo", "topic": "t", "bdy": "x"}))
        .await;
    let e = c.frame().await;
    assert_eq!(
        (e["ref"].as_str(), e["code"].as_str()),
        (Some("typo"), Some("invalid_field"))
    );
}

/// Frames written in one go are read together and published as one engine
/// batch per topic: each publish still gets its own answer and its own
/// sequence, a publish to a missing topic fails alone, and a frame after
/// them is answered too.
#[tokio::test]
async fn publishes_sent_together_get_their_own_answers() {
    let s = TestServer::start().await;
    create_topic(&s.url, "a", json!({})).await;
    create_topic(&s.url, "b", json!({})).await;
    let mut c = Client::open(&s).await;
    const N: usize = 200;
    let topic_of = |i: usize| if i.is_multiple_of(3) { "b" } else { "a" };
    for i in 0..N {
        let topic = topic_of(i);
        let frame = json!({"op": "publish", "ref": format!("r{i}"), "topic": topic,
            "body": format!("m{i}")});
        c.ws.feed(Message::text(frame.to_string())).await.unwrap();
        if i == N / 2 {
            let bad = json!({"op": "publish", "ref": "bad", "topic": "nope", "body": "x"});
            c.ws.feed(Message::text(bad.to_string())).await.unwrap();
        }
    }
    c.ws.feed(Message::text(
        json!({"op": "ping", "ref": "after"}).to_string(),
    ))
    .await
    .unwrap();
    c.ws.flush().await.unwrap();

    let mut seq_of = HashMap::new();
    let mut bad = None;
    while seq_of.len() < N || bad.is_none() {
        let f = c.frame().await;
        match (f["op"].as_str().unwrap(), f["ref"].as_str().unwrap()) {
            ("published", r) => {
                let i: usize = r[1..].parse().unwrap();
                assert!(seq_of.insert(i, f["seq"].as_u64().unwrap()).is_none());
            }
            ("error", "bad") => bad = Some(f["code"].clone()),
            ("pong", "after") => {}
            other => panic!("unexpected {other:?}: {f}"),
        }
    }
    assert_eq!(bad.unwrap(), "topic_not_found");
    for topic in ["a", "b"] {
        let sent: Vec<usize> = (0..N).filter(|&i| topic_of(i) == topic).collect();
        let mut seqs: Vec<u64> = sent.iter().map(|i| seq_of[i]).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=sent.len() as u64).collect::<Vec<_>>(),
            "topic {topic}: one sequence per publish"
        );
        let (status, info) = get_json(&format!("{}/v1/topics/{topic}", s.url)).await;
        assert_eq!(status, 200);
        assert_eq!(info["messages"], sent.len() as u64, "{info}");
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_with_4008() {
    let s = TestServer::start_with(|c| {
        c.realtime.ws_send_queue = 16;
        c.realtime.ws_send_timeout = Duration::from_millis(200);
    })
    .await;
    create_topic(&s.url, "t", json!({})).await;
    let mut c = Client::open(&s).await;
    c.subscribe(json!({"op": "subscribe", "id": "s", "topic": "t"}))
        .await;
    let slow_closes = || async {
        let text = reqwest::get(format!("{}/metrics", s.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("courier_realtime_ws_slow_closes_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = slow_closes().await;
    // The client reads nothing while the server has far more to send than
    // the socket buffers, the tungstenite buffer and the queue hold.
    let body = "x".repeat(16 * 1024);
    let bodies: Vec<&str> = (0..100).map(|_| body.as_str()).collect();
    let mut published = 0;
    while slow_closes().await == before {
        assert!(
            published < 200_000,
            "the server never gave up on the client"
        );
        publish(&s.url, "t", None, &[], &bodies).await;
        published += bodies.len();
    }
    // The close frame comes after what was already on its way: far less
    // than was published (the rest was never buffered for this client).
    let (code, reason, frames) = c.until_close().await;
    assert_eq!((code, reason.as_str()), (4008, "slow consumer"));
    assert!(
        frames.len() < published,
        "{} frames of {published}",
        frames.len()
    );
    let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "in order, no gap"
    );
    // The connection's place is free again.
    eventually("the listener is uncounted", || async {
        let (_, p) = get_json(&format!("{}/v1/topics/t/presence", s.url)).await;
        (p["listeners"] == 0).then_some(())
    })
    .await;
    // A client that reconnects resumes after what it got.
    let last = *seqs.last().unwrap_or(&0);
    let mut c = Client::open(&s).await;
    c.subscribe(json!({"op": "subscribe", "id": "s", "topic": "t", "after": last}))
        .await;
    assert_eq!(c.seqs("s", 1).await, vec![last + 1]);
}

#[tokio::test]
async fn restart_mid_stream_closes_with_1001_then_resumes() {
    let s = TestServer::start().await;
    create_topic(&s.url, "t", json!({})).await;
    publish(&s.url, "t", None, &[], &["1", "2", "3"]).await;
    let mut c = Client::open(&s).await;
    c.subscribe(json!({"op": "subscribe", "id": "s", "topic": "t", "from": "earliest"}))
        .await;
    assert_eq!(c.seqs("s", 3).await, vec![1, 2, 3]);
    let s = s.restart().await;
    let (code, _, frames) = c.until_close().await;
    assert_eq!(code, 1001, "going away at shutdown");
    assert!(frames.is_empty(), "{frames:?}");
    publish(&s.url, "t", None, &[], &["4", "5"]).await;
    let mut c = Client::open(&s).await;
    c.subscribe(json!({"op": "subscribe", "id": "s", "topic": "t", "after": 3}))
        .await;
    assert_eq!(c.seqs("s", 2).await, vec![4, 5]);
}

#[tokio::test]
async fn consume_and_ack_with_lease_tokens() {
    let s = TestServer::start().await;
    create_topic(&s.url, "jobs", json!({})).await;
    let r = reqwest::Client::new()
        .put(format!("{}/v1/subscriptions/workers", s.url))
        .json(&json!({"topic": "jobs", "start": "earliest", "ack_deadline": 60000}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    publish(&s.url, "jobs", None, &[], &["a", "b", "c", "d", "e"]).await;
    let mut c = Client::open(&s).await;
    c.subscribe(json!({"op": "consume", "id": "w", "subscription": "workers", "max_in_flight": 2}))
        .await;
    // Two deliveries, then nothing until one is settled.
    let mut deliveries = Vec::new();
    for _ in 0..2 {
        let d = c.frame().await;
        assert_eq!(
            (d["op"].as_str(), d["sub"].as_str()),
            (Some("delivery"), Some("w"))
        );
        assert_eq!(d["attempt"], 1);
        assert!(d["lease_deadline"].is_u64());
        deliveries.push(d);
    }
    c.send(json!({"op": "ping"})).await;
    assert_eq!(
        c.frame().await,
        json!({"op": "pong"}),
        "no third delivery yet"
    );
    let token = |d: &Value| d["token"].clone();
    c.send(json!({"op": "ack", "ref": "a1", "subscription": "workers",
        "tokens": [token(&deliveries[0])]}))
        .await;
    let mut acked = None;
    let mut third = None;
    while acked.is_none() || third.is_none() {
        let f = c.frame().await;
        match f["op"].as_str().unwrap() {
            "acked" => acked = Some(f),
            "delivery" => third = Some(f),
            other => panic!("unexpected {other}: {f}"),
        }
    }
    assert_eq!(
        acked.unwrap(),
        json!({"op": "acked", "ref": "a1", "results": [{"token": token(&deliveries[0]), "outcome": "ok"}]})
    );
    assert_eq!(third.unwrap()["message"]["body"], "c");
    // A nack gives the message back: it comes again, attempt 2.
    c.send(json!({"op": "nack", "ref": "n1", "subscription": "workers",
        "tokens": [token(&deliveries[1])], "delay_ms": 0}))
        .await;
    let mut again = None;
    let mut nacked = None;
    while nacked.is_none() || again.is_none() {
        let f = c.frame().await;
        match f["op"].as_str().unwrap() {
            "nacked" => nacked = Some(f),
            "delivery" if f["message"]["body"] == "b" => again = Some(f),
            "delivery" => {}
            other => panic!("unexpected {other}: {f}"),
        }
    }
    assert_eq!(nacked.unwrap()["results"][0]["outcome"], "ok");
    assert_eq!(again.unwrap()["attempt"], 2);
    c.send(json!({"op": "ack", "ref": "x", "subscription": "nope", "tokens": ["1-1"]}))
        .await;
    loop {
        let f = c.frame().await;
        if f["op"] == "error" {
            assert_eq!(
                (f["ref"].as_str(), f["code"].as_str()),
                (Some("x"), Some("subscription_not_found"))
            );
            break;
        }
    }
    c.send(json!({"op": "consume", "id": "z", "subscription": "nope"}))
        .await;
    loop {
        let f = c.frame().await;
        if f["op"] == "error" {
            assert_eq!(f["sub"], "z");
            assert_eq!(f["code"], "subscription_not_found");
            break;
        }
    }
}

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

fn token(exp_offset: i64, subscribe: Vec<Grant>, publish: Vec<Grant>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = Claims {
        sub: Some("user-42".into()),
        exp: (now + exp_offset) as u64,
        iss: None,
        aud: Some(Audience::One("courier".into())),
        courier: Grants { subscribe, publish },
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn auth_at_the_upgrade_and_per_operation() {
    let s = TestServer::start_with(|c| {
        c.auth.jwt_hs256_secret = Some(SECRET.into());
        c.auth.audience = Some("courier".into());
    })
    .await;
    create_topic(&s.url, "notifications", json!({})).await;
    create_topic(&s.url, "chat", json!({})).await;
    // No token, a bad one, an expired one: 401 at the upgrade.
    assert_eq!(Client::open_with(&s, None).await.err(), Some(401));
    assert_eq!(
        Client::open_with(&s, Some("not.a.jwt")).await.err(),
        Some(401)
    );
    let expired = token(-3600, vec![Grant::Topic("*".into())], vec![]);
    assert_eq!(Client::open_with(&s, Some(&expired)).await.err(), Some(401));
    // A cross-site page may not open one (it could publish).
    let mut request = format!("ws://{}/v1/ws", s.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }

    let keyed = Grant::Restricted {
        topic: "notifications".into(),
        key: Some("user-42".into()),
        headers: Default::default(),
    };
    let t = token(600, vec![keyed], vec![Grant::Topic("chat".into())]);
    let mut c = Client::open_with(&s, Some(&t)).await.unwrap();
    // Wrong topic, wrong filter: forbidden; the granted filter passes.
    c.send(json!({"op": "subscribe", "id": "a", "topic": "chat"}))
        .await;
    let e = c.frame().await;
    assert_eq!(
        (e["sub"].as_str(), e["code"].as_str()),
        (Some("a"), Some("forbidden"))
    );
    c.send(json!({"op": "subscribe", "id": "b", "topic": "notifications"}))
        .await;
    assert_eq!(c.frame().await["code"], "forbidden");
    c.subscribe(json!({"op": "subscribe", "id": "c", "topic": "notifications", "key": "user-42"}))
        .await;
    // Publishing: granted on chat only.
    c.send(json!({"op": "publish", "ref": "1", "topic": "notifications", "body": "x", "key": "user-42"}))
        .await;
    let e = c.frame().await;
    assert_eq!(
        (e["ref"].as_str(), e["code"].as_str()),
        (Some("1"), Some("forbidden"))
    );
    c.send(json!({"op": "publish", "ref": "2", "topic": "chat", "body": "hi"}))
        .await;
    let ok = c.frame().await;
    assert_eq!(
        (ok["op"].as_str(), ok["seq"].as_u64()),
        (Some("published"), Some(1))
    );
    // The token's grants apply to consumes too.
    reqwest::Client::new()
        .put(format!("{}/v1/subscriptions/chat-sub", s.url))
        .json(&json!({"topic": "chat"}))
        .send()
        .await
        .unwrap();
    c.send(json!({"op": "consume", "id": "d", "subscription": "chat-sub"}))
        .await;
    assert_eq!(c.frame().await["code"], "forbidden");

    // A connection lives no longer than its token.
    let short = token(1, vec![Grant::Topic("*".into())], vec![]);
    let mut c = Client::open_with(&s, Some(&short)).await.unwrap();
    let (code, reason, _) = c.until_close().await;
    assert_eq!((code, reason.as_str()), (4001, "token expired"));
}

#[tokio::test]
async fn anonymous_read_may_subscribe_but_not_publish() {
    let s = TestServer::start_with(|c| {
        c.auth.jwt_hs256_secret = Some(SECRET.into());
        c.auth.anonymous_read = true;
    })
    .await;
    create_topic(&s.url, "t", json!({})).await;
    let mut c = Client::open(&s).await;
    c.subscribe(json!({"op": "subscribe", "id": "s", "topic": "t"}))
        .await;
    c.send(json!({"op": "publish", "ref": "p", "topic": "t", "body": "x"}))
        .await;
    let e = c.frame().await;
    assert_eq!(
        (e["ref"].as_str(), e["code"].as_str()),
        (Some("p"), Some("unauthenticated"))
    );
}

#[tokio::test]
async fn the_js_client_and_demo_page_are_served() {
    let s = TestServer::start().await;
    let js = reqwest::get(format!("{}/js/courier.js", s.url))
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let text = js.text().await.unwrap();
    assert!(text.contains("export class Courier"));
    assert_eq!(text, include_str!("../../../clients/js/courier.js"));
    let demo = reqwest::get(format!("{}/demo", s.url)).await.unwrap();
    assert_eq!(demo.status(), 200);
    assert!(demo.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(demo.text().await.unwrap().contains("/js/courier.js"));
}
