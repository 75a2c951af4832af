//! `GET /metrics` in the Prometheus text format (version 0.0.4), and the
//! middleware that times every HTTP request. docs/metrics.md lists every metric.
//!
//! Two sources make one page:
//! - the process-wide recorder of the `metrics` facade
//!   (`metrics-exporter-prometheus`): HTTP requests and their latency, recorded
//!   here, and what the engine records itself (fsync latency, nacks);
//! - a snapshot of the engine taken at scrape time from `list_topics()` and
//!   `list_subscriptions()`: publishes, deliveries, acks, dead letters, backlog,
//!   in-flight and log bytes. That costs the hot path nothing, works with any
//!   engine, and leaves no series behind for a deleted topic or subscription.
//!
//! The recorder is installed once per process (the facade has one global
//! recorder); servers started later in the same process share it.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::api::AppState;

/// The media type of the Prometheus text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency histograms' buckets, in seconds: 100 µs to 10 s.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The label of requests that matched no route: raw paths would let any
/// client create series without bound.
const UNMATCHED: &str = "unmatched";

/// How often histogram samples are folded in while nobody scrapes, so they
/// do not pile up in memory.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's recorder, installed on first use. If a program embedding the
/// server installed another recorder first, the facade's metrics go there and
/// `/metrics` shows only the engine snapshot.
pub(crate) fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was installed already; /metrics shows only the engine snapshot"
            );
        } else {
            describe();
        }
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("courier-metrics".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            // Rendering folds samples in too: only memory between scrapes is at stake.
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
        }
        handle
    })
}

/// HELP lines of the families the recorder holds.
fn describe() {
    metrics::describe_counter!(
        "courier_http_requests_total",
        "HTTP requests answered, by method, route template and status code"
    );
    metrics::describe_histogram!(
        "courier_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from a request's arrival at the router to its response head, by method and route template"
    );
    metrics::describe_histogram!(
        "courier_fsync_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of the embedded engine's fdatasync calls, by file kind (log, journal)"
    );
    metrics::describe_counter!(
        "courier_realtime_connections_opened_total",
        "Streaming connections (event streams) admitted, by transport"
    );
    metrics::describe_counter!(
        "courier_realtime_connections_closed_total",
        "Streaming connections that ended (client gone, shutdown, max_events), by transport"
    );
    metrics::describe_counter!(
        "courier_realtime_events_sent_total",
        "Events written to streaming connections (messages and resets), by transport"
    );
    metrics::describe_counter!(
        "courier_messages_nacked_total",
        "Messages given back by a nack (per message that took effect), by subscription"
    );
}

/// Middleware: counts and times each request by its route template
/// (`MatchedPath`, e.g. `/v1/topics/{name}/messages`), never the raw path.
pub(crate) async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED.to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let elapsed = started.elapsed().as_secs_f64();
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "courier_http_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "courier_http_request_duration_seconds",
        "method" => method,
        "route" => route
    )
    .record(elapsed);
    response
}

