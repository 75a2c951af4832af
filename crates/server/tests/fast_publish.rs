//! The HTTP/1.1 fast path for single publishes, driven over raw sockets so
//! that the requests really take it: what it answers, that it behaves as the
//! axum route does, and that hyper takes the connection over at the first
//! other request.

mod common;

use std::collections::HashMap;

use courier_client::wire::PullBody;
use courier_core::{SubscriptionConfig, TopicConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{TestServer, DEADLINE};

/// One HTTP/1.1 answer as read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A raw keep-alive connection that reads answers one at a time (bodies with
/// a Content-Length only, which is all this server sends over HTTP/1.1 here).
struct Raw {
    stream: TcpStream,
    read: Vec<u8>,
}

impl Raw {
    async fn connect(server: &TestServer) -> Raw {
        Raw {
            stream: TcpStream::connect(server.addr).await.unwrap(),
            read: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).await.unwrap();
    }

    async fn answer(&mut self) -> Answer {
        tokio::time::timeout(DEADLINE, self.next_answer())
            .await
            .expect("an answer within the deadline")
    }

    async fn next_answer(&mut self) -> Answer {
        loop {
            let mut lines = [httparse::EMPTY_HEADER; 32];
            let mut head = httparse::Response::new(&mut lines);
            if let httparse::Status::Complete(len) = head.parse(&self.read).unwrap() {
                let headers: HashMap<String, String> = head
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect();
                let status = head.code.unwrap();
                let length: usize = headers["content-length"].parse().unwrap();
                if self.read.len() >= len + length {
                    let body = self.read[len..len + length].to_vec();
                    self.read.drain(..len + length);
                    return Answer {
                        status,
                        headers,
                        body,
                    };
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the connection mid-answer");
            self.read.extend_from_slice(&chunk[..n]);
        }
    }

    /// True when the server closes the connection (after what was read).
    async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

fn publish(topic: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /v1/topics/{topic}/messages HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_stored_as_through_axum() {
    let mut server = TestServer::start().await;
    let c = &server.client;
    c.create_topic("t", &TopicConfig::default()).await.unwrap();
    c.create_subscription("s", &SubscriptionConfig::for_topic("t"))
        .await
        .unwrap();

    let mut raw = Raw::connect(&server).await;
    raw.send(&publish(
        "t",
        "Courier-Id: order-1\r\nCOURIER-KEY: k1\r\nCourier-Header-Color: red\r\ncourier-header-color: blue\r\nce-type: created\r\nContent-Type: text/plain\r\nX-Request-Id: trace-7\r\n",
        "hello",
    ))
    .await;
    let a = raw.answer().await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.header("x-request-id"), Some("trace-7"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(a.header("date").is_some());
    assert_eq!(
        a.json(),
        serde_json::json!({"seq": 1, "id": "order-1", "duplicate": false})
    );

    // Two requests in one write: answered in order, with assigned ids.
    let mut two = publish("t", "", "second");
    two.extend(publish("t", "Courier-Id: order-1\r\n", "again"));
    raw.send(&two).await;
    let (second, retry) = (raw.answer().await, raw.answer().await);
    assert_eq!(second.json()["seq"], 2);
    assert_eq!(retry.json()["duplicate"], true, "dedup applies here too");
    let (i, j) = (
        second.header("x-request-id").unwrap(),
        retry.header("x-request-id").unwrap(),
    );
    assert!(i.parse::<u64>().is_ok() && i != j, "{i} {j}");

    // Another route on the same connection: hyper takes over, and publishes
    // on it keep working (through axum now).
    raw.send(b"GET /v1/topics/t HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let topic = raw.answer().await;
    assert_eq!(topic.status, 200);
    assert_eq!(topic.json()["messages"], 2);
    raw.send(&publish("t", "Courier-Key: k2\r\n", "via axum"))
        .await;
    let through_axum = raw.answer().await;
    assert_eq!(through_axum.status, 201);
    assert_eq!(through_axum.json()["seq"], 3);

    let pulled = c
        .pull(
            "s",
            &PullBody {
                max_messages: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let bodies: Vec<_> = pulled
        .iter()
        .map(|d| d.message.body.clone().unwrap_or_default())
        .collect();
    assert_eq!(bodies, ["hello", "second", "via axum"]);
    let first = &pulled[0].message;
    assert_eq!(first.key.as_deref(), Some("k1"));
    assert_eq!(first.headers["color"], "red, blue");
    assert_eq!(first.headers["ce-type"], "created");
    assert_eq!(first.headers["content-type"], "text/plain");
    assert_eq!(pulled[2].message.key.as_deref(), Some("k2"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_the_same_problems_as_through_axum() {
    let mut server = TestServer::start_with(|c| c.server.body_limit = 2000).await;
    server
        .client
        .create_topic("t", &TopicConfig::default())
        .await
        .unwrap();
    // The same bad requests, once on the fast path (a fresh connection) and
    // once through hyper and axum (a connection that made another request first).
    let cases: [(Vec<u8>, u16, &str); 4] = [
        (publish("nope", "", "x"), 404, "topic_not_found"),
        (publish("bad*name", "", "x"), 400, "invalid_name"),
        (
            publish("t", "Courier-Delay: soon\r\n", "x"),
            400,
            "invalid_header",
        ),
        (
            publish("t", "Courier-Colour: red\r\n", "x"),
            400,
            "invalid_header",
        ),
    ];
    let mut problems = Vec::new();
    for handed_over in [false, true] {
        let mut raw = Raw::connect(&server).await;
        if handed_over {
            raw.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(raw.answer().await.status, 200);
        }
        for (request, status, code) in &cases {
            raw.send(request).await;
            let a = raw.answer().await;
            assert_eq!(a.status, *status, "{a:?}");
            assert_eq!(a.header("content-type"), Some("application/problem+json"));
            assert_eq!(a.json()["code"], *code);
            problems.push(a.json());
        }
        // The connection is still good after each of them.
        raw.send(&publish("t", "", "ok")).await;
        assert_eq!(raw.answer().await.status, 201);
    }
    let (fast, axum) = problems.split_at(cases.len());
    assert_eq!(fast, axum, "same problem documents either way");

    // A body over the limit is refused before it is read; the connection closes.
    let mut raw = Raw::connect(&server).await;
    raw.send(b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        .await;
    let a = raw.answer().await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["code"], "body_too_large");
    assert_eq!(a.header("connection"), Some("close"));
    assert!(raw.closed().await);
    assert_eq!(server.client.topic("t").await.unwrap().messages, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_applies() {
    let mut server = TestServer::start_with(|c| {
        c.server.rate_limit = 1;
        c.server.rate_burst = 1;
    })
    .await;
    let mut raw = Raw::connect(&server).await;
    // The burst allows one request: the topic does not exist, but it counted.
    raw.send(&publish("t", "", "x")).await;
    assert_eq!(raw.answer().await.status, 404);
    raw.send(&publish("t", "", "x")).await;
    let limited = raw.answer().await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["code"], "rate_limited");
    assert!(limited.header("retry-after").is_some());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_fast_connections_and_finishes() {
    let mut server = TestServer::start().await;
    server
        .client
        .create_topic("t", &TopicConfig::default())
        .await
        .unwrap();
    let mut raw = Raw::connect(&server).await;
    raw.send(&publish("t", "", "x")).await;
    assert_eq!(raw.answer().await.status, 201);
    // The connection sits idle on the fast path; stopping does not wait for it.
    server.stop().await;
    assert!(raw.closed().await);
}
