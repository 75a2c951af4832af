//! The circuit breaker: opening on the 5xx rate, rejecting while open,
//! limited half-open probes, closing and reopening.

use std::sync::Arc;
use std::time::Duration;

use courier_upstream::{BreakerConfig, CallError, CircuitState, OutlierDetection, ServiceConfig};

use crate::common::{eventually, get, service, stats_of, Mode, TestServer};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn breaker_opens_probes_closes_and_reopens() {
    let a = TestServer::start("a").await;
    let config = ServiceConfig {
        outlier: OutlierDetection {
            consecutive_failures: 0,
            ..OutlierDetection::default()
        },
        breaker: BreakerConfig {
            window: Duration::from_secs(10),
            min_requests: 4,
            failure_rate: 0.5,
            open_for: Duration::from_millis(300),
            half_open_probes: 2,
        },
        ..ServiceConfig::default()
    };
    let svc = service(config, &[&a]);
    let circuit = |svc: &Arc<courier_upstream::Service>| stats_of(svc, "a").circuit;

    // Four 5xx answers: the rate is 1 over the minimum of 4 calls.
    a.set(Mode::Status(500));
    for _ in 0..4 {
        let reply = svc.call(get("/"), None, WAIT).await.unwrap();
        assert_eq!(reply.status, 500);
    }
    assert_eq!(circuit(&svc), CircuitState::Open);
    let requests = a.requests();
    assert_eq!(
        svc.call(get("/"), None, WAIT).await.unwrap_err(),
        CallError::NoInstance
    );
    assert_eq!(a.requests(), requests, "nothing is sent while open");

    // After open_for it is half-open: two probes, no more.
    a.set(Mode::Delay(Duration::from_millis(500)));
    eventually(WAIT, || svc.has_ready_instance()).await;
    assert_eq!(circuit(&svc), CircuitState::HalfOpen);
    let probes: Vec<_> = (0..2)
        .map(|_| {
            let svc = Arc::clone(&svc);
            tokio::spawn(async move { svc.call(get("/"), None, WAIT).await })
        })
        .collect();
    eventually(WAIT, || stats_of(&svc, "a").in_flight == 2).await;
    assert!(!svc.has_ready_instance());
    assert_eq!(
        svc.call(get("/"), None, WAIT).await.unwrap_err(),
        CallError::NoInstance
    );
    for probe in probes {
        assert_eq!(probe.await.unwrap().unwrap().status, 200);
    }
    assert_eq!(circuit(&svc), CircuitState::Closed);

    // Open again, then a failed probe reopens it.
    a.set(Mode::Status(503));
    for _ in 0..4 {
        svc.call(get("/"), None, WAIT).await.unwrap();
    }
    assert_eq!(circuit(&svc), CircuitState::Open);
    eventually(WAIT, || svc.has_ready_instance()).await;
    assert_eq!(circuit(&svc), CircuitState::HalfOpen);
    assert_eq!(svc.call(get("/"), None, WAIT).await.unwrap().status, 503);
    assert_eq!(circuit(&svc), CircuitState::Open);
    assert_eq!(
        svc.call(get("/"), None, WAIT).await.unwrap_err(),
        CallError::NoInstance
    );
}

#[tokio::test]
async fn client_errors_do_not_open_the_breaker() {
    let a = TestServer::start("a").await;
    let config = ServiceConfig {
        breaker: BreakerConfig {
            min_requests: 4,
            ..BreakerConfig::default()
        },
        ..ServiceConfig::default()
    };
    let svc = service(config, &[&a]);
    a.set(Mode::Status(404));
    for _ in 0..20 {
        assert_eq!(svc.call(get("/"), None, WAIT).await.unwrap().status, 404);
    }
    let stats = stats_of(&svc, "a");
    assert_eq!(stats.circuit, CircuitState::Closed);
    assert_eq!((stats.requests_total, stats.failures_total), (20, 0));
}
