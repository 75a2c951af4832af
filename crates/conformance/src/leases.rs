//! Leases and fencing: only the current lease's token settles or extends a
//! message; every other token gets an outcome saying why not.

use std::slice::from_ref;

use courier_core::{Feature, Outcome};

use crate::helpers::*;
use crate::EngineFactory;

/// A pull leases for the ack deadline; acking with the current token settles
/// the message for good.
pub async fn ack_with_current_token_settles_the_message(factory: &dyn EngineFactory) {
    let (engine, clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["m"]).await;

    let before = clock.now();
    let d = only(pull(&engine, "s", "a", 10).await, "first pull");
    let after = clock.now();
    let deadline = ACK_DEADLINE.as_millis() as u64;
    assert!(
        (before + deadline..=after + deadline).contains(&d.lease_deadline),
        "lease_deadline {} must be the pull time ({before}..={after}) plus the ack deadline",
        d.lease_deadline
    );
    assert_eq!(subscription(&engine, "s").await.in_flight, 1);
    assert_eq!(
        ack(&engine, "s", from_ref(&d.token)).await,
        vec![Outcome::Ok]
    );
    let info = subscription(&engine, "s").await;
    assert_eq!(
        (info.in_flight, info.backlog, info.ack_floor),
        (0, 0, 2),
        "after the ack"
    );
    advance(ACK_DEADLINE * 10).await;
    assert!(
        pull(&engine, "s", "b", 10).await.is_empty(),
        "an acked message must never be redelivered"
    );
    done(engine).await;
}

/// A token whose lease expired settles nothing: it gets `LeaseLost` before
/// and after the message is leased again, and the new lease is untouched.
/// For ack, nack and extend alike.
pub async fn expired_lease_token_is_lease_lost(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    for op in Op::ALL {
        let (topic, sub) = (format!("t-{}", op.name()), format!("s-{}", op.name()));
        topic_and_sub(&engine, &topic, &sub, sub_config(&topic)).await;
        publish(&engine, &topic, &["m"]).await;
        let a = only(pull(&engine, &sub, "a", 1).await, "first pull");

        advance(ACK_DEADLINE + MS).await;
        assert_eq!(
            op.apply(&engine, &sub, from_ref(&a.token)).await,
            vec![Outcome::LeaseLost],
            "{} with a token whose lease expired (message not leased again yet)",
            op.name()
        );
        advance(BACKOFF).await;
        let b = only(
            pull(&engine, &sub, "b", 1).await,
            &format!(
                "redelivery after the expired lease and a {} with its token",
                op.name()
            ),
        );
        assert_eq!(b.message.seq, a.message.seq);
        assert_eq!(b.attempt, 2, "the expired lease was attempt 1");
        assert_ne!(b.token, a.token, "a new lease must get a new token");
        assert_eq!(
            op.apply(&engine, &sub, from_ref(&a.token)).await,
            vec![Outcome::LeaseLost],
            "{} with the expired token while another consumer holds the message",
            op.name()
        );
        assert!(
            pull(&engine, &sub, "c", 1).await.is_empty(),
            "{} with a stale token must not release or settle b's lease",
            op.name()
        );
        assert_eq!(
            op.apply(&engine, &sub, from_ref(&b.token)).await,
            vec![Outcome::Ok],
            "{} with the current token after a stale one",
            op.name()
        );
    }
    done(engine).await;
}

