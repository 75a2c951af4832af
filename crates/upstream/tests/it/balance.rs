//! Each balancing policy's distribution over many calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use courier_upstream::{Balance, ServiceConfig};

use crate::common::{get, service, tally, Mode, TestServer};

fn config(balance: Balance) -> ServiceConfig {
    ServiceConfig {
        balance,
        ..ServiceConfig::default()
    }
}

#[tokio::test]
async fn round_robin_is_even() {
    let (a, b, c) = (
        TestServer::start("a").await,
        TestServer::start("b").await,
        TestServer::start("c").await,
    );
    let svc = service(config(Balance::RoundRobin), &[&a, &b, &c]);
    let counts = tally(&svc, &["a", "b", "c"], 3000).await;
    for count in counts {
        assert!((999..=1001).contains(&count), "{count}");
    }
}

#[tokio::test]
async fn weighted_follows_the_weights() {
    let (a, b) = (TestServer::start("a").await, TestServer::start("b").await);
    let svc = service(config(Balance::Weighted), &[]);
    svc.add_static(a.instance().with_weight(3));
    svc.add_static(b.instance());
    let counts = tally(&svc, &["a", "b"], 2000).await;
    assert!((1460..=1540).contains(&counts[0]), "{counts:?}");
    assert_eq!(counts[0] + counts[1], 2000);
}

#[tokio::test]
async fn least_request_prefers_the_idle_instance() {
    let (slow, fast) = (
        TestServer::start("slow").await,
        TestServer::start("fast").await,
    );
    slow.set(Mode::Hang);
    let svc = service(config(Balance::LeastRequest), &[&slow, &fast]);
    // Both idle: the tie goes to the first, which then hangs.
    let hanging = {
        let svc = Arc::clone(&svc);
        tokio::spawn(async move { svc.call(get("/"), None, Duration::from_secs(30)).await })
    };
    crate::common::eventually(Duration::from_secs(5), || {
        crate::common::stats_of(&svc, "slow").in_flight == 1
    })
    .await;
    // Round robin would send half of these to the hanging instance.
    assert_eq!(tally(&svc, &["slow", "fast"], 1000).await, vec![0, 1000]);
    // Both idle again: ties take turns.
    hanging.abort();
    crate::common::eventually(Duration::from_secs(5), || {
        crate::common::stats_of(&svc, "slow").in_flight == 0
    })
    .await;
    slow.set(Mode::Ok);
    assert_eq!(tally(&svc, &["slow", "fast"], 100).await, vec![50, 50]);
}

#[tokio::test]
async fn ring_hash_keeps_keys_and_moves_only_the_removed_instances() {
    let servers = [
        TestServer::start("a").await,
        TestServer::start("b").await,
        TestServer::start("c").await,
        TestServer::start("d").await,
    ];
    let svc = service(
        config(Balance::RingHash),
        &servers.iter().collect::<Vec<_>>(),
    );
    let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
    let mut before = HashMap::new();
    for key in &keys {
        let first = svc.call(get("/"), Some(key.as_bytes()), Duration::from_secs(5));
        let first = first.await.unwrap().instance;
        let again = svc.call(get("/"), Some(key.as_bytes()), Duration::from_secs(5));
        assert_eq!(
            again.await.unwrap().instance,
            first,
            "same key, same instance"
        );
        before.insert(key.clone(), first);
    }
    for id in ["a", "b", "c", "d"] {
        let share = before.values().filter(|i| *i == id).count();
        assert!(share >= 100, "{id} holds only {share} of 1000 keys");
    }
    assert!(svc.deregister("d"));
    for key in &keys {
        let now = svc.call(get("/"), Some(key.as_bytes()), Duration::from_secs(5));
        let now = now.await.unwrap().instance;
        if before[key] == "d" {
            assert_ne!(now, "d");
        } else {
            assert_eq!(now, before[key], "{key} moved though its instance stayed");
        }
    }
}

#[tokio::test]
async fn p2c_ewma_sends_fewer_calls_to_a_slow_instance() {
    let (slow, b, c) = (
        TestServer::start("slow").await,
        TestServer::start("b").await,
        TestServer::start("c").await,
    );
    // Slow enough to stand out from the scheduling hiccups of a busy machine.
    slow.set(Mode::Delay(Duration::from_millis(100)));
    let svc = service(config(Balance::P2cEwma), &[&slow, &b, &c]);
    let counts = tally(&svc, &["slow", "b", "c"], 600).await;
    // Round robin would send it 200.
    assert!(counts[0] <= 40, "{counts:?}");
    assert!(counts[1] >= 200 && counts[2] >= 200, "{counts:?}");
}
