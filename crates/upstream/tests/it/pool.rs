//! Connection pooling: keep-alive, h2c, broken and refused connections.

use std::sync::Arc;
use std::time::Duration;

use courier_upstream::{CallError, ServiceConfig};
use http::Version;

use crate::common::{get, service, stats_of, Mode, TestServer};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn sequential_calls_reuse_one_connection() {
    let a = TestServer::start("a").await;
    let svc = service(ServiceConfig::default(), &[&a]);
    for _ in 0..100 {
        let reply = svc.call(get("/x?y=1"), None, WAIT).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "a");
    }
    assert_eq!(a.requests(), 100);
    assert_eq!(a.connections(), 1);
    assert!(a.versions().iter().all(|v| *v == Version::HTTP_11));
}

#[tokio::test]
async fn h2c_multiplexes_on_one_connection() {
    let a = TestServer::start("a").await;
    a.set(Mode::Delay(Duration::from_millis(50)));
    let config = ServiceConfig {
        http2: true,
        ..ServiceConfig::default()
    };
    let svc = service(config, &[&a]);
    // One call first, so that the connection exists before the burst.
    assert_eq!(svc.call(get("/"), None, WAIT).await.unwrap().status, 200);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let svc = Arc::clone(&svc);
        calls.spawn(async move { svc.call(get("/"), None, WAIT).await });
    }
    for reply in calls.join_all().await {
        assert_eq!(reply.unwrap().status, 200);
    }
    assert_eq!(a.connections(), 1);
    assert!(a.versions().iter().all(|v| *v == Version::HTTP_2));
}

#[tokio::test]
async fn a_closed_connection_is_an_io_error() {
    let a = TestServer::start("a").await;
    a.set(Mode::Close);
    let svc = service(ServiceConfig::default(), &[&a]);
    let error = svc.call(get("/"), None, WAIT).await.unwrap_err();
    assert!(
        matches!(error, CallError::Io { ref instance, .. } if instance == "a"),
        "{error:?}"
    );
    assert_eq!(stats_of(&svc, "a").failures_total, 1);
}

#[tokio::test]
async fn a_stopped_instance_refuses_and_a_restarted_one_answers() {
    let a = TestServer::start("a").await;
    let svc = service(ServiceConfig::default(), &[&a]);
    assert_eq!(svc.call(get("/"), None, WAIT).await.unwrap().status, 200);
    a.stop();
    let error = svc.call(get("/"), None, WAIT).await;
    // The pooled connection may be found closed first (an Io error) or the
    // new connection refused (a Connect error); both are failures.
    let error = match error {
        Err(CallError::Io { .. }) => svc.call(get("/"), None, WAIT).await.unwrap_err(),
        other => other.unwrap_err(),
    };
    assert!(matches!(error, CallError::Connect { .. }), "{error:?}");
    assert!(!error.may_have_reached_instance());
    a.restart().await;
    assert_eq!(svc.call(get("/"), None, WAIT).await.unwrap().status, 200);
}
