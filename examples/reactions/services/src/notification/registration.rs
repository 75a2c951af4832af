//! Keeps this instance in Courier's `notifications` service and makes sure
//! the topics and the push subscription exist.
//!
//! At start (retried until Courier answers): the `reactions` and
//! `notifications` topics, the service's settings (short ejections, so a
//! notification service back from an outage gets traffic within seconds),
//! the push subscription (batches of up to 32, from the earliest message, so
//! events published before it existed are delivered too; never dead-letters), and the
//! instance. Then a heartbeat, re-registering when Courier forgot the
//! instance (a Courier restart). At shutdown it leaves the service.

use std::time::Duration;

use courier_client::wire::InstanceRegistration;
use courier_client::Client;
use courier_core::{PushConfig, RetryPolicy, StartPosition, SubscriptionConfig, TopicConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::event::{
    NOTIFICATIONS_SERVICE, NOTIFICATIONS_TOPIC, PUSH_PATH, PUSH_SUBSCRIPTION, REACTIONS_TOPIC,
};

pub struct Registration {
    pub url: String,
    pub instance_id: String,
    pub secret: String,
    pub heartbeat: Duration,
}

pub async fn run(courier: Client, reg: Registration, shutdown: CancellationToken) {
    loop {
        match setup(&courier, &reg).await {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "cannot set up Courier yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
    tracing::info!(url = %reg.url, id = %reg.instance_id, "registered in Courier service '{NOTIFICATIONS_SERVICE}'");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(reg.heartbeat) => {}
            _ = shutdown.cancelled() => break,
        }
        if let Err(e) = courier
            .heartbeat(NOTIFICATIONS_SERVICE, &reg.instance_id)
            .await
        {
            tracing::warn!(error = %e, "heartbeat failed; registering again");
            if let Err(e) = setup(&courier, &reg).await {
                tracing::warn!(error = %e, "cannot register again yet");
            }
        }
    }
    let _ = courier
        .deregister(NOTIFICATIONS_SERVICE, &reg.instance_id)
        .await;
}

async fn setup(courier: &Client, reg: &Registration) -> courier_client::Result<()> {
    let reactions = TopicConfig {
        dedup_window: Duration::from_secs(3600),
        ..TopicConfig::default()
    };
    courier.create_topic(REACTIONS_TOPIC, &reactions).await?;
    courier
        .create_topic(NOTIFICATIONS_TOPIC, &TopicConfig::default())
        .await?;
    courier
        .define_service(
            NOTIFICATIONS_SERVICE,
            &json!({
                "instance_ttl": 10_000,
                "outlier": {"consecutive_failures": 5, "ejection": 500, "max_ejection": 2000},
                "breaker": {"window": 5000, "min_requests": 20, "failure_rate": 0.5,
                            "open_for": 1000, "half_open_probes": 3},
            }),
        )
        .await?;
    let subscription = SubscriptionConfig {
        start: StartPosition::Earliest,
        ack_deadline: Duration::from_secs(30),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            multiplier: 2.0,
            max_attempts: 0,
            jitter: 0.2,
        },
        push: Some(PushConfig {
            service: NOTIFICATIONS_SERVICE.into(),
            path: PUSH_PATH.into(),
            // Batches: after an outage the backlog drains with one
            // transaction and one real-time publish per 32 events.
            batch_size: 32,
            max_concurrent: 16,
            timeout: Duration::from_secs(5),
            secret: Some(reg.secret.clone()),
            ..PushConfig::default()
        }),
        ..SubscriptionConfig::for_topic(REACTIONS_TOPIC)
    };
    match courier
        .create_subscription(PUSH_SUBSCRIPTION, &subscription)
        .await
    {
        Ok(_) => {}
        // Made by an earlier start, perhaps with other settings: keep it.
        Err(courier_client::Error::Api { problem }) if problem.status == 409 => {}
        Err(e) => return Err(e),
    }
    courier
        .register_instance(
            NOTIFICATIONS_SERVICE,
            &InstanceRegistration {
                url: reg.url.clone(),
                id: Some(reg.instance_id.clone()),
                weight: None,
            },
        )
        .await?;
    Ok(())
}