/// A message put back from the dead letters is pending and not leased since:
/// a token from before gets `NotLeased` (and `NotFound` while it was dead).
pub async fn replayed_message_token_is_not_leased(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    if lacks(
        &engine,
        &[Feature::DeadLetterReplay],
        "replayed_message_token_is_not_leased",
    ) {
        return;
    }
    for op in Op::ALL {
        let (topic, sub) = (format!("t-{}", op.name()), format!("s-{}", op.name()));
        topic_and_sub(&engine, &topic, &sub, sub_config_attempts(&topic, 1)).await;
        publish(&engine, &topic, &["m"]).await;
        let d = only(pull(&engine, &sub, "a", 1).await, "first pull");
        assert_eq!(
            nack(&engine, &sub, from_ref(&d.token), "fail").await,
            vec![Outcome::Ok]
        );
        wait_dead_lettered(&engine, &sub, d.message.seq).await;
        assert_eq!(
            op.apply(&engine, &sub, from_ref(&d.token)).await,
            vec![Outcome::NotFound],
            "{} with the token of a dead-lettered message",
            op.name()
        );

        let replayed = engine.replay_dead_letters(&sub, None).await.must("replay");
        assert_eq!(replayed, 1);
        assert_eq!(
            op.apply(&engine, &sub, from_ref(&d.token)).await,
            vec![Outcome::NotLeased],
            "{} with a token from before the replay, the message not leased since",
            op.name()
        );
        let again = only(pull(&engine, &sub, "a", 1).await, "pull after replay");
        assert_ne!(
            again.token, d.token,
            "the lease after a replay must not reuse an old token"
        );
        assert_eq!(
            op.apply(&engine, &sub, from_ref(&again.token)).await,
            vec![Outcome::Ok],
            "{} with the token of the lease after the replay",
            op.name()
        );
    }
    done(engine).await;
}

/// Tokens of settled messages, and tokens the engine never made, get
/// `NotFound`; they disturb nothing.
pub async fn settled_or_foreign_token_is_not_found(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    for op in Op::ALL {
        let (topic, sub) = (format!("t-{}", op.name()), format!("s-{}", op.name()));
        topic_and_sub(&engine, &topic, &sub, sub_config(&topic)).await;
        publish(&engine, &topic, &["m1", "m2"]).await;
        let ds = pull(&engine, &sub, "a", 2).await;
        assert_eq!(ds.len(), 2);
        ack_all(&engine, &sub, &ds[..1]).await;
        assert_eq!(
            op.apply(&engine, &sub, &[ds[0].token.clone()]).await,
            vec![Outcome::NotFound],
            "{} with the token of an acked message",
            op.name()
        );
        assert_eq!(
            op.apply(&engine, &sub, &[foreign_token()]).await,
            vec![Outcome::NotFound],
            "{} with a token the engine never made",
            op.name()
        );
        assert_eq!(
            op.apply(&engine, &sub, &[ds[1].token.clone()]).await,
            vec![Outcome::Ok],
            "{} with a current token after unknown ones",
            op.name()
        );
    }
    done(engine).await;
}

/// One call with mixed tokens answers one outcome per token, in order, and
/// acts on the current ones only.
pub async fn outcomes_follow_token_order(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["1", "2", "3", "4"]).await;
    let early = only(pull(&engine, "s", "a", 1).await, "first pull");
    advance(ACK_DEADLINE / 2).await;
    let late = pull(&engine, "s", "b", 3).await;
    assert_eq!(seqs(&late), vec![2, 3, 4]);
    // The first lease expires; the later three are still current.
    advance(ACK_DEADLINE / 2 + MS).await;
    let outcomes = ack(
        &engine,
        "s",
        &[
            late[1].token.clone(),
            early.token.clone(),
            foreign_token(),
            late[0].token.clone(),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            Outcome::Ok,
            Outcome::LeaseLost,
            Outcome::NotFound,
            Outcome::Ok
        ],
        "ack [current 3, expired 1, foreign, current 2]"
    );
    assert_eq!(
        ack(
            &engine,
            "s",
            &[late[0].token.clone(), late[2].token.clone()]
        )
        .await,
        vec![Outcome::NotFound, Outcome::Ok],
        "ack [already acked 2, current 4]"
    );
    done(engine).await;
}

