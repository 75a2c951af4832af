//! Dead letters: messages that ran out of attempts move to the dead-letter
//! topic with `courier-dlq-*` headers, and can be replayed.

use std::collections::BTreeSet;
use std::slice::from_ref;

use courier_core::types::dlq_headers;
use courier_core::{Feature, Outcome, SubscriptionConfig};

use crate::helpers::*;
use crate::EngineFactory;

/// After `max_attempts` failures the message lands in `<sub>.dlq` with its
/// body, key and headers, plus headers naming where it came from and why;
/// the subscription settles it.
pub async fn exhausted_message_is_dead_lettered_with_headers(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config_attempts("t", 2)).await;
    let mut poison = keyed("k", "poison");
    poison.headers.insert("h".into(), "v".into());
    let receipt = publish_messages(&engine, "t", vec![poison]).await.remove(0);
    publish(&engine, "t", &["fine"]).await;

    let ds = pull(&engine, "s", "c", 2).await;
    assert_eq!(bodies(&ds), vec!["poison", "fine"]);
    ack_all(&engine, "s", &ds[1..]).await;
    assert_eq!(
        nack(&engine, "s", &[ds[0].token.clone()], "boom 1").await,
        vec![Outcome::Ok]
    );
    advance(BACKOFF).await;
    let d = only(pull(&engine, "s", "c", 1).await, "second attempt");
    assert_eq!(d.attempt, 2);
    assert_eq!(
        nack(&engine, "s", from_ref(&d.token), "boom 2").await,
        vec![Outcome::Ok]
    );

    let letter = wait_dead_lettered(&engine, "s", receipt.seq).await;
    let h = header_map(&letter);
    assert_eq!(h.get(dlq_headers::SUBSCRIPTION), Some(&"s"), "{h:?}");
    assert_eq!(h.get(dlq_headers::TOPIC), Some(&"t"), "{h:?}");
    assert_eq!(h.get(dlq_headers::SEQ), Some(&"1"), "{h:?}");
    assert_eq!(h.get(dlq_headers::ID), Some(&receipt.id.as_str()), "{h:?}");
    assert_eq!(h.get(dlq_headers::ATTEMPTS), Some(&"2"), "{h:?}");
    assert_eq!(
        h.get(dlq_headers::LAST_ERROR),
        Some(&"boom 2"),
        "the last nack's error: {h:?}"
    );
    assert_eq!(h.get(dlq_headers::KEY), Some(&"k"), "{h:?}");
    assert!(h.contains_key(dlq_headers::DEAD_LETTERED_AT), "{h:?}");
    assert_eq!(
        h.get("h"),
        Some(&"v"),
        "the message's own headers are kept: {h:?}"
    );
    assert_eq!(&letter.body[..], b"poison");
    assert_eq!(letter.key.as_deref(), Some("k"));

    let stored = read_all(&engine, "s.dlq").await;
    assert_eq!(
        stored,
        vec![letter],
        "the letter is stored in the topic s.dlq"
    );
    assert!(
        pull(&engine, "s", "c", 10).await.is_empty(),
        "a dead letter is not redelivered"
    );
    let info = subscription(&engine, "s").await;
    assert_eq!(
        (info.backlog, info.in_flight, info.dead_lettered_total),
        (0, 0, 1),
        "the subscription settled the dead letter"
    );
    done(engine).await;
}

/// Expired leases count against `max_attempts` too.
pub async fn an_expired_lease_can_exhaust_attempts(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config_attempts("t", 1)).await;
    publish(&engine, "t", &["slow"]).await;
    only(pull(&engine, "s", "c", 1).await, "first pull");
    advance(ACK_DEADLINE + BACKOFF).await;
    assert!(
        pull(&engine, "s", "c", 1).await.is_empty(),
        "a message whose only attempt expired must not be redelivered"
    );
    let letter = wait_dead_lettered(&engine, "s", 1).await;
    assert_eq!(header_map(&letter).get(dlq_headers::ATTEMPTS), Some(&"1"));
    done(engine).await;
}

/// `max_attempts: 0` retries for ever.
pub async fn max_attempts_zero_never_dead_letters(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    let mut config = sub_config_attempts("t", 0);
    config.retry.max_backoff = BACKOFF;
    topic_and_sub(&engine, "t", "s", config).await;
    publish(&engine, "t", &["m"]).await;
    for attempt in 1..=12 {
        let d = only(
            pull(&engine, "s", "c", 1).await,
            &format!("attempt {attempt}"),
        );
        assert_eq!(d.attempt, attempt);
        assert_eq!(
            nack(&engine, "s", &[d.token], "again").await,
            vec![Outcome::Ok]
        );
        advance(BACKOFF).await;
    }
    assert!(engine
        .dead_letters("s", 10)
        .await
        .must("dead_letters")
        .is_empty());
    done(engine).await;
}

