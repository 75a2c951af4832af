//! One push subscription's delivery loop.
//!
//! The loop holds a permit of the subscription's `max_concurrent` before it
//! pulls, and waits for an instance of the service to be ready before it
//! leases anything: when every instance is down or its circuit is open,
//! messages stay in the subscription, unleased, and nothing spins. Each
//! request runs in its own task and settles its messages through the engine
//! by their lease tokens; the subscription's retry policy is the only retry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier_core::{Delivery, Engine, LeaseToken, PullRequest, PushConfig};
use courier_upstream::{Service, Upstreams};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::answer::{self, Verdict};
use crate::request::Signer;

/// The consumer name push delivery leases under (per-consumer limits and
/// `courier stats` show it).
pub const PUSH_CONSUMER: &str = "courier-push";

/// Counters of one push subscription; they outlive reconfigurations.
#[derive(Default)]
pub(crate) struct Counters {
    pub requests_in_flight: AtomicU64,
    pub messages_in_flight: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub released: AtomicU64,
    pub last_error: Mutex<Option<(u64, String)>>,
}

pub(crate) struct Worker {
    pub subscription: String,
    pub topic: String,
    pub config: PushConfig,
    pub engine: Arc<dyn Engine>,
    pub upstreams: Upstreams,
    pub counters: Arc<Counters>,
    pub pull_wait: Duration,
    /// Stops leasing (reconfiguration, deletion, shutdown).
    pub stop: CancellationToken,
    /// Cuts requests still running at the end of the shutdown grace; their
    /// messages are released.
    pub abort: CancellationToken,
    pub tracker: TaskTracker,
}

