//! `GET /metrics`: a Prometheus text page whose families have the documented
//! types, and whose counters and gauges follow the messages that flow.
//!
//! The recorder is process-wide, so the HTTP and fsync families accumulate over
//! every server this test binary starts: the checks compare scrapes taken
//! before and after, and names here are unique to each test.

mod common;

use std::collections::HashMap;

use courier_client::wire::{NackBody, PullBody};
use courier_core::{SubscriptionConfig, TopicConfig};
use prometheus_parse::{Sample, Scrape, Value};

use common::{eventually, TestServer};

/// A parsed page, and the `# TYPE` of each family as written.
struct Page {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

impl Page {
    /// The value of the counter or gauge `name` whose labels include `labels`,
    /// summed over the series that match (0 when none does).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                ref other => panic!("{name} is not a single value: {other:?}"),
            })
            .sum()
    }

    /// The number of observations of the histogram `name` over the matching series.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|s| match &s.value {
                Value::Histogram(buckets) => {
                    let inf = buckets
                        .iter()
                        .find(|b| b.less_than.is_infinite())
                        .unwrap_or_else(|| panic!("{name} has a +Inf bucket"));
                    // Buckets are cumulative and finite bounds run from 100 µs to 10 s.
                    let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
                    assert!(bounds.contains(&0.0001) && bounds.contains(&10.0), "{bounds:?}");
                    inf.count
                }
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }
}

async fn scrape(server: &TestServer) -> Page {
    let response = reqwest::get(format!("{}/metrics", server.url)).await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    // What the lenient parser does not check: every sample belongs to a family
    // announced by a TYPE line before it, and no family is announced twice.
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{name} is announced twice"
            );
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "no TYPE before: {line}");
        }
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    Page {
        samples: scrape.samples,
        types,
    }
}

fn pull_body(max: u32) -> PullBody {
    PullBody {
        consumer: Some("metrics-test".into()),
        max_messages: Some(max),
        wait_ms: Some(1_000),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_gauges_follow_the_messages() {
    let mut server = TestServer::start().await;
    let c = &server.client;
    let (topic, sub) = ("metrics-flow", "metrics-flow-sub");
    c.create_topic(topic, &TopicConfig::default()).await.unwrap();
    c.create_subscription(sub, &SubscriptionConfig::for_topic(topic))
        .await
        .unwrap();

    let before = scrape(&server).await;
    let publish_route = [
        ("route", "/v1/topics/{name}/messages"),
        ("method", "POST"),
    ];

    // Over h2c: every request goes through the router and its middleware.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for i in 0..10 {
        let response = h2
            .post(format!("{}/v1/topics/{topic}/messages", server.url))
            .body(format!("message {i}"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
    let mut tokens = Vec::new();
    while tokens.len() < 10 {
        let got = c.pull(sub, &pull_body(10)).await.unwrap();
        tokens.extend(got.into_iter().map(|d| d.token));
    }
    let acked = c.ack(sub, &tokens).await.unwrap();
    assert!(acked.results.iter().all(|r| r.outcome.is_ok()));

    let after = scrape(&server).await;
    for (family, kind) in [
        ("courier_http_requests_total", "counter"),
        ("courier_http_request_duration_seconds", "histogram"),
        ("courier_fsync_duration_seconds", "histogram"),
        ("courier_engine_up", "gauge"),
        ("courier_messages_published_total", "counter"),
        ("courier_topic_messages", "gauge"),
        ("courier_topic_log_bytes", "gauge"),
        ("courier_messages_delivered_total", "counter"),
        ("courier_messages_acked_total", "counter"),
        ("courier_messages_dead_lettered_total", "counter"),
        ("courier_subscription_backlog_messages", "gauge"),
        ("courier_subscription_in_flight_messages", "gauge"),
        ("courier_subscription_waiting_messages", "gauge"),
    ] {
        assert_eq!(
            after.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    assert_eq!(after.sum("courier_engine_up", &[]), 1.0);

    let delta = |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    let t = [("topic", topic)];
    let s = [("subscription", sub)];
    assert_eq!(delta("courier_messages_published_total", &t), 10.0);
    assert_eq!(delta("courier_messages_delivered_total", &s), 10.0);
    assert_eq!(delta("courier_messages_acked_total", &s), 10.0);
    assert_eq!(delta("courier_messages_dead_lettered_total", &s), 0.0);
    assert_eq!(after.sum("courier_subscription_backlog_messages", &s), 0.0);
    assert_eq!(after.sum("courier_subscription_in_flight_messages", &s), 0.0);
    assert!(after.sum("courier_topic_log_bytes", &t) > 0.0);
    assert!(delta("courier_http_requests_total", &publish_route) >= 10.0);
    let publish_latency = after.histogram_count("courier_http_request_duration_seconds", &publish_route)
        - before.histogram_count("courier_http_request_duration_seconds", &publish_route);
    assert!(publish_latency >= 10.0, "{publish_latency}");
    // Labelled by template only: no series names the topic in its route.
    assert!(after
        .samples
        .iter()
        .all(|s| !s.labels.get("route").is_some_and(|r| r.contains(topic))));
    // Publishes and acks are durable before they are answered: both writers synced.
    assert!(after.histogram_count("courier_fsync_duration_seconds", &[("file", "log")]) > 0.0);
    assert!(after.histogram_count("courier_fsync_duration_seconds", &[("file", "journal")]) > 0.0);

    // A nack that takes effect is counted; the message is back in the backlog.
    c.publish(topic, "again", &Default::default()).await.unwrap();
    let got = eventually("the new message is delivered", || async {
        let got = c.pull(sub, &pull_body(1)).await.unwrap();
        (!got.is_empty()).then_some(got)
    })
    .await;
    let nack = NackBody {
        tokens: vec![got[0].token.clone()],
        ..NackBody::default()
    };
    c.nack(sub, &nack).await.unwrap();
    let last = scrape(&server).await;
    assert_eq!(last.types["courier_messages_nacked_total"], "counter");
    assert_eq!(last.sum("courier_messages_nacked_total", &s), 1.0);
    assert_eq!(last.sum("courier_subscription_backlog_messages", &s), 1.0);
    assert_eq!(last.sum("courier_messages_published_total", &t), 11.0);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_counted_without_their_path() {
    let mut server = TestServer::start().await;
    let response = reqwest::get(format!("{}/no/such/metrics-probe-path", server.url))
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);
    let page = scrape(&server).await;
    assert!(
        page.sum(
            "courier_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ) >= 1.0
    );
    assert!(page
        .samples
        .iter()
        .all(|s| !s.labels.values().any(|v| v.contains("metrics-probe-path"))));
    // A scrape counts itself under its own route.
    let again = scrape(&server).await;
    assert!(again.sum("courier_http_requests_total", &[("route", "/metrics")]) >= 1.0);
    server.stop().await;
}
