//! `GET /metrics`: a Prometheus text page whose families have the documented
//! types, and whose counters and gauges follow the messages that flow.
//!
//! The recorder is process-wide, so the HTTP and fsync families accumulate over
//! every server this test binary starts: the checks compare scrapes taken
//! before and after, and names here are unique to each test.
//!
//! The page is read by the strict parser below rather than a crate: the one
//! that fits (`prometheus-parse`) matches label sets with `\{[^}]+\}` and
//! silently drops every sample whose label value holds a brace, which is each
//! route template (`/v1/topics/{name}/messages`), and it checks neither
//! escapes nor the order of TYPE lines and samples.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};

use courier_client::wire::{NackBody, PullBody};
use courier_core::{SubscriptionConfig, TopicConfig};

use common::{eventually, TestServer};

/// A series' labels but `le`, in order.
type LabelPairs = Vec<(String, String)>;

struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed page, and the `# TYPE` of each family.
struct Page {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

impl Page {
    /// Parses the text format (version 0.0.4), panicking at anything it does
    /// not allow: a sample before its family's TYPE, a family announced twice
    /// or split, a bad name, label or escape, a value that is no number, a
    /// histogram whose buckets are not cumulative or whose `+Inf` bucket is not
    /// its `_count`.
    fn parse(text: &str) -> Page {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(is_name(name), "bad family name: {line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad type: {line}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "announced twice: {name}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(is_name(name), "bad HELP: {line}");
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    sample
                        .name
                        .strip_suffix(suffix)
                        .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(&sample.name)
                .to_owned();
            let kind = types
                .get(&family)
                .unwrap_or_else(|| panic!("no TYPE before: {line}"));
            if kind == "counter" {
                assert!(sample.value >= 0.0, "negative counter: {line}");
            }
            if current.as_deref() != Some(family.as_str()) {
                assert!(!done.contains(&family), "family split: {family}");
                if let Some(previous) = current.replace(family.clone()) {
                    done.insert(previous);
                }
            }
            samples.push(sample);
        }
        let page = Page { samples, types };
        page.check_histograms();
        page
    }

    fn check_histograms(&self) {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let bucket = format!("{family}_bucket");
            let mut series: BTreeMap<LabelPairs, Vec<(f64, f64)>> = BTreeMap::new();
            for s in self.samples.iter().filter(|s| s.name == bucket) {
                let le = s.labels.get("le").expect("bucket has le");
                let le = parse_value(le);
                let rest = s.labels.iter().filter(|(k, _)| *k != "le");
                let key = rest.map(|(k, v)| (k.clone(), v.clone())).collect();
                series.entry(key).or_default().push((le, s.value));
            }
            for (labels, buckets) in series {
                let counts: Vec<f64> = buckets.iter().map(|b| b.1).collect();
                assert!(
                    counts.windows(2).all(|w| w[0] <= w[1]),
                    "{family}: {counts:?}"
                );
                let inf = buckets.last().unwrap();
                assert!(inf.0.is_infinite(), "{family} ends with +Inf");
                let labels: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let count = self.sum(&format!("{family}_count"), &labels);
                assert_eq!(
                    inf.1, count,
                    "{family}{labels:?}: +Inf bucket against _count"
                );
            }
        }
    }

    /// The sum of the samples called `name` whose labels include `labels`
    /// (0 when none does).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Observations of the histogram `name` over the matching series, after
    /// checking that its bounds run from 100 µs to 10 s.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        assert_eq!(self.types[name], "histogram");
        let bounds: HashSet<&str> = self
            .samples
            .iter()
            .filter(|s| s.name == format!("{name}_bucket"))
            .map(|s| s.labels["le"].as_str())
            .collect();
        assert!(
            bounds.contains("0.0001") && bounds.contains("10"),
            "{bounds:?}"
        );
        self.sum(&format!("{name}_count"), labels)
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        s => s.parse().unwrap_or_else(|_| panic!("not a number: {s}")),
    }
}

/// `name{label="value",...} value [timestamp]`
fn parse_sample(line: &str) -> Sample {
    let end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..end];
    assert!(is_name(name), "bad name: {line}");
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find('=').unwrap_or_else(|| panic!("no '=': {line}"));
            let key = &inner[..eq];
            assert!(is_name(key) && !key.contains(':'), "bad label name: {line}");
            let mut chars = inner[eq + 1..]
                .strip_prefix('"')
                .unwrap_or_else(|| panic!("unquoted label value: {line}"))
                .char_indices();
            let mut value = String::new();
            let closed = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => panic!("bad escape {other:?}: {line}"),
                    },
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value: {line}"),
                }
            };
            assert!(
                labels.insert(key.to_owned(), value).is_none(),
                "label twice: {line}"
            );
            inner = &inner[eq + 2 + closed + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let mut fields = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value: {line}"))
        .split(' ');
    let value = parse_value(fields.next().unwrap());
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .unwrap_or_else(|_| panic!("bad timestamp: {line}"));
    }
    assert!(fields.next().is_none(), "trailing fields: {line}");
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

async fn scrape(server: &TestServer) -> Page {
    let response = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Page::parse(&response.text().await.unwrap())
}

#[test]
fn the_parser_reads_braces_and_escapes_in_label_values() {
    let page = Page::parse(concat!(
        "# HELP x_total Things.\n",
        "# TYPE x_total counter\n",
        "x_total{route=\"/a/{name}/b\",q=\"say \\\"hi\\\"\\\\\\n\"} 3\n",
        "x_total 4 1700000000000\n",
    ));
    assert_eq!(page.sum("x_total", &[("route", "/a/{name}/b")]), 3.0);
    assert_eq!(page.sum("x_total", &[("q", "say \"hi\"\\\n")]), 3.0);
    assert_eq!(page.sum("x_total", &[]), 7.0);
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
    c.create_topic(topic, &TopicConfig::default())
        .await
        .unwrap();
    c.create_subscription(sub, &SubscriptionConfig::for_topic(topic))
        .await
        .unwrap();

    let before = scrape(&server).await;
    let publish_route = [("route", "/v1/topics/{name}/messages"), ("method", "POST")];

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

    let delta =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    let t = [("topic", topic)];
    let s = [("subscription", sub)];
    assert_eq!(delta("courier_messages_published_total", &t), 10.0);
    assert_eq!(delta("courier_messages_delivered_total", &s), 10.0);
    assert_eq!(delta("courier_messages_acked_total", &s), 10.0);
    assert_eq!(delta("courier_messages_dead_lettered_total", &s), 0.0);
    assert_eq!(after.sum("courier_subscription_backlog_messages", &s), 0.0);
    assert_eq!(
        after.sum("courier_subscription_in_flight_messages", &s),
        0.0
    );
    assert!(after.sum("courier_topic_log_bytes", &t) > 0.0);
    assert!(delta("courier_http_requests_total", &publish_route) >= 10.0);
    let publish_latency = after
        .histogram_count("courier_http_request_duration_seconds", &publish_route)
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
    c.publish(topic, "again", &Default::default())
        .await
        .unwrap();
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