impl Worker {
    pub async fn run(self: Arc<Self>) {
        let signer = Arc::new(Signer::new(&self.subscription, &self.topic, &self.config));
        let permits = Arc::new(Semaphore::new(self.config.max_concurrent as usize));
        let batch = self.config.batch_size as usize;
        let mut warned_missing = false;
        let mut pull_failures = 0u32;
        loop {
            let Some(service) = self.upstreams.get(&self.config.service) else {
                if !warned_missing {
                    tracing::warn!(
                        subscription = %self.subscription,
                        service = %self.config.service,
                        "push subscription waits: no service of that name (define it in the config or register an instance)"
                    );
                    warned_missing = true;
                }
                // A service appears by configuration or registration; a
                // slow poll is enough for that, and costs nothing per message.
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            };
            warned_missing = false;
            let first = tokio::select! {
                () = self.stop.cancelled() => return,
                p = permits.clone().acquire_owned() => p.expect("never closed"),
            };
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = service.ready() => {}
            }
            let mut held = vec![first];
            while let Ok(p) = permits.clone().try_acquire_owned() {
                held.push(p);
                if held.len() * batch >= MAX_PULL {
                    break;
                }
            }
            let request = PullRequest {
                consumer: PUSH_CONSUMER.to_string(),
                max_messages: (held.len() * batch).min(MAX_PULL),
                wait: self.pull_wait,
            };
            // Pulls are cancel-safe (the engine contract): dropping this one
            // at shutdown leases nothing.
            let pulled = tokio::select! {
                () = self.stop.cancelled() => return,
                r = self.engine.pull(&self.subscription, request) => r,
            };
            let deliveries = match pulled {
                Ok(d) => {
                    pull_failures = 0;
                    d
                }
                Err(e) => {
                    pull_failures += 1;
                    if pull_failures == 1 || pull_failures.is_power_of_two() {
                        tracing::warn!(subscription = %self.subscription, error = %e, failures = pull_failures, "push: pull failed");
                    }
                    let backoff = Duration::from_millis(100 << pull_failures.min(6));
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => continue,
                    }
                }
            };
            let mut held = held.into_iter();
            let mut rest = deliveries;
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(batch));
                let group = std::mem::replace(&mut rest, tail);
                let permit = held.next().expect("one permit per batch pulled");
                let me = self.clone();
                let service = service.clone();
                let signer = signer.clone();
                self.tracker
                    .spawn(async move { me.deliver(&service, &signer, group, permit).await });
            }
        }
    }

    async fn deliver(
        &self,
        service: &Service,
        signer: &Signer,
        group: Vec<Delivery>,
        _permit: OwnedSemaphorePermit,
    ) {
        let n = group.len() as u64;
        self.counters
            .requests_in_flight
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .messages_in_flight
            .fetch_add(n, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = if self.config.batch_size == 1 {
            signer.single(&group[0], now)
        } else {
            signer.batch(&group, now)
        };
        let key = self.hash_key(&group[0]);
        let call = service.call(request, key.as_deref(), self.config.timeout);
        let verdicts = tokio::select! {
            r = call => if self.config.batch_size == 1 {
                vec![answer::single(&r)]
            } else {
                answer::batch(&r, &group)
            },
            () = self.abort.cancelled() => vec![Verdict::Release; group.len()],
        };
        self.settle(&group, verdicts).await;
        self.counters
            .requests_in_flight
            .fetch_sub(1, Ordering::Relaxed);
        self.counters
            .messages_in_flight
            .fetch_sub(n, Ordering::Relaxed);
    }

    /// What a consistent-hash balancer hashes: the header named by
    /// `hash_header`, else the ordering key.
    fn hash_key(&self, d: &Delivery) -> Option<Vec<u8>> {
        match &self.config.hash_header {
            Some(name) => d.message.headers.get(name).map(|v| v.as_bytes().to_vec()),
            None => d.message.key.as_ref().map(|k| k.as_bytes().to_vec()),
        }
    }

    /// Settles each message by its verdict, grouping tokens per engine call.
    async fn settle(&self, group: &[Delivery], verdicts: Vec<Verdict>) {
        let mut acks: Vec<LeaseToken> = Vec::new();
        let mut releases: Vec<LeaseToken> = Vec::new();
        for (d, verdict) in group.iter().zip(verdicts) {
            let token = std::slice::from_ref(&d.token);
            let sub = self.subscription.as_str();
            match verdict {
                Verdict::Ack => acks.push(d.token.clone()),
                Verdict::Release => releases.push(d.token.clone()),
                Verdict::Retry { delay, error } => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("courier_push_failures_total", "subscription" => sub.to_string())
                        .increment(1);
                    self.note_error(&error);
                    log_settle(
                        sub,
                        "nack",
                        self.engine.nack(sub, token, delay, Some(error)).await,
                    );
                }
                Verdict::DeadLetter { error } => {
                    self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("courier_push_dead_letters_total", "subscription" => sub.to_string())
                        .increment(1);
                    self.note_error(&error);
                    log_settle(
                        sub,
                        "reject",
                        self.engine.reject(sub, token, Some(error)).await,
                    );
                }
            }
        }
        let sub = self.subscription.as_str();
        if !acks.is_empty() {
            let n = acks.len() as u64;
            self.counters.delivered.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("courier_push_delivered_total", "subscription" => sub.to_string())
                .increment(n);
            log_settle(sub, "ack", self.engine.ack(sub, &acks).await);
        }
        if !releases.is_empty() {
            let n = releases.len() as u64;
            self.counters.released.fetch_add(n, Ordering::Relaxed);
            log_settle(sub, "release", self.engine.release(sub, &releases).await);
        }
    }

    fn note_error(&self, error: &str) {
        let now = courier_core::clock::wall_now();
        *self.counters.last_error.lock() = Some((now, error.to_string()));
    }
}

/// The most messages one pull asks for.
const MAX_PULL: usize = 1_000;

/// A settle that did not take effect is logged, not retried: a lease lost
/// means the message is redelivered anyway (at least once), and an engine
/// error leaves the lease to expire.
fn log_settle(
    subscription: &str,
    what: &str,
    result: courier_core::Result<Vec<courier_core::Outcome>>,
) {
    match result {
        Ok(outcomes) => {
            let lost = outcomes.iter().filter(|o| !o.is_ok()).count();
            if lost > 0 {
                tracing::debug!(
                    subscription,
                    what,
                    lost,
                    "push: lease gone before settling (the message is redelivered)"
                );
            }
        }
        Err(e) => {
            tracing::warn!(subscription, what, error = %e, "push: settle failed; the lease will expire")
        }
    }
}