/// The standard methods by name; any other is `other`, for the same reason as
/// [`UNMATCHED`].
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`: the recorder's families, then the engine snapshot.
pub(crate) async fn scrape(State(state): State<AppState>) -> Response {
    let mut body = handle().render();
    render_realtime(&state, &mut body);
    render_engine(&state, &mut body).await;
    render_push(&state, &mut body).await;
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}

/// One metric family of the snapshot: HELP and TYPE, then its samples.
struct Family<'a> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, &'a str)>, u64)>,
}

impl Family<'_> {
    fn write(&self, out: &mut String) {
        // Writing to a String does not fail.
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            out.push_str(self.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (key, value)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{key}=\"");
                    escape_label(value, out);
                    out.push('"');
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Live listeners and streaming connections, from the real-time state at
/// scrape time: a topic nobody follows any more leaves no series behind.
fn render_realtime(state: &AppState, out: &mut String) {
    let per_topic = state.realtime.presence.per_topic();
    Family {
        name: "courier_realtime_listeners",
        kind: "gauge",
        help: "Live streaming listeners of the topic (event streams), whatever their filter",
        samples: per_topic
            .iter()
            .map(|(topic, n)| (vec![("topic", topic.as_str())], *n))
            .collect(),
    }
    .write(out);
    Family {
        name: "courier_realtime_connections",
        kind: "gauge",
        help: "Streaming connections open now (counted against realtime.max_connections)",
        samples: vec![(vec![], state.realtime.limits.open() as u64)],
    }
    .write(out);
}

async fn render_engine(state: &AppState, out: &mut String) {
    let topics = state.engine.list_topics().await;
    let subscriptions = state.engine.list_subscriptions().await;
    let up = u64::from(topics.is_ok() && subscriptions.is_ok());
    Family {
        name: "courier_engine_up",
        kind: "gauge",
        help: "1 when the engine answered this scrape's listings, else 0 (and the engine families are missing)",
        samples: vec![(vec![], up)],
    }
    .write(out);
    let (Ok(topics), Ok(subscriptions)) = (topics, subscriptions) else {
        return;
    };

    let per_topic = |name, kind, help, value: fn(&courier_core::TopicInfo) -> u64| Family {
        name,
        kind,
        help,
        samples: topics
            .iter()
            .map(|t| (vec![("topic", t.name.as_str())], value(t)))
            .collect(),
    };
    per_topic(
        "courier_messages_published_total",
        "counter",
        "Messages published to the topic since it was created",
        |t| t.next_seq.saturating_sub(1),
    )
    .write(out);
    per_topic(
        "courier_topic_messages",
        "gauge",
        "Messages the topic retains",
        |t| t.messages,
    )
    .write(out);
    per_topic(
        "courier_topic_log_bytes",
        "gauge",
        "Bytes of the topic's retained log",
        |t| t.bytes,
    )
    .write(out);

    let per_subscription =
        |name, kind, help, value: fn(&courier_core::SubscriptionInfo) -> u64| Family {
            name,
            kind,
            help,
            samples: subscriptions
                .iter()
                .map(|s| {
                    (
                        vec![
                            ("subscription", s.name.as_str()),
                            ("topic", s.config.topic.as_str()),
                        ],
                        value(s),
                    )
                })
                .collect(),
        };
    per_subscription(
        "courier_messages_delivered_total",
        "counter",
        "Deliveries (leases handed out, redeliveries included)",
        |s| s.delivered_total,
    )
    .write(out);
    per_subscription(
        "courier_messages_acked_total",
        "counter",
        "Messages settled by an ack",
        |s| s.acked_total,
    )
    .write(out);
    per_subscription(
        "courier_messages_dead_lettered_total",
        "counter",
        "Messages moved to the dead-letter topic after their last attempt",
        |s| s.dead_lettered_total,
    )
    .write(out);
    per_subscription(
        "courier_subscription_backlog_messages",
        "gauge",
        "Messages not yet settled, including those not yet read",
        |s| s.backlog,
    )
    .write(out);
    per_subscription(
        "courier_subscription_in_flight_messages",
        "gauge",
        "Messages leased to consumers now",
        |s| s.in_flight,
    )
    .write(out);
    per_subscription(
        "courier_subscription_waiting_messages",
        "gauge",
        "Messages waiting for a retry backoff or a delayed delivery time",
        |s| s.waiting,
    )
    .write(out);
}

/// Push subscriptions: requests in flight and the age of the oldest
/// unsettled message, taken at scrape time. (Delivered, failed and
/// dead-lettered counts are counters recorded as pushes settle.)
async fn render_push(state: &AppState, out: &mut String) {
    let mut stats = Vec::new();
    for name in state.pusher.pushed() {
        if let Ok(Some(s)) = state.pusher.stats(&name).await {
            stats.push(s);
        }
    }
    Family {
        name: "courier_push_requests_in_flight",
        kind: "gauge",
        help: "Push requests running now",
        samples: stats
            .iter()
            .map(|s| {
                (
                    vec![("subscription", s.subscription.as_str())],
                    s.requests_in_flight,
                )
            })
            .collect(),
    }
    .write(out);
    Family {
        name: "courier_push_oldest_unacked_age_milliseconds",
        kind: "gauge",
        help:
            "How long the oldest unsettled message of a push subscription has waited (0 when none)",
        samples: stats
            .iter()
            .map(|s| {
                (
                    vec![("subscription", s.subscription.as_str())],
                    s.oldest_unacked_age.unwrap_or(0),
                )
            })
            .collect(),
    }
    .write(out);
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn the_route_label_is_the_template_not_the_raw_path() {
        let handle = handle();
        let app = Router::new()
            .route("/v1/topics/{name}/messages", post(|| async { "ok" }))
            .layer(axum::middleware::from_fn(track));
        for path in [
            "/v1/topics/label-probe-raw/messages",
            "/nowhere/label-probe-raw",
        ] {
            let request = Request::post(path).body(Body::empty()).unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
        let text = handle.render();
        assert!(
            text.contains(
                r#"courier_http_requests_total{method="POST",route="/v1/topics/{name}/messages",status="200"}"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"courier_http_requests_total{method="POST",route="unmatched",status="404"}"#
            ),
            "{text}"
        );
        assert!(!text.contains("label-probe-raw"), "{text}");
        assert!(
            text.contains(r#"courier_http_request_duration_seconds_bucket{method="POST",route="/v1/topics/{name}/messages",le="0.0001"}"#),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        Family {
            name: "x",
            kind: "gauge",
            help: "h",
            samples: vec![(vec![("l", "a\"b\\c\nd")], 1)],
        }
        .write(&mut out);
        assert_eq!(
            out,
            "# HELP x h\n# TYPE x gauge\nx{l=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }
}
