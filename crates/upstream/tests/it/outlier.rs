//! Outlier ejection after consecutive failures, and readmission.

use std::time::Duration;

use courier_upstream::{BreakerConfig, OutlierDetection, ServiceConfig};

use crate::common::{eventually, service, stats_of, tally, Mode, TestServer};

#[tokio::test]
async fn ejects_after_consecutive_failures_and_readmits() {
    let (a, b) = (TestServer::start("a").await, TestServer::start("b").await);
    let config = ServiceConfig {
        outlier: OutlierDetection {
            consecutive_failures: 3,
            // Long enough for the 20 calls below to finish on a busy machine.
            ejection: Duration::from_millis(1500),
            max_ejection: Duration::from_secs(10),
        },
        breaker: BreakerConfig {
            min_requests: 1000,
            ..BreakerConfig::default()
        },
        ..ServiceConfig::default()
    };
    let svc = service(config, &[&a, &b]);
    a.set(Mode::Status(500));
    // Round robin: a gets every other call, and fails three times in a row.
    for _ in 0..6 {
        svc.call(crate::common::get("/"), None, Duration::from_secs(5))
            .await
            .unwrap();
    }
    assert!(stats_of(&svc, "a").ejected_until.is_some());
    let requests = a.requests();
    assert_eq!(tally(&svc, &["a", "b"], 20).await, vec![0, 20]);
    assert_eq!(a.requests(), requests);

    a.set(Mode::Ok);
    eventually(Duration::from_secs(5), || {
        stats_of(&svc, "a").ejected_until.is_none()
    })
    .await;
    assert_eq!(tally(&svc, &["a", "b"], 20).await, vec![10, 10]);
}
