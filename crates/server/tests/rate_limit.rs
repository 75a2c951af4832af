//! Per-client rate limiting against the real server: 429 `rate_limited` with
//! `Retry-After`, recovery once the bucket refills, and health probes that are
//! never limited.

mod common;

use std::time::{Duration, Instant};

use courier_client::wire::{Problem, PROBLEM_JSON};
use reqwest::StatusCode;

use common::{TestServer, DEADLINE};

/// Sends GET `path` until the server answers 429, and returns that answer with
/// how many requests succeeded before it and how long that took. Fails the test
/// if no 429 comes within `max_requests`.
async fn until_limited(
    http: &reqwest::Client,
    url: &str,
    max_requests: usize,
) -> (reqwest::Response, usize, Duration) {
    let start = Instant::now();
    for ok in 0..max_requests {
        let response = http.get(url).send().await.expect("the server answers");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return (response, ok, start.elapsed());
        }
        assert_eq!(response.status(), StatusCode::OK, "request {ok}");
    }
    panic!("no 429 within {max_requests} requests");
}

/// Checks a 429 answer: problem document, code, and a whole-seconds Retry-After.
async fn assert_rate_limited(response: reqwest::Response) -> u64 {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(retry_after >= 1);
    assert_eq!(response.headers()["content-type"], PROBLEM_JSON);
    assert!(response.headers().contains_key("x-request-id"));
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(problem.code, "rate_limited");
    assert_eq!(problem.status, 429);
    assert_eq!(problem.type_, "urn:courier:problem:rate_limited");
    retry_after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_gets_429_until_the_bucket_refills() {
    let mut server = TestServer::start_with(|c| {
        c.server.rate_limit = 5;
        c.server.rate_burst = 5;
    })
    .await;
    let http = reqwest::Client::new();
    let topics = format!("{}/v1/topics", server.url);

    let (limited, ok, took) = until_limited(&http, &topics, 100).await;
    // The burst of 5 goes through; a request more is refused, unless this
    // machine was slow enough for the bucket to refill meanwhile (one per 200 ms).
    let refilled = (took.as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (5..=5 + refilled).contains(&ok),
        "{ok} requests before the first 429, in {took:?}"
    );
    assert_eq!(assert_rate_limited(limited).await, 1);

    // Health probes are never limited, even for a client that is.
    for _ in 0..20 {
        for probe in ["/healthz", "/readyz"] {
            let r = http
                .get(format!("{}{probe}", server.url))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{probe}");
        }
    }

    // The typed client reports a 429 as such, with the wait.
    let (_, _, _) = until_limited(&http, &topics, 100).await;
    let err = server.client.list_topics().await.unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    assert!(err.is_retryable());
    assert_eq!(err.code(), Some("rate_limited"));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_clients_recover_once_the_period_passes() {
    // One request per 50 ms, no burst beyond that one.
    let mut server = TestServer::start_with(|c| {
        c.server.rate_limit = 20;
        c.server.rate_burst = 1;
    })
    .await;
    let http = reqwest::Client::new();
    let stats = format!("{}/v1/stats", server.url);

    let (limited, _, _) = until_limited(&http, &stats, 100).await;
    let limited_at = Instant::now();
    assert_rate_limited(limited).await;
    // Poll (no blind sleep) until a request goes through again. The bucket
    // refills in 50 ms; a second is a generous bound for a loaded machine.
    let recovered_after = loop {
        let r = http.get(&stats).send().await.unwrap();
        if r.status() == StatusCode::OK {
            break limited_at.elapsed();
        }
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            limited_at.elapsed() < DEADLINE,
            "still limited after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        recovered_after < Duration::from_secs(1),
        "a 50 ms period took {recovered_after:?} to pass"
    );
    server.stop().await;
}

/// Each client address has its own bucket (127.0.0.2 is loopback on Linux).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_limited_separately() {
    let mut server = TestServer::start_with(|c| {
        c.server.rate_limit = 1;
        c.server.rate_burst = 1;
    })
    .await;
    let topics = format!("{}/v1/topics", server.url);
    let first = reqwest::Client::new();
    let (limited, _, _) = until_limited(&first, &topics, 10).await;
    assert_rate_limited(limited).await;
    let second = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let r = second.get(&topics).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_limit_by_default() {
    let mut server = TestServer::start().await;
    assert_eq!(server.config.server.rate_limit, 0);
    let http = reqwest::Client::new();
    for _ in 0..200 {
        let r = http
            .get(format!("{}/v1/stats", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    server.stop().await;
}

/// Behind a trusted proxy, each forwarded client has its own bucket; a
/// forwarded address from a peer that is not trusted is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_clients_are_believed_only_from_trusted_proxies() {
    let mut server = TestServer::start_with(|c| {
        c.server.rate_limit = 1;
        c.server.rate_burst = 1;
        c.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let topics = format!("{}/v1/topics", server.url);
    let http = reqwest::Client::new();
    let from = |client: &'static str| {
        http.get(&topics)
            .header("x-forwarded-for", format!("198.51.100.99, {client}"))
    };
    // 203.0.113.1 uses its one request; 203.0.113.2 still has its own.
    assert_eq!(from("203.0.113.1").send().await.unwrap().status(), 200);
    assert_rate_limited(from("203.0.113.1").send().await.unwrap()).await;
    assert_eq!(from("203.0.113.2").send().await.unwrap().status(), 200);
    // RFC 7239 Forwarded, too.
    let forwarded = http
        .get(&topics)
        .header("forwarded", "for=\"[2001:db8::7]:1234\"")
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 200);
    server.stop().await;

    // Not trusted: the header is ignored, every request is the peer's.
    let mut server = TestServer::start_with(|c| {
        c.server.rate_limit = 1;
        c.server.rate_burst = 1;
        c.server.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let topics = format!("{}/v1/topics", server.url);
    let first = http
        .get(&topics)
        .header("x-forwarded-for", "203.0.113.1")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = http
        .get(&topics)
        .header("x-forwarded-for", "203.0.113.2")
        .send()
        .await
        .unwrap();
    assert_rate_limited(second).await;
    server.stop().await;
}
