//! HTTP/1.1 over raw sockets: hyper parses every request, the single publish
//! route included, so malformed framing gets the same answer on every route,
//! and a layer of the stack applies to every route alike. Also what the
//! single-publish route answers on a keep-alive connection, and how shutdown
//! treats connections that are idle or half way through a request head.

mod common;

use std::collections::HashMap;
use std::time::Duration;

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
/// a Content-Length, or none, which is all this server sends over HTTP/1.1 here).
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
                let length: usize = headers
                    .get("content-length")
                    .map_or(0, |l| l.parse().unwrap());
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
async fn single_publishes_on_a_keep_alive_connection() {
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
    assert_eq!(retry.json()["duplicate"], true, "dedup applies");
    let (i, j) = (
        second.header("x-request-id").unwrap(),
        retry.header("x-request-id").unwrap(),
    );
    assert!(i.len() == 26 && j.len() == 26 && i != j, "{i} {j}");

    // Another route on the same connection, then a publish again.
    raw.send(b"GET /v1/topics/t HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let topic = raw.answer().await;
    assert_eq!(topic.status, 200);
    assert_eq!(topic.json()["messages"], 2);
    raw.send(&publish("t", "Courier-Key: k2\r\n", "third"))
        .await;
    let third = raw.answer().await;
    assert_eq!(third.status, 201);
    assert_eq!(third.json()["seq"], 3);

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
    assert_eq!(bodies, ["hello", "second", "third"]);
    let first = &pulled[0].message;
    assert_eq!(first.key.as_deref(), Some("k1"));
    assert_eq!(first.headers["color"], "red, blue");
    assert_eq!(first.headers["ce-type"], "created");
    assert_eq!(first.headers["content-type"], "text/plain");
    assert_eq!(pulled[2].message.key.as_deref(), Some("k2"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_publish_errors_are_problems_and_keep_the_connection() {
    let mut server = TestServer::start_with(|c| c.server.body_limit = 2000).await;
    server
        .client
        .create_topic("t", &TopicConfig::default())
        .await
        .unwrap();
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
    let mut raw = Raw::connect(&server).await;
    for (request, status, code) in &cases {
        raw.send(request).await;
        let a = raw.answer().await;
        assert_eq!(a.status, *status, "{a:?}");
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
        assert_eq!(a.json()["code"], *code);
        assert!(a.header("x-request-id").is_some());
    }
    // The connection is still good after each of them.
    raw.send(&publish("t", "", "ok")).await;
    assert_eq!(raw.answer().await.status, 201);

    // A body over the limit is refused before it is read; the connection closes.
    let mut raw = Raw::connect(&server).await;
    raw.send(b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        .await;
    let a = raw.answer().await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["code"], "body_too_large");
    assert!(raw.closed().await);
    assert_eq!(server.client.topic("t").await.unwrap().messages, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_applies_to_single_publishes() {
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
    assert!(limited.header("x-request-id").is_some());
    server.stop().await;
}

/// Sends `head` (and `body`) on a fresh connection to `method path` and
/// returns the status, with the connection.
async fn framing(
    server: &TestServer,
    method: &str,
    path: &str,
    head: &str,
    body: &str,
) -> (u16, Raw) {
    let mut raw = Raw::connect(server).await;
    raw.send(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n{body}").as_bytes())
        .await;
    (raw.answer().await.status, raw)
}

/// Malformed framing is refused by hyper before any route is chosen, so the
/// single-publish route answers it as every other route does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_gets_the_same_answer_on_every_route() {
    let mut server = TestServer::start().await;
    server
        .client
        .create_topic("t", &TopicConfig::default())
        .await
        .unwrap();
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    // (what, head lines, body, the status hyper gives)
    let cases: Vec<(&str, String, &str, Option<u16>)> = vec![
        (
            "signed length",
            "Content-Length: +3\r\n".into(),
            "{} ",
            Some(400),
        ),
        (
            "duplicated identical lengths",
            "Content-Length: 3\r\nContent-Length: 3\r\n".into(),
            "{} ",
            None,
        ),
        (
            "conflicting lengths",
            "Content-Length: 3\r\nContent-Length: 4\r\n".into(),
            "{} ",
            Some(400),
        ),
        (
            "length with chunked",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n".into(),
            "3\r\n{} \r\n0\r\n\r\n",
            None,
        ),
        (
            "obs-fold",
            "Content-Length: 3\r\nX-Folded: a\r\n b\r\n".into(),
            "{} ",
            Some(400),
        ),
        (
            "oversized head",
            format!("Content-Length: 3\r\n{many_headers}"),
            "{} ",
            Some(431),
        ),
    ];
    for (i, (what, head, body, expected)) in cases.iter().enumerate() {
        let (publish, mut publish_conn) =
            framing(&server, "POST", "/v1/topics/t/messages", head, body).await;
        let (create, mut create_conn) =
            framing(&server, "PUT", &format!("/v1/topics/x{i}"), head, body).await;
        let (ack, mut ack_conn) =
            framing(&server, "POST", "/v1/subscriptions/nope/ack", head, body).await;
        assert_eq!(
            publish, create,
            "{what}: publish {publish}, create {create}"
        );
        match expected {
            Some(status) => {
                assert_eq!((publish, ack), (*status, *status), "{what}");
                for conn in [&mut publish_conn, &mut create_conn, &mut ack_conn] {
                    assert!(conn.closed().await, "{what}: the connection closes");
                }
            }
            // Framing hyper accepts (identical lengths; chunked wins over a
            // length): both routes store what they were sent.
            None => assert_eq!(publish, 201, "{what}"),
        }
    }
    server.stop().await;
}

/// A layer of the stack applies to single and batch publishes, pulls and
/// acks alike: each answer carries a request id the stack assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_applies_to_publish_batch_pull_and_ack() {
    let mut server = TestServer::start().await;
    let c = &server.client;
    c.create_topic("t", &TopicConfig::default()).await.unwrap();
    c.create_subscription("s", &SubscriptionConfig::for_topic("t"))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.url);
    let id = |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_owned();

    let single = http
        .post(url("/v1/topics/t/messages"))
        .body("one")
        .send()
        .await
        .unwrap();
    assert_eq!(single.status(), 201);
    let batch = http
        .post(url("/v1/topics/t/messages/batch"))
        .json(&serde_json::json!({"messages": [{"body": "two"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 201);
    let pull = http
        .post(url("/v1/subscriptions/s/pull"))
        .json(&serde_json::json!({"max_messages": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(pull.status(), 200);
    let pull_id = id(&pull);
    let pulled: serde_json::Value = pull.json().await.unwrap();
    let tokens: Vec<_> = pulled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["token"].clone())
        .collect();
    assert_eq!(tokens.len(), 2, "{pulled}");
    let ack = http
        .post(url("/v1/subscriptions/s/ack"))
        .json(&serde_json::json!({"tokens": tokens}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 200);
    let ids = [id(&single), id(&batch), pull_id, id(&ack)];
    for id in &ids {
        assert!(ulid_like(id), "{ids:?}");
    }
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 4, "{ids:?}");
    server.stop().await;
}

fn ulid_like(id: &str) -> bool {
    id.len() == 26 && id.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Shutdown does not wait for connections without a request in flight: not
/// for idle keep-alive ones, nor for one that sent half a request head (which
/// would otherwise hold the exit until `header_read_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_and_half_sent_connections_at_once() {
    let mut server = TestServer::start_with(|c| {
        c.server.header_read_timeout = Duration::from_secs(600);
        c.server.shutdown_timeout = Duration::from_secs(600);
    })
    .await;
    server
        .client
        .create_topic("t", &TopicConfig::default())
        .await
        .unwrap();
    // Half a head as the first bytes of a connection: hyper's own graceful
    // shutdown would wait for the rest of it until `header_read_timeout`.
    let mut fresh = Raw::connect(&server).await;
    fresh
        .send(b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await;
    // Idle after one request. Connections are accepted in the order they
    // came, so once this one is answered, the one above is being served.
    let mut idle = Raw::connect(&server).await;
    idle.send(&publish("t", "", "x")).await;
    assert_eq!(idle.answer().await.status, 201);
    // Half a head after one request.
    let mut half = Raw::connect(&server).await;
    half.send(&publish("t", "", "x")).await;
    assert_eq!(half.answer().await.status, 201);
    half.send(b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await;

    let started = std::time::Instant::now();
    server.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    for raw in [&mut idle, &mut half, &mut fresh] {
        assert!(raw.closed().await);
    }
}
