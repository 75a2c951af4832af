//! Repositioning subscriptions: seek by sequence or time, and where a new
//! subscription starts.

use courier_core::{Feature, Outcome, SeekTarget, StartPosition, SubscriptionConfig};

use crate::helpers::*;
use crate::EngineFactory;

/// Seeking back to a sequence delivers everything from it again, in order.
pub async fn seek_by_sequence_redelivers_from_there(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    if lacks(&engine, &[Feature::SeekBySeq], "seek_by_sequence") {
        return;
    }
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["1", "2", "3", "4", "5"]).await;
    let all = pull(&engine, "s", "c", 10).await;
    ack_all(&engine, "s", &all).await;

    engine.seek("s", SeekTarget::Seq(2)).await.must("seek to 2");
    let again = pull(&engine, "s", "c", 10).await;
    assert_eq!(
        bodies(&again),
        vec!["2", "3", "4", "5"],
        "redelivered from seq 2 on"
    );
    ack_all(&engine, "s", &again).await;
    assert!(pull(&engine, "s", "c", 10).await.is_empty());
    done(engine).await;
}

/// Seeking forward counts everything before the target as acked, leased
/// messages included (their tokens are `NotFound`).
pub async fn seek_forward_counts_earlier_messages_as_acked(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    if lacks(&engine, &[Feature::SeekBySeq], "seek_forward") {
        return;
    }
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["1", "2", "3", "4", "5"]).await;
    let leased = pull(&engine, "s", "c", 2).await;
    assert_eq!(seqs(&leased), vec![1, 2]);

    engine.seek("s", SeekTarget::Seq(4)).await.must("seek to 4");
    assert_eq!(
        subscription(&engine, "s").await.ack_floor,
        4,
        "1..=3 count as acked"
    );
    let rest = pull(&engine, "s", "c", 10).await;
    assert_eq!(bodies(&rest), vec!["4", "5"]);
    assert_eq!(
        ack(&engine, "s", &[leased[0].token.clone()]).await,
        vec![Outcome::NotFound],
        "a lease on a message skipped by a seek settles nothing"
    );
    advance(ACK_DEADLINE + BACKOFF).await;
    assert!(
        pull(&engine, "s", "c", 10)
            .await
            .iter()
            .all(|d| d.message.seq >= 4),
        "skipped messages are never redelivered"
    );

    let end = engine.topic("t").await.must("topic").next_seq;
    engine
        .seek("s", SeekTarget::Seq(end))
        .await
        .must("seek to the end");
    assert!(
        pull(&engine, "s", "c", 10).await.is_empty(),
        "nothing after the end"
    );
    assert_eq!(subscription(&engine, "s").await.backlog, 0);
    publish(&engine, "t", &["6"]).await;
    assert_eq!(bodies(&pull(&engine, "s", "c", 10).await), vec!["6"]);
    done(engine).await;
}

/// Seeking to a time delivers from the first message published at or after it.
pub async fn seek_by_time(factory: &dyn EngineFactory) {
    let (engine, clock) = open(factory).await;
    if lacks(&engine, &[Feature::SeekByTime], "seek_by_time") {
        return;
    }
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    let stored = publish_a_second_apart(&engine, &clock, "t", &["1", "2"], &["3", "4"]).await;
    let (t1, t3) = (stored[0].published_at, stored[2].published_at);
    assert!(
        t3 >= stored[1].published_at + 1000,
        "publish times follow the engine clock"
    );
    let all = pull(&engine, "s", "c", 10).await;
    ack_all(&engine, "s", &all).await;

    let cases = [
        (t3, vec!["3", "4"]),
        (t3 - 500, vec!["3", "4"]),
        (t1, vec!["1", "2", "3", "4"]),
    ];
    for (at, want) in cases {
        engine
            .seek("s", SeekTarget::Time(at))
            .await
            .must("seek by time");
        let got = pull(&engine, "s", "c", 10).await;
        assert_eq!(
            bodies(&got),
            want,
            "after seeking to time {at} (t1 {t1}, t3 {t3})"
        );
        ack_all(&engine, "s", &got).await;
    }
    done(engine).await;
}

/// New subscriptions start at new messages, the earliest, a sequence or a time.
pub async fn start_positions(factory: &dyn EngineFactory) {
    let (engine, clock) = open(factory).await;
    create_topic(&engine, "t").await;
    let stored = publish_a_second_apart(&engine, &clock, "t", &["1", "2"], &["3"]).await;
    let t3 = stored[2].published_at;
    let caps = engine.capabilities();
    let mut expect = vec![
        ("new", StartPosition::New, vec!["4"]),
        (
            "earliest",
            StartPosition::Earliest,
            vec!["1", "2", "3", "4"],
        ),
    ];
    if caps.supports(Feature::SeekBySeq) {
        expect.push(("seq", StartPosition::Seq(2), vec!["2", "3", "4"]));
    }
    if caps.supports(Feature::SeekByTime) {
        expect.push(("time", StartPosition::Time(t3), vec!["3", "4"]));
    }
    for (name, start, _) in &expect {
        let config = SubscriptionConfig {
            start: *start,
            ..sub_config("t")
        };
        engine
            .create_subscription(name, config)
            .await
            .must(&format!("create_subscription starting at {start}"));
    }
    publish(&engine, "t", &["4"]).await;
    for (name, start, want) in expect {
        let got = pull(&engine, name, "c", 10).await;
        assert_eq!(bodies(&got), want, "subscription starting at {start}");
    }
    done(engine).await;
}
