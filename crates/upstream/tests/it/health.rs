//! Active health checks take an instance out and bring it back.

use std::time::Duration;

use courier_upstream::{Health, HealthCheck, ServiceConfig, Upstreams};

use crate::common::{eventually, stats_of, tally, Mode, TestServer};

#[tokio::test]
async fn health_checks_remove_and_restore_an_instance() {
    let (a, b) = (TestServer::start("a").await, TestServer::start("b").await);
    let upstreams = Upstreams::new();
    let svc = upstreams.define(
        "svc",
        ServiceConfig {
            health_check: Some(HealthCheck {
                path: "/health".into(),
                interval: Duration::from_millis(20),
                timeout: Duration::from_millis(500),
                healthy_threshold: 2,
                unhealthy_threshold: 3,
            }),
            ..ServiceConfig::default()
        },
    );
    svc.add_static(a.instance());
    svc.add_static(b.instance());
    let wait = Duration::from_secs(5);
    eventually(wait, || stats_of(&svc, "a").health == Health::Healthy).await;

    a.set_health(Mode::Status(500));
    eventually(wait, || stats_of(&svc, "a").health == Health::Unhealthy).await;
    assert_eq!(tally(&svc, &["a", "b"], 20).await, vec![0, 20]);

    a.set_health(Mode::Ok);
    eventually(wait, || stats_of(&svc, "a").health == Health::Healthy).await;
    assert_eq!(tally(&svc, &["a", "b"], 20).await, vec![10, 10]);

    // A hanging health endpoint fails by timeout.
    a.set_health(Mode::Hang);
    eventually(wait, || stats_of(&svc, "a").health == Health::Unhealthy).await;
    upstreams.shutdown();
}
