//! The per-instance concurrency limit and the per-call timeout.

use std::sync::Arc;
use std::time::Duration;

use courier_upstream::{CallError, ServiceConfig};

use crate::common::{eventually, get, service, stats_of, tally, Mode, TestServer};

const WAIT: Duration = Duration::from_secs(5);

fn limited(max: u32) -> ServiceConfig {
    ServiceConfig {
        max_concurrent_per_instance: max,
        ..ServiceConfig::default()
    }
}

#[tokio::test]
async fn a_full_single_instance_means_no_instance() {
    let a = TestServer::start("a").await;
    a.set(Mode::Hang);
    let svc = service(limited(1), &[&a]);
    let hanging = {
        let svc = Arc::clone(&svc);
        tokio::spawn(async move { svc.call(get("/"), None, WAIT).await })
    };
    eventually(WAIT, || stats_of(&svc, "a").in_flight == 1).await;
    assert!(!svc.has_ready_instance());
    assert_eq!(
        svc.call(get("/"), None, WAIT).await.unwrap_err(),
        CallError::NoInstance
    );
    // A caller that gives up frees the slot.
    hanging.abort();
    eventually(WAIT, || stats_of(&svc, "a").in_flight == 0).await;
    assert!(svc.has_ready_instance());
    let stats = stats_of(&svc, "a");
    assert_eq!((stats.requests_total, stats.failures_total), (0, 0));
}

#[tokio::test]
async fn calls_beyond_the_limit_go_elsewhere() {
    let (a, b) = (TestServer::start("a").await, TestServer::start("b").await);
    a.set(Mode::Hang);
    let svc = service(limited(2), &[&a, &b]);
    let spawn_call = || {
        let svc = Arc::clone(&svc);
        tokio::spawn(async move { svc.call(get("/"), None, WAIT).await })
    };
    // Round robin starts with a: a, b, a fills a's two slots.
    let first = spawn_call();
    eventually(WAIT, || stats_of(&svc, "a").in_flight == 1).await;
    assert_eq!(svc.call(get("/"), None, WAIT).await.unwrap().instance, "b");
    let second = spawn_call();
    eventually(WAIT, || stats_of(&svc, "a").in_flight == 2).await;
    assert_eq!(tally(&svc, &["a", "b"], 20).await, vec![0, 20]);
    first.abort();
    second.abort();
}

#[tokio::test]
async fn a_timeout_is_a_failure() {
    let a = TestServer::start("a").await;
    a.set(Mode::Hang);
    let svc = service(ServiceConfig::default(), &[&a]);
    let error = svc
        .call(get("/"), None, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        CallError::Timeout {
            instance: "a".into()
        }
    );
    assert!(error.may_have_reached_instance());
    let stats = stats_of(&svc, "a");
    assert_eq!((stats.requests_total, stats.failures_total), (1, 1));
    assert_eq!(stats.in_flight, 0);
}
