//! Push settings: the engine stores them with the subscription (the push
//! dispatcher reads them); they change with updates like the rest and change
//! nothing else.

use std::slice::from_ref;
use std::time::Duration;

use courier_core::{Feature, Outcome, PushConfig, SubscriptionConfig, SubscriptionUpdate};

use crate::helpers::*;
use crate::EngineFactory;

/// `SubscriptionUpdate.push`: absent keeps, `Some(None)` removes, a value sets.
type PushChange = Option<Option<PushConfig>>;

fn push_config(service: &str) -> PushConfig {
    PushConfig {
        service: service.to_string(),
        path: "/events?v=1".into(),
        batch_size: 10,
        max_concurrent: 4,
        timeout: Duration::from_millis(2_500),
        secret: Some("whsec_c2VjcmV0".into()),
        bearer_token: Some("token".into()),
        hash_header: Some("tenant".into()),
    }
}

/// Push settings come back as given after create, after updates that set,
/// change and remove them (leaving leases and position alone), after an
/// update of other settings, and after a reopen.
pub async fn push_settings_round_trip(factory: &dyn EngineFactory) {
    let (engine, clock) = open(factory).await;
    let config = SubscriptionConfig {
        push: Some(push_config("billing")),
        ..sub_config("t")
    };
    topic_and_sub(&engine, "t", "s", config).await;
    topic_and_sub(&engine, "u", "plain", sub_config("u")).await;
    let info = subscription(&engine, "s").await;
    assert_eq!(
        info.config.push,
        Some(push_config("billing")),
        "after create"
    );
    assert_eq!(subscription(&engine, "plain").await.config.push, None);
    let listed = engine.list_subscriptions().await.must("list_subscriptions");
    assert_eq!(
        listed
            .iter()
            .find(|s| s.name == "s")
            .map(|s| &s.config.push),
        Some(&Some(push_config("billing"))),
        "listed"
    );

    if engine.capabilities().supports(Feature::SubscriptionUpdate) {
        publish(&engine, "t", &["1", "2", "3"]).await;
        let held = only(
            pull(&engine, "s", "a", 1).await,
            "a lease across the updates",
        );
        let before = subscription(&engine, "s").await;
        let steps: [(&str, PushChange, Option<PushConfig>); 4] = [
            (
                "change",
                Some(Some(push_config("ledger"))),
                Some(push_config("ledger")),
            ),
            ("remove", Some(None), None),
            (
                "set",
                Some(Some(push_config("billing"))),
                Some(push_config("billing")),
            ),
            ("keep", None, Some(push_config("billing"))),
        ];
        for (what, push, expected) in steps {
            let update = SubscriptionUpdate {
                push,
                // "keep" changes another setting and leaves push out.
                max_in_flight: (what == "keep").then_some(500),
                ..SubscriptionUpdate::default()
            };
            let answered = engine
                .update_subscription("s", update)
                .await
                .must(&format!("update ({what} push)"));
            assert_eq!(answered.config.push, expected, "answered after {what}");
            let after = subscription(&engine, "s").await;
            assert_eq!(after.config, answered.config, "stored after {what}");
            assert_eq!(
                (
                    after.ack_floor,
                    after.backlog,
                    after.in_flight,
                    after.delivered_total
                ),
                (
                    before.ack_floor,
                    before.backlog,
                    before.in_flight,
                    before.delivered_total
                ),
                "an update of push settings ({what}) keeps position and leases"
            );
        }
        assert_eq!(
            subscription(&engine, "s").await.config.max_in_flight,
            500,
            "the other setting changed with push kept"
        );
        let rest = pull(&engine, "s", "b", 10).await;
        assert_eq!(seqs(&rest), vec![2, 3], "the held lease is still out");
        assert_eq!(
            ack(&engine, "s", from_ref(&held.token)).await,
            vec![Outcome::Ok],
            "a lease from before the updates is still current"
        );
        ack_all(&engine, "s", &rest).await;
    }

    let Some(engine) = factory.reopen(engine, clock).await else {
        eprintln!("skipping the reopen part of push_settings_round_trip: the engine cannot reopen");
        return;
    };
    assert_eq!(
        subscription(&engine, "s").await.config.push,
        Some(push_config("billing")),
        "after a reopen"
    );
    assert_eq!(subscription(&engine, "plain").await.config.push, None);
    done(engine).await;
}

/// Push settings that cannot work are refused with `invalid_argument`, on
/// create and on update, and change nothing.
pub async fn invalid_push_settings_are_refused(factory: &dyn EngineFactory) {
    let (engine, _clock) = open(factory).await;
    create_topic(&engine, "t").await;
    let bad: [(&str, PushConfig); 6] = [
        ("no service", push_config("")),
        (
            "a relative path",
            PushConfig {
                path: "events".into(),
                ..push_config("x")
            },
        ),
        (
            "batch_size 0",
            PushConfig {
                batch_size: 0,
                ..push_config("x")
            },
        ),
        (
            "max_concurrent 0",
            PushConfig {
                max_concurrent: 0,
                ..push_config("x")
            },
        ),
        (
            "a zero timeout",
            PushConfig {
                timeout: Duration::ZERO,
                ..push_config("x")
            },
        ),
        (
            "a timeout as long as the ack deadline",
            PushConfig {
                timeout: sub_config("t").ack_deadline,
                ..push_config("x")
            },
        ),
    ];
    for (what, push) in &bad {
        let config = SubscriptionConfig {
            push: Some(push.clone()),
            ..sub_config("t")
        };
        expect_code(
            engine.create_subscription("s", config).await,
            "invalid_argument",
            &format!("create with push settings with {what}"),
        );
        expect_code(
            engine.subscription("s").await,
            "subscription_not_found",
            &format!("the refused create ({what}) made nothing"),
        );
    }
    engine
        .create_subscription("s", sub_config("t"))
        .await
        .must("create_subscription");
    if engine.capabilities().supports(Feature::SubscriptionUpdate) {
        for (what, push) in bad {
            let update = SubscriptionUpdate {
                push: Some(Some(push)),
                ..SubscriptionUpdate::default()
            };
            expect_code(
                engine.update_subscription("s", update).await,
                "invalid_argument",
                &format!("update with push settings with {what}"),
            );
            assert_eq!(subscription(&engine, "s").await.config.push, None);
        }
    }
    done(engine).await;
}
