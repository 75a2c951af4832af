//! The registry: defining, reconfiguring, registering and expiring.

use std::time::Duration;

use courier_upstream::{Balance, CallError, Registered, ServiceConfig, Upstreams};

use crate::common::{get, stats_of, TestServer};

fn ttl(ms: u64) -> ServiceConfig {
    ServiceConfig {
        instance_ttl: Duration::from_millis(ms),
        ..ServiceConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_registered_instance_expires_without_heartbeat() {
    let upstreams = Upstreams::new();
    let svc = upstreams.define("svc", ttl(1000));
    let url: http::Uri = "http://127.0.0.1:1".parse().unwrap();
    let registration = svc.register(courier_upstream::Instance::new("x", url.clone()));
    assert!(registration.created);
    assert_eq!(registration.ttl, Duration::from_secs(1));
    svc.add_static(courier_upstream::Instance::new("s", url));
    assert_eq!(stats_of(&svc, "s").registered, Registered::Static);
    assert!(matches!(
        stats_of(&svc, "x").registered,
        Registered::Expiring {
            expires_in_ms: 1000
        }
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ids: Vec<String> = svc.stats().instances.into_iter().map(|i| i.id).collect();
    assert_eq!(
        ids,
        vec!["s"],
        "the expiry task dropped x, kept the static s"
    );
    assert!(!svc.heartbeat("x"));
    assert!(svc.heartbeat("s"));
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_registered_instance() {
    let upstreams = Upstreams::new();
    let svc = upstreams.define("svc", ttl(1000));
    let url: http::Uri = "http://127.0.0.1:1".parse().unwrap();
    svc.register(courier_upstream::Instance::new("x", url.clone()));
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(svc.heartbeat("x"));
    }
    // Registering again is a heartbeat too.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = svc.register(courier_upstream::Instance::new("x", url));
    assert!(!again.created);
    assert_eq!(svc.stats().instances.len(), 1);
}

#[tokio::test]
async fn define_reconfigures_in_place_and_remove_forgets() {
    let a = TestServer::start("a").await;
    let upstreams = Upstreams::new();
    let svc = upstreams.define("svc", ServiceConfig::default());
    svc.add_static(a.instance());
    svc.call(get("/"), None, Duration::from_secs(5))
        .await
        .unwrap();
    let again = upstreams.define(
        "svc",
        ServiceConfig {
            balance: Balance::LeastRequest,
            http2: true,
            ..ServiceConfig::default()
        },
    );
    assert!(std::sync::Arc::ptr_eq(&svc, &again));
    assert_eq!(svc.config().balance, Balance::LeastRequest);
    assert_eq!(stats_of(&svc, "a").requests_total, 1, "state kept");
    assert_eq!(svc.stats().balance, Balance::LeastRequest);
    // The new pool speaks h2c, which the test server also understands.
    svc.call(get("/"), None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(a.versions().last(), Some(&http::Version::HTTP_2));

    upstreams.define("other", ServiceConfig::default());
    let names: Vec<String> = upstreams
        .list()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    assert_eq!(names, vec!["other", "svc"]);
    assert!(upstreams.get("svc").is_some());
    assert!(upstreams.remove("svc"));
    assert!(!upstreams.remove("svc"));
    assert!(upstreams.get("svc").is_none());
    assert!(svc.deregister("a"));
    assert_eq!(
        svc.call(get("/"), None, Duration::from_secs(5))
            .await
            .unwrap_err(),
        CallError::NoInstance
    );
}
