//! Delayed delivery: `delay` (resolved on the engine's clock at publish) and
//! `deliver_at` hold a message back until then, and never hide ready ones.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{Clock, Engine, Feature, NewMessage};

use crate::helpers::*;
use crate::EngineFactory;

async fn with_delays(factory: &dyn EngineFactory, test: &str) -> Option<(Arc<dyn Engine>, Clock)> {
    let (engine, clock) = open(factory).await;
    if lacks(&engine, &[Feature::DelayedDelivery], test) {
        return None;
    }
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    Some((engine, clock))
}

/// A message with a delay is stored with `deliver_at` = publish time + delay,
/// is not delivered a millisecond before, and is at that time; a ready
/// message published after it is delivered first.
pub async fn delayed_message_is_not_delivered_before_its_delay(factory: &dyn EngineFactory) {
    let Some((engine, clock)) = with_delays(factory, "delayed_message_is_not_delivered").await
    else {
        return;
    };
    let delay = Duration::from_secs(10);
    publish_messages(&engine, "t", vec![delayed("later", delay), msg("now")]).await;
    let stored = read_all(&engine, "t").await;
    let due = stored[0].published_at + delay.as_millis() as u64;
    assert_eq!(
        stored[0].deliver_at,
        Some(due),
        "deliver_at must be the publish time plus the delay"
    );

    let ready = pull(&engine, "s", "c", 10).await;
    assert_eq!(
        bodies(&ready),
        vec!["now"],
        "only the ready message is delivered"
    );
    ack_all(&engine, "s", &ready).await;
    advance(Duration::from_millis(due - clock.now()) - MS).await;
    assert!(
        pull(&engine, "s", "c", 10).await.is_empty(),
        "delivered 1 ms before its delay had passed"
    );
    advance(MS).await;
    let later = only(
        pull(&engine, "s", "c", 10).await,
        "delivery once the delay passed",
    );
    assert_eq!((body(&later).as_str(), later.attempt), ("later", 1));
    done(engine).await;
}

/// `deliver_at` is a time on the engine's clock: not before it, then at once;
/// one in the past is delivered at once.
pub async fn deliver_at_is_an_engine_clock_time(factory: &dyn EngineFactory) {
    let Some((engine, clock)) = with_delays(factory, "deliver_at_is_an_engine_clock_time").await
    else {
        return;
    };
    let at = clock.now() + 5_000;
    let messages = vec![
        NewMessage {
            deliver_at: Some(at),
            ..msg("at")
        },
        NewMessage {
            deliver_at: Some(clock.now() - 60_000),
            ..msg("past")
        },
    ];
    publish_messages(&engine, "t", messages).await;
    assert_eq!(
        read_all(&engine, "t").await[0].deliver_at,
        Some(at),
        "stored as given"
    );
    let past = pull(&engine, "s", "c", 10).await;
    assert_eq!(
        bodies(&past),
        vec!["past"],
        "a time in the past is due at once"
    );
    advance(Duration::from_millis(at - clock.now()) - MS).await;
    assert!(
        pull(&engine, "s", "c", 10).await.is_empty(),
        "delivered before deliver_at"
    );
    advance(MS).await;
    assert_eq!(bodies(&pull(&engine, "s", "c", 10).await), vec!["at"]);
    done(engine).await;
}

/// A pull waiting longer than a delay returns when the delay passes, not
/// before and not at the end of its wait.
pub async fn a_waiting_pull_wakes_when_the_delay_passes(factory: &dyn EngineFactory) {
    let Some((engine, _clock)) = with_delays(factory, "a_waiting_pull_wakes").await else {
        return;
    };
    let delay = Duration::from_secs(60);
    publish_messages(&engine, "t", vec![delayed("later", delay)]).await;
    let start = tokio::time::Instant::now();
    let got = pull_wait(&engine, "s", "c", 10, Duration::from_secs(120)).await;
    let waited = start.elapsed();
    assert_eq!(
        bodies(&got),
        vec!["later"],
        "the pull must return the delayed message"
    );
    assert!(waited >= delay, "delivered early, after {waited:?}");
    assert!(
        waited < delay + Duration::from_secs(1),
        "delivered late, after {waited:?}"
    );
    done(engine).await;
}

/// 1,000 delayed messages ahead of a ready one do not hide it: one short
/// pull returns the ready message.
pub async fn delayed_backlog_does_not_hide_a_ready_message(factory: &dyn EngineFactory) {
    let Some((engine, _clock)) = with_delays(factory, "delayed_backlog_does_not_hide").await else {
        return;
    };
    let hour = Duration::from_secs(3600);
    for chunk in 0..10 {
        let batch = (0..100)
            .map(|i| delayed(&format!("later {}", chunk * 100 + i), hour))
            .collect();
        publish_messages(&engine, "t", batch).await;
    }
    publish(&engine, "t", &["ready"]).await;
    let got = pull_wait(&engine, "s", "c", 10, Duration::from_millis(100)).await;
    assert_eq!(
        bodies(&got),
        vec!["ready"],
        "the ready message must be found behind 1,000 delayed ones"
    );
    done(engine).await;
}
