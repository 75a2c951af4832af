//! Every refusal is a problem document with the right status and stable code.

mod common;

use courier_client::wire::{Problem, PullBody, PROBLEM_JSON};
use courier_core::{StartPosition, SubscriptionConfig, TopicConfig};
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};

use common::TestServer;

struct Raw {
    http: reqwest::Client,
    url: String,
}

impl Raw {
    fn new(server: &TestServer) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: server.url.clone(),
        }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    fn json(&self, method: Method, path: &str, body: &str) -> reqwest::RequestBuilder {
        self.req(method, path)
            .header("content-type", "application/json")
            .body(body.to_owned())
    }
}

/// Sends the request and checks the problem document it must answer.
async fn expect_problem(request: reqwest::RequestBuilder, status: u16, code: &str) -> Problem {
    let response = request.send().await.expect("the server answers");
    let got_status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(got_status, status, "status for {code}: {text}");
    assert_eq!(
        content_type, PROBLEM_JSON,
        "content type for {code}: {text}"
    );
    let problem: Problem = serde_json::from_slice(&body).expect("a problem document");
    assert_eq!(problem.code, code, "{text}");
    assert_eq!(problem.status, status);
    assert_eq!(problem.type_, format!("urn:courier:problem:{code}"));
    assert!(!problem.title.is_empty());
    assert!(problem.detail.as_deref().is_some_and(|d| !d.is_empty()));
    problem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests() {
    let mut server = TestServer::start().await;
    let raw = Raw::new(&server);
    server
        .client
        .create_topic("orders", &TopicConfig::default())
        .await
        .unwrap();
    let put_sub = |body: &str| raw.json(Method::PUT, "/v1/subscriptions/s", body);

    expect_problem(put_sub("{topic: orders}"), 400, "malformed_json").await;
    let p = expect_problem(put_sub(r#"{"topic": "orders""#), 400, "malformed_json").await;
    assert!(p.detail.unwrap().contains("truncated"));
    expect_problem(put_sub(r#"{"topic": "orders",}"#), 400, "malformed_json").await;
    expect_problem(put_sub("\u{0}\u{1}"), 400, "malformed_json").await;
    let p = expect_problem(
        put_sub(r#"{"topic": "orders", "bogus": 1}"#),
        422,
        "unknown_field",
    )
    .await;
    assert!(p.detail.unwrap().contains("bogus"));
    expect_problem(
        put_sub(r#"{"topic": "orders", "retry": {"max_atempts": 1}}"#),
        422,
        "unknown_field",
    )
    .await;
    expect_problem(put_sub(r#"{"topic": 5}"#), 422, "invalid_field").await;
    expect_problem(
        put_sub(r#"{"topic": "orders", "ack_deadline": -1}"#),
        422,
        "invalid_field",
    )
    .await;
    expect_problem(
        put_sub(r#"{"topic": "orders", "start": "latest"}"#),
        422,
        "invalid_field",
    )
    .await;
    expect_problem(put_sub("{}"), 400, "invalid_argument").await;
    expect_problem(
        raw.req(Method::PUT, "/v1/subscriptions/s")
            .header("content-type", "text/plain")
            .body(r#"{"topic": "orders"}"#),
        415,
        "unsupported_media_type",
    )
    .await;

    let batch = |body: &str| raw.json(Method::POST, "/v1/topics/orders/messages/batch", body);
    expect_problem(batch(r#"{"messages": []}"#), 400, "invalid_argument").await;
    expect_problem(
        batch(r#"{"messages": [{"body": 5}]}"#),
        422,
        "invalid_field",
    )
    .await;
    expect_problem(
        batch(r#"{"messages": [{"body": "a", "body_base64": "YQ=="}]}"#),
        400,
        "invalid_argument",
    )
    .await;
    expect_problem(
        batch(r#"{"messages": [{"body_base64": "***"}]}"#),
        400,
        "invalid_argument",
    )
    .await;
    expect_problem(
        batch(r#"{"messages": [{"delay_ms": 5, "deliver_at": 5}]}"#),
        400,
        "invalid_argument",
    )
    .await;
    expect_problem(
        batch(r#"{"messages": [{"deliver_at": "next tuesday"}]}"#),
        400,
        "invalid_argument",
    )
    .await;
    expect_problem(
        batch(r#"{"messages": [{"headers": {"a b": "x"}}]}"#),
        400,
        "invalid_header",
    )
    .await;

    let publish = || {
        raw.req(Method::POST, "/v1/topics/orders/messages")
            .body("x")
    };
    expect_problem(
        publish().header("Courier-Delay", "soon"),
        400,
        "invalid_header",
    )
    .await;
    expect_problem(
        publish().header("Courier-Deliver-At", "soon"),
        400,
        "invalid_header",
    )
    .await;
    expect_problem(
        publish().header("Courier-Prority", "1"),
        400,
        "invalid_header",
    )
    .await;

    let sub_post = |action: &str, body: &str| {
        raw.json(Method::POST, &format!("/v1/subscriptions/s/{action}"), body)
    };
    server
        .client
        .create_subscription("s", &SubscriptionConfig::for_topic("orders"))
        .await
        .unwrap();
    expect_problem(sub_post("ack", "{}"), 422, "invalid_field").await;
    for action in ["ack", "nack", "extend"] {
        let extra = if action == "extend" {
            r#", "by_ms": 1"#
        } else {
            ""
        };
        let p = expect_problem(
            sub_post(action, &format!(r#"{{"tokens": []{extra}}}"#)),
            400,
            "invalid_argument",
        )
        .await;
        assert!(p.detail.unwrap().contains("empty"), "{action}");
    }
    // Tokens are strings; the sequences of the old API are refused by name.
    expect_problem(sub_post("ack", r#"{"tokens": [1]}"#), 422, "invalid_field").await;
    expect_problem(sub_post("ack", r#"{"seqs": [1]}"#), 422, "unknown_field").await;
    expect_problem(
        sub_post("seek", r#"{"seq": 1, "time": 1}"#),
        400,
        "invalid_argument",
    )
    .await;
    expect_problem(sub_post("seek", "{}"), 400, "invalid_argument").await;
    expect_problem(
        sub_post("pull", r#"{"max_messages": 0}"#),
        400,
        "invalid_argument",
    )
    .await;
    expect_problem(sub_post("pull", r#"{"wait": 5}"#), 422, "unknown_field").await;

    expect_problem(
        raw.req(Method::GET, "/v1/topics/orders/messages?max=abc"),
        400,
        "invalid_query",
    )
    .await;
    expect_problem(
        raw.req(Method::GET, "/v1/topics/orders/messages?max=0"),
        400,
        "invalid_query",
    )
    .await;
    expect_problem(
        raw.req(Method::GET, "/v1/topics/orders/messages?colour=red"),
        400,
        "invalid_query",
    )
    .await;
    expect_problem(
        raw.req(Method::GET, "/v1/subscriptions/s/dead-letters?max=5000"),
        400,
        "invalid_query",
    )
    .await;

    // Still healthy after all that.
    assert_eq!(server.client.health().await.unwrap().status, "ok");
    server.client.delete_subscription("s").await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_routes_and_missing_things() {
    let mut server = TestServer::start().await;
    let raw = Raw::new(&server);

    for bad in ["a%20b", ".hidden", "-dash", "%C3%A9", &"x".repeat(201)] {
        expect_problem(
            raw.req(Method::PUT, &format!("/v1/topics/{bad}")),
            400,
            "invalid_name",
        )
        .await;
        expect_problem(
            raw.req(Method::GET, &format!("/v1/subscriptions/{bad}")),
            400,
            "invalid_name",
        )
        .await;
    }
    // The typed client encodes what it is given, so bad names reach the server intact.
    let err = server
        .client
        .create_topic("a/b", &TopicConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_name"));

    expect_problem(
        raw.req(Method::GET, "/v1/topics/nope"),
        404,
        "topic_not_found",
    )
    .await;
    expect_problem(
        raw.req(Method::DELETE, "/v1/topics/nope"),
        404,
        "topic_not_found",
    )
    .await;
    expect_problem(
        raw.req(Method::POST, "/v1/topics/nope/messages").body("x"),
        404,
        "topic_not_found",
    )
    .await;
    expect_problem(
        raw.req(Method::GET, "/v1/subscriptions/nope"),
        404,
        "subscription_not_found",
    )
    .await;
    expect_problem(
        raw.json(Method::POST, "/v1/subscriptions/nope/pull", ""),
        404,
        "subscription_not_found",
    )
    .await;
    expect_problem(
        raw.json(Method::PUT, "/v1/subscriptions/s", r#"{"topic": "nope"}"#),
        404,
        "topic_not_found",
    )
    .await;
    expect_problem(raw.req(Method::GET, "/v2/topics"), 404, "not_found").await;
    expect_problem(raw.req(Method::GET, "/"), 404, "not_found").await;
    let p = expect_problem(
        raw.req(Method::PATCH, "/v1/topics/orders"),
        405,
        "method_not_allowed",
    )
    .await;
    assert!(p.detail.is_some());

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits() {
    let mut server = TestServer::start_with(|c| {
        c.server.body_limit = 4096;
        c.server.max_headers_per_message = 2;
        c.engine.set_embedded("max_message_bytes", 1024);
    })
    .await;
    let raw = Raw::new(&server);
    server
        .client
        .create_topic("t", &TopicConfig::default())
        .await
        .unwrap();
    let publish = || raw.req(Method::POST, "/v1/topics/t/messages");

    // Over the body limit, with a Content-Length and streamed without one.
    expect_problem(publish().body(vec![b'x'; 5000]), 413, "body_too_large").await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b'y'; 1000])).collect();
    let stream = reqwest::Body::wrap_stream(futures_stream(chunks));
    expect_problem(publish().body(stream), 413, "body_too_large").await;
    expect_problem(
        raw.json(
            Method::POST,
            "/v1/topics/t/messages/batch",
            &format!(r#"{{"messages":[{{"body":"{}"}}]}}"#, "z".repeat(5000)),
        ),
        413,
        "body_too_large",
    )
    .await;
    // Within the body limit but over the engine's message limit.
    expect_problem(publish().body(vec![b'x'; 2000]), 413, "message_too_large").await;

    expect_problem(
        publish()
            .header("Courier-Header-a", "1")
            .header("Courier-Header-b", "2")
            .header("Courier-Header-c", "3"),
        400,
        "too_many_headers",
    )
    .await;
    expect_problem(
        raw.json(
            Method::POST,
            "/v1/topics/t/messages/batch",
            r#"{"messages":[{"headers":{"a":"1","b":"2","c":"3"}}]}"#,
        ),
        400,
        "too_many_headers",
    )
    .await;
    // At the limits is fine.
    let ok = publish()
        .header("Courier-Header-a", "1")
        .header("content-type", "text/plain")
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    server.stop().await;
}

/// A stream of body chunks without pulling in a stream crate.
fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + Sync + 'static {
    struct Chunks(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for Chunks {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Chunks(chunks.into_iter())
}

/// Values at the edge of what the wire types can hold. Each used to reach the
/// engine's `now + duration` arithmetic and panic the request's task (debug
/// builds) or wrap to a time in the past (release builds); now each is refused
/// up front, and the broker keeps working afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_numbers_are_refused_not_overflowed() {
    let mut server = TestServer::start_with(|c| {
        c.server.max_pull_wait = std::time::Duration::from_millis(200);
    })
    .await;
    let raw = Raw::new(&server);
    let c = &server.client;
    c.create_topic("t", &TopicConfig::default()).await.unwrap();
    let earliest = SubscriptionConfig {
        start: StartPosition::Earliest,
        ..SubscriptionConfig::for_topic("t")
    };
    c.create_subscription("s", &earliest).await.unwrap();
    c.publish("t", "a", &Default::default()).await.unwrap();
    let leased = c
        .pull(
            "s",
            &PullBody {
                wait_ms: Some(5_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let token = leased[0].token.clone();
    let max = u64::MAX;
    let sub_post = |action: &str, body: String| {
        raw.json(
            Method::POST,
            &format!("/v1/subscriptions/s/{action}"),
            &body,
        )
    };

    let p = expect_problem(
        sub_post(
            "extend",
            format!(r#"{{"tokens": ["{token}"], "by_ms": {max}}}"#),
        ),
        400,
        "invalid_argument",
    )
    .await;
    assert!(p.detail.unwrap().contains("by_ms"));
    expect_problem(
        sub_post(
            "nack",
            format!(r#"{{"tokens": ["{token}"], "delay_ms": {max}}}"#),
        ),
        400,
        "invalid_argument",
    )
    .await;
    expect_problem(
        sub_post("seek", format!(r#"{{"time": {max}}}"#)),
        400,
        "invalid_argument",
    )
    .await;
    expect_problem(
        sub_post("seek", r#"{"time": "9999-12-31T23:59:59-01:00"}"#.into()),
        400,
        "invalid_argument",
    )
    .await;
    // Beyond u64 or u32: the JSON type itself does not fit.
    expect_problem(
        sub_post(
            "extend",
            format!(r#"{{"tokens": ["{token}"], "by_ms": {max}0}}"#),
        ),
        422,
        "invalid_field",
    )
    .await;
    expect_problem(
        sub_post("pull", r#"{"max_messages": 4294967296}"#.into()),
        422,
        "invalid_field",
    )
    .await;
    expect_problem(
        sub_post("pull", r#"{"max_messages": 1001}"#.into()),
        400,
        "invalid_argument",
    )
    .await;
    // The longest wait is shortened to the server's maximum, not refused.
    let empty = c
        .pull(
            "s",
            &PullBody {
                wait_ms: Some(max),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(empty.is_empty());

    // A subscription whose lease or backoff cannot be added to the clock.
    for config in [
        format!(r#"{{"topic": "t", "ack_deadline": {max}}}"#),
        format!(r#"{{"topic": "t", "retry": {{"initial_backoff": 1, "max_backoff": {max}}}}}"#),
    ] {
        expect_problem(
            raw.json(Method::PUT, "/v1/subscriptions/huge", &config),
            400,
            "invalid_argument",
        )
        .await;
    }

    let publish = || raw.req(Method::POST, "/v1/topics/t/messages").body("x");
    for (header, value) in [
        ("Courier-Delay", max.to_string()),
        ("Courier-Deliver-At", max.to_string()),
        ("Courier-Deliver-At", "253402300800000".to_string()),
    ] {
        expect_problem(publish().header(header, value), 400, "invalid_header").await;
    }
    let batch = |body: String| raw.json(Method::POST, "/v1/topics/t/messages/batch", &body);
    expect_problem(
        batch(format!(r#"{{"messages": [{{"delay_ms": {max}}}]}}"#)),
        400,
        "invalid_argument",
    )
    .await;
    expect_problem(
        batch(format!(r#"{{"messages": [{{"deliver_at": {max}}}]}}"#)),
        400,
        "invalid_argument",
    )
    .await;

    // The largest accepted values work end to end.
    let ok = publish()
        .header("Courier-Deliver-At", "9999-12-31T23:59:59.999Z")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    let ok = sub_post(
        "extend",
        format!(r#"{{"tokens": ["{token}"], "by_ms": 3153600000000}}"#),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let answer: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(
        answer["results"],
        serde_json::json!([{ "token": token.as_str(), "outcome": "ok" }])
    );
    // A delivery time in the distant past means "now".
    let past = publish()
        .header("Courier-Deliver-At", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), StatusCode::CREATED);
    let got = c
        .pull(
            "s",
            &PullBody {
                wait_ms: Some(5_000),
                max_messages: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "only the past-dated message is due");
    // A waiting pull with the far-future message pending neither panics nor hangs.
    let none = c
        .pull(
            "s",
            &PullBody {
                wait_ms: Some(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty());

    // Nothing above broke the subscription.
    let acked = c.ack("s", &[token, got[0].token.clone()]).await.unwrap();
    assert_eq!(acked.ok_count(), 2);
    assert_eq!(c.subscription("s").await.unwrap().in_flight, 0);
    server.stop().await;
}

/// Header edge cases of the single publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_header_edge_cases() {
    let mut server = TestServer::start().await;
    let raw = Raw::new(&server);
    server
        .client
        .create_topic("t", &TopicConfig::default())
        .await
        .unwrap();
    let publish = || raw.req(Method::POST, "/v1/topics/t/messages").body("x");

    // Bytes that are valid in HTTP (obs-text) but not UTF-8.
    for name in [
        "Courier-Header-Trace",
        "Courier-Key",
        "Courier-Id",
        "ce-type",
        "Content-Type",
    ] {
        let p = expect_problem(
            publish().header(name, HeaderValue::from_bytes(b"caf\xe9").unwrap()),
            400,
            "invalid_header",
        )
        .await;
        assert!(p.detail.unwrap().contains("UTF-8"), "{name}");
    }
    for name in [
        "Courier-Id",
        "Courier-Key",
        "Courier-Delay",
        "Courier-Deliver-At",
    ] {
        let p = expect_problem(
            publish().header(name, "1").header(name, "2"),
            400,
            "invalid_header",
        )
        .await;
        assert!(p.detail.unwrap().contains("more than once"), "{name}");
    }
    // UTF-8 beyond ASCII is fine, and repeated message headers combine.
    let receipt = publish()
        .header("Courier-Header-Name", "café".as_bytes())
        .header("Courier-Header-Tag", "a")
        .header("Courier-Header-Tag", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(receipt.status(), StatusCode::CREATED);
    let stored = server.client.browse("t", 0, 10).await.unwrap();
    assert_eq!(stored[0].headers["name"], "café");
    assert_eq!(stored[0].headers["tag"], "a, b");
    server.stop().await;
}

/// Token arrays beyond 10000 are refused up front, even one as large as the
/// body limit allows (a million tokens is about 10 MB of JSON); 10000 are
/// answered, one result each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_token_arrays_are_refused_and_the_largest_allowed_answered() {
    let mut server = TestServer::start().await;
    let raw = Raw::new(&server);
    let c = &server.client;
    c.create_topic("t", &TopicConfig::default()).await.unwrap();
    c.create_subscription("s", &SubscriptionConfig::for_topic("t"))
        .await
        .unwrap();
    let tokens = |n: u64| {
        (1..=n)
            .map(|s| format!(r#""{s}-1""#))
            .collect::<Vec<_>>()
            .join(",")
    };
    let (allowed, over, huge) = (tokens(10_000), tokens(10_001), tokens(1_000_000));
    for (action, extra) in [("ack", ""), ("nack", ""), ("extend", r#", "by_ms": 1000"#)] {
        let path = format!("/v1/subscriptions/s/{action}");
        for list in [&over, &huge] {
            let p = expect_problem(
                raw.json(
                    Method::POST,
                    &path,
                    &format!(r#"{{"tokens": [{list}]{extra}}}"#),
                ),
                400,
                "invalid_argument",
            )
            .await;
            assert!(p.detail.unwrap().contains("10000"), "{action}");
        }
        let response = raw
            .json(
                Method::POST,
                &path,
                &format!(r#"{{"tokens": [{allowed}]{extra}}}"#),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{action}");
        let answer: courier_client::wire::SettleResponse = response.json().await.unwrap();
        assert_eq!(answer.results.len(), 10_000, "{action}");
        assert_eq!(answer.results[9_999].token.as_str(), "10000-1");
        assert_eq!(answer.ok_count(), 0, "{action}: nothing was published");
    }
    assert_eq!(c.subscription("s").await.unwrap().in_flight, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_are_not_objects() {
    let mut server = TestServer::start().await;
    let raw = Raw::new(&server);
    server
        .client
        .create_topic("x", &TopicConfig::default())
        .await
        .unwrap();
    server
        .client
        .create_subscription("s", &SubscriptionConfig::for_topic("x"))
        .await
        .unwrap();
    for (method, path, body, names) in [
        (
            Method::PUT,
            "/v1/topics/t",
            r#"{"retention": [5, 6, 7]}"#,
            "retention",
        ),
        (Method::PUT, "/v1/topics/t", "[]", "the body"),
        (Method::PUT, "/v1/subscriptions/y", r#"["x"]"#, "the body"),
        (
            Method::PUT,
            "/v1/subscriptions/y",
            r#"{"topic": "x", "retry": [1, 2]}"#,
            "retry",
        ),
        (
            Method::PATCH,
            "/v1/subscriptions/s",
            r#"{"retry": [1]}"#,
            "retry",
        ),
        (Method::PATCH, "/v1/subscriptions/s", "[30000]", "the body"),
        (
            Method::POST,
            "/v1/topics/x/messages/batch",
            r#"[[["hello"]]]"#,
            "the body",
        ),
        (
            Method::POST,
            "/v1/topics/x/messages/batch",
            r#"{"messages": [["hello"]]}"#,
            "messages[0]",
        ),
        (
            Method::POST,
            "/v1/topics/x/messages/batch",
            r#"{"messages": [{"headers": []}]}"#,
            "messages[0].headers",
        ),
        (Method::POST, "/v1/subscriptions/s/pull", "[]", "the body"),
        (
            Method::POST,
            "/v1/subscriptions/s/ack",
            r#"[["1-1"]]"#,
            "the body",
        ),
        (Method::POST, "/v1/subscriptions/s/seek", "[5]", "the body"),
    ] {
        let p = expect_problem(raw.json(method.clone(), path, body), 422, "invalid_field").await;
        let detail = p.detail.unwrap();
        assert!(
            detail.starts_with(&format!("{names}: expected a JSON object")),
            "{method} {path} {body}: {detail}"
        );
    }
    // Nothing was created or published.
    expect_problem(raw.req(Method::GET, "/v1/topics/t"), 404, "topic_not_found").await;
    expect_problem(
        raw.req(Method::GET, "/v1/subscriptions/y"),
        404,
        "subscription_not_found",
    )
    .await;
    let topic = server.client.topic("x").await.unwrap();
    assert_eq!(topic.next_seq, topic.first_seq, "nothing published");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_errors_name_the_field() {
    let mut server = TestServer::start().await;
    let raw = Raw::new(&server);
    server
        .client
        .create_topic("x", &TopicConfig::default())
        .await
        .unwrap();
    for (method, path, body, prefix) in [
        (
            Method::PUT,
            "/v1/subscriptions/y",
            r#"{"topic": "x", "ack_deadline": "soon"}"#,
            "ack_deadline: ",
        ),
        (
            Method::PUT,
            "/v1/subscriptions/y",
            r#"{"topic": "x", "retry": {"max_attempts": -1}}"#,
            "retry.max_attempts: ",
        ),
        (
            Method::PUT,
            "/v1/topics/t",
            r#"{"retention": {"max_age": "1h"}}"#,
            "retention.max_age: ",
        ),
        (
            Method::POST,
            "/v1/topics/x/messages/batch",
            r#"{"messages": [{"body": "a"}, {"delay_ms": true}]}"#,
            "messages[1].delay_ms: ",
        ),
    ] {
        let p = expect_problem(raw.json(method.clone(), path, body), 422, "invalid_field").await;
        let detail = p.detail.unwrap();
        assert!(detail.starts_with(prefix), "{body}: {detail}");
        assert!(!detail.contains("line "), "{detail}");
    }
    let p = expect_problem(
        raw.json(
            Method::PUT,
            "/v1/subscriptions/y",
            r#"{"topic": "x", "ack_deadline": "soon"}"#,
        ),
        422,
        "invalid_field",
    )
    .await;
    assert_eq!(
        p.detail.unwrap(),
        r#"ack_deadline: invalid type: string "soon", expected milliseconds as a number"#
    );
    let p = expect_problem(
        raw.json(
            Method::PUT,
            "/v1/topics/t",
            r#"{"retention": {"bogus": 1}}"#,
        ),
        422,
        "unknown_field",
    )
    .await;
    assert!(p
        .detail
        .unwrap()
        .starts_with("retention.bogus: unknown field `bogus`"));
    server.stop().await;
}

/// What the OpenAPI document allows the server accepts, and what it forbids
/// the server refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_as_documented() {
    let mut server = TestServer::start().await;
    let raw = Raw::new(&server);
    let c = &server.client;
    c.create_topic("t", &TopicConfig::default()).await.unwrap();
    // JSON Schema's integers include 479.0.
    let r = raw
        .json(
            Method::PUT,
            "/v1/subscriptions/s",
            r#"{"topic": "t", "ack_deadline": 479.0, "max_in_flight": 10.0}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let info: serde_json::Value = r.json().await.unwrap();
    assert_eq!(info["config"]["ack_deadline"], 479);
    let r = raw
        .json(
            Method::POST,
            "/v1/subscriptions/s/pull",
            r#"{"max_messages": 2.0}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    expect_problem(
        raw.json(
            Method::PUT,
            "/v1/subscriptions/s2",
            r#"{"topic": "t", "ack_deadline": 479.5}"#,
        ),
        422,
        "invalid_field",
    )
    .await;
    // Unsigned 64-bit integers up to u64::MAX, as documented (uint64).
    let r = raw
        .json(
            Method::POST,
            "/v1/subscriptions/s/seek",
            &format!(r#"{{"seq": {}}}"#, u64::MAX),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let p = expect_problem(
        raw.json(
            Method::POST,
            "/v1/subscriptions/s/seek",
            r#"{"seq": 18446744073709551616}"#,
        ),
        422,
        "invalid_field",
    )
    .await;
    assert!(p.detail.unwrap().starts_with("seq: "));
    // Documented minimums.
    for (path, body) in [
        ("ack", r#"{"tokens": []}"#),
        ("extend", r#"{"tokens": ["1-1"], "by_ms": 0}"#),
        ("pull", r#"{"max_messages": 0}"#),
    ] {
        expect_problem(
            raw.json(Method::POST, &format!("/v1/subscriptions/s/{path}"), body),
            400,
            "invalid_argument",
        )
        .await;
    }
    expect_problem(
        raw.json(
            Method::POST,
            "/v1/topics/t/messages/batch",
            r#"{"messages": []}"#,
        ),
        400,
        "invalid_argument",
    )
    .await;
    expect_problem(
        raw.req(Method::GET, "/v1/topics/t/messages?max=0"),
        400,
        "invalid_query",
    )
    .await;
    server.stop().await;
}
