//! Browser safety: web pages of other origins cannot change anything, JSON
//! endpoints read only JSON, CORS preflights answer allowed origins.

mod common;

use courier_client::wire::Problem;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use common::TestServer;

const EVIL: &str = "https://evil.example";
const APP: &str = "https://app.example.com";

/// Every state-changing route, with a body that succeeds when run in this
/// order on topic `t{n}` and subscription `s{n}` (which exist), creating and
/// removing topic `x{n}` and subscription `y{n}`.
fn routes(n: usize) -> Vec<(Method, String, &'static str, String)> {
    let json = "application/json";
    let token = r#"{"tokens": ["1-1"]}"#;
    vec![
        (
            Method::POST,
            format!("/v1/topics/t{n}/messages"),
            "text/plain",
            "hello".into(),
        ),
        (
            Method::POST,
            format!("/v1/topics/t{n}/messages/batch"),
            json,
            r#"{"messages": [{"body": "a"}]}"#.into(),
        ),
        (Method::PUT, format!("/v1/topics/x{n}"), json, "{}".into()),
        (
            Method::PUT,
            format!("/v1/subscriptions/y{n}"),
            json,
            format!(r#"{{"topic": "x{n}"}}"#),
        ),
        (
            Method::PATCH,
            format!("/v1/subscriptions/y{n}"),
            json,
            r#"{"ack_deadline": 10000}"#.into(),
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/s{n}/pull"),
            json,
            r#"{"max_messages": 1}"#.into(),
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/s{n}/ack"),
            json,
            token.into(),
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/s{n}/nack"),
            json,
            token.into(),
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/s{n}/extend"),
            json,
            r#"{"tokens": ["1-1"], "by_ms": 1000}"#.into(),
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/s{n}/seek"),
            json,
            r#"{"seq": 0}"#.into(),
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/s{n}/dead-letters/replay"),
            json,
            "{}".into(),
        ),
        (
            Method::DELETE,
            format!("/v1/subscriptions/y{n}"),
            json,
            String::new(),
        ),
        (
            Method::DELETE,
            format!("/v1/topics/x{n}"),
            json,
            String::new(),
        ),
    ]
}

async fn setup(server: &TestServer, n: usize) {
    let http = reqwest::Client::new();
    for (path, body) in [
        (format!("/v1/topics/t{n}"), "{}".to_owned()),
        (
            format!("/v1/subscriptions/s{n}"),
            format!(r#"{{"topic": "t{n}"}}"#),
        ),
    ] {
        let r = http
            .put(format!("{}{path}", server.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{path}");
    }
}

/// Sends every route as a page of `origin` would (`None`: not a browser).
/// Browsers keep HTTP/1.1 connections alive and say so.
async fn send_all(
    server: &TestServer,
    n: usize,
    origin: Option<&str>,
) -> Vec<(String, u16, String)> {
    let http = reqwest::Client::new();
    let mut answers = Vec::new();
    for (method, path, content_type, body) in routes(n) {
        let mut request = http
            .request(method.clone(), format!("{}{path}", server.url))
            .header("content-type", content_type)
            .body(body);
        if let Some(origin) = origin {
            request = request
                .header("origin", origin)
                .header("connection", "keep-alive");
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        answers.push((format!("{method} {path}"), status, text));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_changes_are_refused_on_every_route() {
    let mut server = TestServer::start().await;
    setup(&server, 0).await;
    let answers = send_all(&server, 0, Some(EVIL)).await;
    assert_eq!(answers.len(), 13);
    for (route, status, text) in answers {
        assert_eq!(status, 403, "{route}: {text}");
        let problem: Problem = serde_json::from_str(&text).unwrap();
        assert_eq!(problem.code, "origin_not_allowed", "{route}");
        let detail = problem.detail.unwrap();
        assert!(
            detail.contains("server.allowed_origins") && detail.contains(EVIL),
            "{detail}"
        );
    }
    // Nothing changed.
    let http = reqwest::Client::new();
    let topic: Value = http
        .get(format!("{}/v1/topics/t0", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(topic["messages"], 0, "{topic}");
    let x = http
        .get(format!("{}/v1/topics/x0", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(x.status(), StatusCode::NOT_FOUND);
    // Reading is not refused: responses without CORS headers stay unreadable to the page.
    let read = http
        .get(format!("{}/v1/topics/t0", server.url))
        .header("origin", EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert!(read.headers().get("access-control-allow-origin").is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_allowed_origin_and_no_origin_pass() {
    let mut server =
        TestServer::start_with(|c| c.server.allowed_origins = vec![APP.to_owned()]).await;
    let same = format!("http://{}", server.addr);
    for (n, origin) in [(1, Some(same.as_str())), (2, Some(APP)), (3, None)] {
        setup(&server, n).await;
        for (route, status, text) in send_all(&server, n, origin).await {
            assert!(
                (200..300).contains(&status),
                "{route} from {origin:?}: {status} {text}"
            );
        }
    }
    // The allowed origin gets CORS headers on the answer itself.
    let r = reqwest::Client::new()
        .put(format!("{}/v1/topics/cors", server.url))
        .header("origin", APP)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    // An origin on another port of the same host is another origin.
    let other_port = format!("http://127.0.0.1:{}", server.addr.port().wrapping_add(1));
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/topics/cors", server.url))
        .header("origin", other_port)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_endpoints_read_only_json() {
    let mut server = TestServer::start().await;
    setup(&server, 0).await;
    let http = reqwest::Client::new();
    for (method, path, content_type) in [
        (
            Method::PUT,
            "/v1/topics/form",
            "application/x-www-form-urlencoded",
        ),
        (Method::PUT, "/v1/subscriptions/form", "text/plain"),
        (
            Method::POST,
            "/v1/subscriptions/s0/pull",
            "multipart/form-data; boundary=x",
        ),
        (
            Method::POST,
            "/v1/topics/t0/messages/batch",
            "application/x-www-form-urlencoded",
        ),
        (
            Method::POST,
            "/v1/subscriptions/s0/ack",
            "text/plain;charset=UTF-8",
        ),
    ] {
        let r = http
            .request(method.clone(), format!("{}{path}", server.url))
            .header("content-type", content_type)
            .body(r#"{"topic": "t0", "messages": [{"body": "x"}], "tokens": ["1-1"]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            415,
            "{method} {path} as {content_type}"
        );
        let problem: Problem = r.json().await.unwrap();
        assert_eq!(problem.code, "unsupported_media_type");
        assert!(problem.detail.unwrap().contains("application/json"));
    }
    // JSON types, and no content type at all, are read.
    for content_type in [
        Some("application/json; charset=utf-8"),
        Some("application/merge-patch+json"),
        None,
    ] {
        let mut r = http
            .post(format!("{}/v1/subscriptions/s0/pull", server.url))
            .body("{}");
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        assert_eq!(
            r.send().await.unwrap().status(),
            StatusCode::OK,
            "{content_type:?}"
        );
    }
    // The single publish takes any content type: it is the message's.
    let r = http
        .post(format!("{}/v1/topics/t0/messages", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_answers_allowed_origins() {
    let mut server =
        TestServer::start_with(|c| c.server.allowed_origins = vec![APP.to_owned()]).await;
    let http = reqwest::Client::new();
    let preflight = |origin: &str| {
        http.request(
            Method::OPTIONS,
            format!("{}/v1/topics/t/messages", server.url),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,courier-key,courier-id,ce-type",
        )
        .send()
    };
    let r = preflight(APP).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_uppercase();
    for m in ["POST", "PUT", "PATCH", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in ["content-type", "courier-key", "courier-id", "ce-type"] {
        assert!(headers.contains(name), "{headers}");
    }
    // Another origin gets no permission.
    let r = preflight(EVIL).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    server.stop().await;
}

/// A plain HTTP/1.1 publish without `Connection` (the shape a hand-written
/// fast path would take) passes the same layers: refused cross-origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_publish_without_keep_alive_is_refused() {
    let mut server = TestServer::start().await;
    setup(&server, 0).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/topics/t0/messages", server.url))
        .header("origin", EVIL)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    server.stop().await;
}
