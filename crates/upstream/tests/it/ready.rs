//! `Service::ready`: completes when an instance can take a call, and sleeps
//! (no polling) until then.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use courier_upstream::{BreakerConfig, OutlierDetection, ServiceConfig, Upstreams};

use crate::common::{get, service, CountPolls, Mode, TestServer};

struct CountWakes(AtomicUsize);

impl Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn ready_sleeps_until_an_instance_is_registered() {
    let a = TestServer::start("a").await;
    let upstreams = Upstreams::new();
    let svc = upstreams.define("svc", ServiceConfig::default());
    let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&wakes));
    let mut cx = Context::from_waker(&waker);
    let mut ready = Box::pin(svc.ready());
    assert!(ready.as_mut().poll(&mut cx).is_pending());
    // Activity that makes nothing ready does not wake it.
    assert!(!svc.deregister("nobody"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        0,
        "woken with nothing ready"
    );
    svc.register(a.instance());
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    assert!(ready.as_mut().poll(&mut cx).is_ready());
}

#[tokio::test]
async fn ready_wakes_when_an_ejection_ends() {
    let a = TestServer::start("a").await;
    a.set(Mode::Status(500));
    let config = ServiceConfig {
        outlier: OutlierDetection {
            consecutive_failures: 2,
            ejection: Duration::from_millis(300),
            max_ejection: Duration::from_secs(10),
        },
        breaker: BreakerConfig {
            min_requests: 1000,
            ..BreakerConfig::default()
        },
        ..ServiceConfig::default()
    };
    let svc = service(config, &[&a]);
    for _ in 0..2 {
        svc.call(get("/"), None, Duration::from_secs(5))
            .await
            .unwrap();
    }
    assert!(!svc.has_ready_instance());
    let started = tokio::time::Instant::now();
    let polls = Arc::new(AtomicUsize::new(0));
    let ready = CountPolls {
        inner: Box::pin(svc.ready()),
        polls: Arc::clone(&polls),
    };
    tokio::time::timeout(Duration::from_secs(5), ready)
        .await
        .expect("ready after the ejection");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(svc.has_ready_instance());
    assert!(
        polls.load(Ordering::SeqCst) <= 3,
        "polled {} times",
        polls.load(Ordering::SeqCst)
    );
}
