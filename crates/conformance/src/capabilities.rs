//! Capabilities: a request needing a feature the engine does not declare is
//! refused with `unsupported_by_engine`, never served with weaker semantics;
//! a declared feature's request is accepted.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{
    Engine, Error, Feature, NewMessage, Result, Retention, SeekTarget, StartPosition,
    SubscriptionConfig, SubscriptionUpdate, TopicConfig,
};
use futures_util::StreamExt;

use crate::helpers::*;
use crate::EngineFactory;

/// The requests that need `feature`, each on its own topic `t` and
/// subscription `s` (created here with nothing optional), as
/// `(description, result)`.
async fn probe(
    engine: &Arc<dyn Engine>,
    feature: Feature,
    t: &str,
    s: &str,
) -> Vec<(String, Result<()>)> {
    topic_and_sub(engine, t, s, sub_config(t)).await;
    let sub_with = |f: &dyn Fn(&mut SubscriptionConfig)| {
        let mut c = sub_config(t);
        f(&mut c);
        c
    };
    let topic_with = |f: &dyn Fn(&mut Retention)| {
        let mut c = TopicConfig::default();
        f(&mut c.retention);
        c
    };
    let mut out = Vec::new();
    match feature {
        Feature::OrderingKeys => {
            let c = sub_with(&|c| c.ordered = true);
            out.push((
                "an ordered subscription",
                ok(engine.create_subscription(&format!("{s}-o"), c).await),
            ));
        }
        Feature::DelayedDelivery => {
            let delayed = delayed("x", Duration::from_secs(5));
            out.push((
                "a message with a delay",
                ok(engine.publish(t, vec![delayed]).await),
            ));
            let at = NewMessage {
                deliver_at: Some(courier_core::clock::wall_now() + 5_000),
                ..msg("x")
            };
            out.push((
                "a message with deliver_at",
                ok(engine.publish(t, vec![at]).await),
            ));
        }
        Feature::Dedup => {
            let named = with_id("id-1", "x");
            out.push((
                "a message with an id",
                ok(engine.publish(t, vec![named]).await),
            ));
        }
        Feature::SeekBySeq => {
            out.push((
                "seek to a sequence",
                engine.seek(s, SeekTarget::Seq(1)).await,
            ));
            let c = sub_with(&|c| c.start = StartPosition::Seq(1));
            out.push((
                "a subscription starting at a sequence",
                ok(engine.create_subscription(&format!("{s}-q"), c).await),
            ));
        }
        Feature::SeekByTime => {
            out.push(("seek to a time", engine.seek(s, SeekTarget::Time(1)).await));
            let c = sub_with(&|c| c.start = StartPosition::Time(1));
            out.push((
                "a subscription starting at a time",
                ok(engine.create_subscription(&format!("{s}-m"), c).await),
            ));
        }
        Feature::PerConsumerInFlight => {
            let c = sub_with(&|c| c.max_in_flight_per_consumer = 1);
            out.push((
                "a per-consumer in-flight limit",
                ok(engine.create_subscription(&format!("{s}-p"), c).await),
            ));
        }
        Feature::LeaseExtension => {
            publish(engine, t, &["x"]).await;
            let d = only(pull(engine, s, "c", 1).await, "pull");
            let by = ACK_DEADLINE * 3;
            out.push((
                "extending a lease by 3 ack deadlines",
                ok(engine.extend(s, &[d.token], by).await),
            ));
        }
        Feature::Release => {
            publish(engine, t, &["x"]).await;
            let d = only(pull(engine, s, "c", 1).await, "pull");
            out.push(("a release", ok(engine.release(s, &[d.token]).await)));
        }
        Feature::Reject => {
            publish(engine, t, &["x"]).await;
            let d = only(pull(engine, s, "c", 1).await, "pull");
            out.push(("a reject", ok(engine.reject(s, &[d.token], None).await)));
        }
        Feature::NackDelay => {
            publish(engine, t, &["x"]).await;
            let d = only(pull(engine, s, "c", 1).await, "pull");
            let delay = Some(Duration::from_secs(5));
            out.push((
                "a nack with a delay",
                ok(engine.nack(s, &[d.token], delay, None).await),
            ));
        }
        Feature::TopicTails => {
            let tail = engine.tail(t, StartPosition::Earliest).await;
            let result = match tail {
                Ok(mut tail) => {
                    // The stream may refuse on its first event instead.
                    publish(engine, t, &["x"]).await;
                    within("a tail event", tail.next())
                        .await
                        .expect("the tail ended")
                        .map(|_| ())
                }
                Err(e) => Err(e),
            };
            out.push(("a topic tail", result));
        }
        Feature::DeadLetterReplay => {
            out.push((
                "a dead-letter replay",
                ok(engine.replay_dead_letters(s, None).await),
            ));
        }
        Feature::SubscriptionUpdate => {
            let update = SubscriptionUpdate {
                ack_deadline: Some(ACK_DEADLINE * 2),
                ..SubscriptionUpdate::default()
            };
            out.push((
                "a subscription update",
                ok(engine.update_subscription(s, update).await),
            ));
        }
        Feature::RetentionMaxAge => {
            let c = topic_with(&|r| r.max_age = Some(Duration::from_secs(3600)));
            out.push((
                "retention by age",
                ok(engine.create_topic(&format!("{t}-a"), c).await),
            ));
        }
        Feature::RetentionMaxBytes => {
            let c = topic_with(&|r| r.max_bytes = Some(1 << 30));
            out.push((
                "retention by size",
                ok(engine.create_topic(&format!("{t}-b"), c).await),
            ));
        }
        Feature::RetentionMaxMessages => {
            let c = topic_with(&|r| r.max_messages = Some(1_000));
            out.push((
                "retention by count",
                ok(engine.create_topic(&format!("{t}-c"), c).await),
            ));
        }
    }
    out.into_iter()
        .map(|(what, r)| (what.to_string(), r))
        .collect()
}