/// Extending pushes the deadline: the lease outlives its old deadline and its
/// token still acks; an unextended lease of the same pull expires.
pub async fn extend_keeps_the_lease_past_its_old_deadline(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["kept", "dropped"]).await;
    let ds = pull(&engine, "s", "a", 2).await;
    assert_eq!(bodies(&ds), vec!["kept", "dropped"]);

    advance(ACK_DEADLINE - BACKOFF).await;
    let extended = engine
        .extend("s", &[ds[0].token.clone()], ACK_DEADLINE)
        .await
        .must("extend");
    assert_eq!(extended, vec![Outcome::Ok]);
    // Past the old deadline, before the new one.
    advance(ACK_DEADLINE - BACKOFF).await;
    let other = pull(&engine, "s", "b", 10).await;
    assert!(
        !bodies(&other).contains(&"kept".to_string()),
        "the extended message was redelivered before its new deadline"
    );
    assert_eq!(
        ack(&engine, "s", &[ds[0].token.clone(), ds[1].token.clone()]).await,
        vec![Outcome::Ok, Outcome::LeaseLost],
        "the extended token is current, the unextended one expired"
    );
    ack_all(&engine, "s", &other).await;

    if engine.capabilities().supports(Feature::LeaseExtension) {
        // Longer than the ack deadline, on a subscription of its own.
        topic_and_sub(&engine, "t2", "s2", sub_config("t2")).await;
        publish(&engine, "t2", &["long"]).await;
        let d = only(pull(&engine, "s2", "a", 1).await, "pull");
        let by = ACK_DEADLINE * 6;
        let extended = engine
            .extend("s2", from_ref(&d.token), by)
            .await
            .must("extend");
        assert_eq!(extended, vec![Outcome::Ok]);
        advance(by - MS).await;
        assert!(
            pull(&engine, "s2", "b", 1).await.is_empty(),
            "a lease extended by {by:?} is held until then"
        );
        assert_eq!(
            ack(&engine, "s2", from_ref(&d.token)).await,
            vec![Outcome::Ok]
        );
    }
    done(engine).await;
}

/// Acks and leases are durable: after a reopen an acked message stays acked,
/// a leased one stays leased to the same token, the rest is delivered.
pub async fn acks_and_leases_survive_reopen(factory: &dyn EngineFactory) {
    let (engine, clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["1", "2", "3", "4"]).await;
    let ds = pull(&engine, "s", "a", 2).await;
    assert_eq!(seqs(&ds), vec![1, 2]);
    ack_all(&engine, "s", &ds[..1]).await;

    let Some(engine) = factory.reopen(engine, clock.clone()).await else {
        eprintln!("skipping acks_and_leases_survive_reopen: the engine cannot reopen");
        return;
    };
    let rest = pull(&engine, "s", "b", 10).await;
    assert_eq!(
        seqs(&rest),
        vec![3, 4],
        "after a reopen: 1 was acked and 2 is still leased"
    );
    assert!(rest.iter().all(|d| d.attempt == 1));
    assert_eq!(
        ack(&engine, "s", &[ds[1].token.clone()]).await,
        vec![Outcome::Ok],
        "a lease granted before the reopen is still current after it"
    );
    assert_eq!(subscription(&engine, "s").await.ack_floor, 3);
    done(engine).await;
}

/// A stale and the current token of one message in one call: the current one
/// acts, the stale one is `lease_lost`, whichever comes first; the same
/// token twice acts once.
pub async fn stale_and_current_tokens_in_one_call(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    topic_and_sub(&engine, "t", "s", sub_config("t")).await;
    publish(&engine, "t", &["1", "2"]).await;
    let first = pull(&engine, "s", "a", 2).await;
    assert_eq!(seqs(&first), vec![1, 2]);
    advance(ACK_DEADLINE + MS).await;
    advance(BACKOFF).await;
    let again = pull(&engine, "s", "b", 2).await;
    assert_eq!(seqs(&again), vec![1, 2], "both redelivered");
    let outcomes = ack(
        &engine,
        "s",
        &[
            again[0].token.clone(),
            first[0].token.clone(),
            first[1].token.clone(),
            again[1].token.clone(),
            again[1].token.clone(),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            Outcome::Ok,
            Outcome::LeaseLost,
            Outcome::LeaseLost,
            Outcome::Ok,
            Outcome::Ok
        ],
        "ack [current 1, stale 1, stale 2, current 2, current 2 again]"
    );
    let info = engine.subscription("s").await.unwrap();
    assert_eq!(info.acked_total, 2, "each message settled once");
}