/// `dead_letter_topic` sends the letters of a subscription to a topic of one's choice.
pub async fn dead_letter_topic_can_be_chosen(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    create_topic(&engine, "graveyard").await;
    let config = SubscriptionConfig {
        dead_letter_topic: Some("graveyard".into()),
        ..sub_config_attempts("t", 1)
    };
    topic_and_sub(&engine, "t", "s", config).await;
    publish(&engine, "t", &["m"]).await;
    let d = only(pull(&engine, "s", "c", 1).await, "first pull");
    assert_eq!(
        nack(&engine, "s", &[d.token], "no").await,
        vec![Outcome::Ok]
    );
    let letter = wait_dead_lettered(&engine, "s", 1).await;
    assert_eq!(
        read_all(&engine, "graveyard").await,
        vec![letter],
        "stored in graveyard"
    );
    assert!(
        stored_count(&engine, "s.dlq").await == 0,
        "nothing goes to the default dead-letter topic"
    );
    done(engine).await;
}

/// Replay puts dead letters back with fresh attempts (same message), the
/// listing empties, and a second replay replays nothing.
pub async fn replay_brings_dead_letters_back_with_fresh_attempts(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    if lacks(
        &engine,
        &[Feature::DeadLetterReplay],
        "replay_brings_dead_letters_back",
    ) {
        return;
    }
    topic_and_sub(&engine, "t", "s", sub_config_attempts("t", 2)).await;
    let receipt = publish(&engine, "t", &["poison"]).await.remove(0);
    for attempt in 1..=2 {
        let d = only(
            pull(&engine, "s", "c", 1).await,
            &format!("attempt {attempt}"),
        );
        assert_eq!(
            nack(&engine, "s", &[d.token], "boom").await,
            vec![Outcome::Ok]
        );
        advance(BACKOFF).await;
    }
    wait_dead_lettered(&engine, "s", 1).await;

    assert_eq!(
        engine.replay_dead_letters("s", None).await.must("replay"),
        1
    );
    assert!(
        engine
            .dead_letters("s", 10)
            .await
            .must("dead_letters")
            .is_empty(),
        "replayed letters are no longer listed"
    );
    let again = only(pull(&engine, "s", "c", 1).await, "pull after the replay");
    assert_eq!(
        (again.message.seq, again.message.id.as_str(), again.attempt),
        (receipt.seq, receipt.id.as_str(), 1),
        "the replayed message is the original, with fresh attempts"
    );
    assert_eq!(&again.message.body[..], b"poison");
    // Fresh attempts: it fails twice more before it is dead again.
    assert_eq!(
        nack(&engine, "s", &[again.token], "boom").await,
        vec![Outcome::Ok]
    );
    advance(BACKOFF).await;
    let third = only(pull(&engine, "s", "c", 1).await, "retry after the replay");
    assert_eq!(third.attempt, 2);
    ack_all(&engine, "s", &[third]).await;

    assert_eq!(
        engine
            .replay_dead_letters("s", None)
            .await
            .must("second replay"),
        0,
        "a second replay has nothing to replay"
    );
    assert!(
        pull(&engine, "s", "c", 1).await.is_empty(),
        "nothing came back twice"
    );
    done(engine).await;
}

/// `up_to` (a dead-letter topic sequence) replays only the letters up to it.
pub async fn replay_up_to_limits_the_replay(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    if lacks(
        &engine,
        &[Feature::DeadLetterReplay],
        "replay_up_to_limits_the_replay",
    ) {
        return;
    }
    topic_and_sub(&engine, "t", "s", sub_config_attempts("t", 1)).await;
    publish(&engine, "t", &["a", "b"]).await;
    let first = only(pull(&engine, "s", "c", 1).await, "pull a");
    assert_eq!(
        nack(&engine, "s", &[first.token], "no").await,
        vec![Outcome::Ok]
    );
    let letter_a = wait_dead_lettered(&engine, "s", 1).await;
    let second = only(pull(&engine, "s", "c", 1).await, "pull b");
    assert_eq!(
        nack(&engine, "s", &[second.token], "no").await,
        vec![Outcome::Ok]
    );
    let letter_b = wait_dead_lettered(&engine, "s", 2).await;
    assert!(letter_a.seq < letter_b.seq, "letters are stored in order");

    let replayed = engine
        .replay_dead_letters("s", Some(letter_a.seq))
        .await
        .must("replay up to a");
    assert_eq!(replayed, 1, "replay up to the first letter replays one");
    let left: BTreeSet<_> = engine
        .dead_letters("s", 10)
        .await
        .must("dead_letters")
        .into_iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(
        left,
        BTreeSet::from([letter_b.seq]),
        "b is still a dead letter"
    );
    let back = only(
        pull(&engine, "s", "c", 10).await,
        "pull after the partial replay",
    );
    assert_eq!(body(&back), "a");
    done(engine).await;
}