/// For every feature: the requests needing it are accepted when the engine
/// declares it and refused as `unsupported_by_engine` naming it when not.
pub async fn missing_features_are_refused_and_declared_ones_accepted(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    let caps = engine.capabilities();
    assert!(!caps.engine.is_empty(), "the engine must name itself");
    let mut failures = Vec::new();
    for (i, feature) in Feature::ALL.into_iter().enumerate() {
        let declared = caps.supports(feature);
        for (what, result) in probe(&engine, feature, &format!("t{i}"), &format!("s{i}")).await {
            match (declared, result) {
                (true, Ok(())) => {}
                (true, Err(e)) => failures.push(format!(
                    "{feature:?} is declared but {what} failed: {e} ({})",
                    e.code()
                )),
                (false, Err(Error::Unsupported { feature: f, .. })) if f == feature => {}
                (false, Err(e)) => failures.push(format!(
                    "{feature:?} is not declared: {what} must fail with unsupported_by_engine naming it, got {} ({e})",
                    e.code()
                )),
                (false, Ok(())) => failures.push(format!(
                    "{feature:?} is not declared but {what} was accepted"
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "capability mismatches:\n{}",
        failures.join("\n")
    );
    done(engine).await;
}

/// A dedup window longer than the engine keeps ids is refused as invalid.
pub async fn dedup_window_beyond_the_engine_limit_is_refused(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    let caps = engine.capabilities();
    let Some(max) = caps.max_dedup_window else {
        eprintln!(
            "skipping dedup_window_beyond_the_engine_limit: the engine's window is unbounded"
        );
        return;
    };
    let at_max = TopicConfig {
        dedup_window: max,
        ..TopicConfig::default()
    };
    engine
        .create_topic("t", at_max)
        .await
        .must("create_topic at the longest window");
    let beyond = TopicConfig {
        dedup_window: max + Duration::from_secs(1),
        ..TopicConfig::default()
    };
    expect_code(
        engine.create_topic("u", beyond).await,
        "invalid_argument",
        "a dedup window beyond the engine's limit",
    );
    done(engine).await;
}

/// A call's result without its value.
fn ok<T>(r: Result<T>) -> Result<()> {
    r.map(|_| ())
}
