//! HTTP-level behaviour: h2c, slow clients, CloudEvents round trips, the OpenAPI document.

mod common;

use std::time::Duration;

use courier_client::wire::{PullBody, CLOUDEVENTS_JSON};
use courier_client::Client;
use courier_core::{SubscriptionConfig, TopicConfig};
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{TestServer, DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge() {
    let mut server = TestServer::start().await;
    let h2 = Client::builder(&server.url)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    h2.create_topic("t", &TopicConfig::default()).await.unwrap();
    h2.create_subscription("s", &SubscriptionConfig::for_topic("t"))
        .await
        .unwrap();
    // Concurrent streams on one connection.
    let publishes = (0..20).map(|i| {
        let h2 = h2.clone();
        async move { h2.publish("t", format!("m{i}"), &Default::default()).await }
    });
    for r in futures_join_all(publishes).await {
        r.unwrap();
    }
    let got = h2
        .pull(
            "s",
            &PullBody {
                max_messages: Some(100),
                wait_ms: Some(1000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 20);
    let tokens: Vec<_> = got.iter().map(|d| d.token.clone()).collect();
    assert_eq!(h2.ack("s", &tokens).await.unwrap().ok_count(), 20);

    let raw = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = raw
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert!(response.status().is_success());
    // A problem document over h2 too.
    let response = raw
        .get(format!("{}/v1/topics/nope", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.headers()["content-type"],
        courier_client::wire::PROBLEM_JSON
    );
    h2.delete_subscription("s").await.unwrap();
    server.stop().await;
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Reads until the server closes the connection; fails the test if it never does.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server never cut the slow client off");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let mut server = TestServer::start_with(|c| {
        c.server.header_read_timeout = Duration::from_millis(300);
        c.server.request_timeout = Duration::from_millis(500);
        c.server.max_pull_wait = Duration::from_millis(100);
    })
    .await;
    server
        .client
        .create_topic("t", &TopicConfig::default())
        .await
        .unwrap();

    // Headers never finished: the connection is closed.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // Body promised but never sent: 408 `timeout`, then the connection closes.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a little")
        .await
        .unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"timeout\""), "{answer}");

    // Nothing was stored, and the server still serves others.
    assert_eq!(server.client.topic("t").await.unwrap().messages, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_come_back_the_way_they_came() {
    let mut server = TestServer::start().await;
    let c = &server.client;
    c.create_topic("ce", &TopicConfig::default()).await.unwrap();
    c.create_subscription("ce-sub", &SubscriptionConfig::for_topic("ce"))
        .await
        .unwrap();
    let pull = PullBody {
        wait_ms: Some(1000),
        ..Default::default()
    };

    // Binary mode: attributes in ce-* headers.
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "evt-1"),
        ("ce-type", "com.example.order.created"),
        ("ce-source", "/orders"),
        ("content-type", "application/json"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    let body = br#"{"order": 42}"#.to_vec();
    let receipt = c.publish_raw("ce", headers, body.clone()).await.unwrap();
    assert_eq!(receipt.id, "evt-1", "ce-id becomes the message id");
    let d = c
        .pull_raw("ce-sub", &pull)
        .await
        .unwrap()
        .expect("a delivery");
    assert_eq!(&d.body[..], &body[..]);
    assert_eq!(d.header("content-type"), Some("application/json"));
    assert_eq!(d.header("ce-id"), Some("evt-1"));
    assert_eq!(d.header("ce-type"), Some("com.example.order.created"));
    assert_eq!(d.header("ce-source"), Some("/orders"));
    assert_eq!(d.header("ce-specversion"), Some("1.0"));
    assert_eq!(d.header("courier-attempt"), Some("1"));
    assert_eq!(d.header("courier-seq"), Some("1"));
    let token = d.token().expect("a Courier-Token header");
    let acked = c.ack("ce-sub", &[token]).await.unwrap();
    assert_eq!(acked.ok_count(), 1, "the raw delivery's token acks it");

    // Structured mode: the whole event is the body.
    let event =
        br#"{"specversion":"1.0","id":"evt-2","type":"t","source":"/s","data":{"x":1}}"#.to_vec();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static(CLOUDEVENTS_JSON));
    let receipt = c.publish_raw("ce", headers, event.clone()).await.unwrap();
    assert_eq!(receipt.id, "evt-2");
    let d = c
        .pull_raw("ce-sub", &pull)
        .await
        .unwrap()
        .expect("a delivery");
    assert_eq!(&d.body[..], &event[..]);
    assert_eq!(d.header("content-type"), Some(CLOUDEVENTS_JSON));
    let acked = c.ack("ce-sub", &[d.token().unwrap()]).await.unwrap();
    assert_eq!(acked.ok_count(), 1);

    // The same event again is a duplicate within the dedup window.
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static(CLOUDEVENTS_JSON));
    assert!(c.publish_raw("ce", headers, event).await.unwrap().duplicate);

    // Nothing left: raw mode answers 204.
    let none = c.pull_raw("ce-sub", &PullBody::default()).await.unwrap();
    assert!(none.is_none());
    c.delete_subscription("ce-sub").await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_openapi_is_the_generated_one() {
    let mut server = TestServer::start().await;
    let served = server.client.openapi().await.unwrap();
    let generated: serde_json::Value =
        serde_json::from_str(&courier_server::openapi_json()).unwrap();
    assert_eq!(served, generated);
    assert_eq!(served["openapi"], "3.1.0");
    server.stop().await;
}

/// A long poll must not hold shutdown up for its whole wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_waiting_pulls() {
    let mut server = TestServer::start_with(|c| {
        c.server.max_pull_wait = Duration::from_secs(600);
    })
    .await;
    let c = server.client.clone();
    c.create_topic("quiet", &TopicConfig::default())
        .await
        .unwrap();
    c.create_subscription("idle", &SubscriptionConfig::for_topic("quiet"))
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        c.pull(
            "idle",
            &PullBody {
                wait_ms: Some(600_000),
                ..Default::default()
            },
        )
        .await
    });
    // The pull is in flight once the server is busy with it; readiness flips at shutdown.
    assert_eq!(server.client.ready().await.unwrap().status, "ok");
    let started = tokio::time::Instant::now();
    server.stop().await;
    assert!(started.elapsed() < DEADLINE);
    match tokio::time::timeout(DEADLINE, waiting)
        .await
        .unwrap()
        .unwrap()
    {
        Err(e) if e.code() == Some("shutting_down") => {}
        // The pull may not have reached the server before it stopped accepting.
        Err(courier_client::Error::Transport(_)) => {}
        other => panic!("expected the waiting pull to end with shutting_down, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_assigned() {
    let mut server = TestServer::start().await;
    let http = reqwest::Client::new();
    let id_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let echoed = http
        .get(format!("{}/v1/topics", server.url))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&echoed).as_deref(), Some("trace-42"));
    // Assigned ones differ per request, errors included.
    let first = http
        .get(format!("{}/v1/topics", server.url))
        .send()
        .await
        .unwrap();
    let missing = http
        .get(format!("{}/v1/topics/nope", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let (a, b) = (id_of(&first).unwrap(), id_of(&missing).unwrap());
    assert_ne!(a, b);
    assert!(is_ulid(&a) && is_ulid(&b), "{a} {b}");
    // An id that is not sane (too long, or with spaces) is replaced.
    for insane in ["x".repeat(129), "two words".into()] {
        let r = http
            .get(format!("{}/v1/topics", server.url))
            .header("x-request-id", &insane)
            .send()
            .await
            .unwrap();
        let id = id_of(&r).unwrap();
        assert!(is_ulid(&id), "{insane:?} gave {id}");
    }
    server.stop().await;
}

/// A request id as the server makes them: a ULID (26 Crockford base32 characters).
fn is_ulid(id: &str) -> bool {
    id.len() == 26
        && id
            .chars()
            .all(|c| c.is_ascii_digit() || (c.is_ascii_uppercase() && !"ILOU".contains(c)))
}

/// Ids are not a counter that starts over: after a restart on the same data,
/// the server hands out ids it never handed out before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_differ_across_restarts() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let id = |r: reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let before = id(http
        .get(format!("{}/v1/topics", server.url))
        .send()
        .await
        .unwrap());
    let mut server = server.restart().await;
    let after = id(http
        .get(format!("{}/v1/topics", server.url))
        .send()
        .await
        .unwrap());
    assert!(is_ulid(&before) && is_ulid(&after), "{before} {after}");
    assert_ne!(before, after);
    server.stop().await;
}
