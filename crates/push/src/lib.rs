//! Push delivery: for every subscription with push settings, Courier leases
//! messages itself and sends each one (or a batch) to an instance of a named
//! service through the resilient client (`courier-upstream`), then settles
//! it by its lease token: a 2xx acks, a failure nacks (the subscription's
//! retry policy decides when it comes back, and when it is dead-lettered), a
//! `Courier-Dead-Letter` answer rejects, and a message that never left
//! (no instance ready, connection refused, shutdown) is released without
//! spending an attempt.
//!
//! - `worker`: one delivery loop per push subscription.
//! - `request`: the HTTP request of a push (CloudEvents, batch, signature).
//! - `answer`: what an answer means for each message.
//!
//! [`Pusher`] keeps one worker per push subscription, in step with the
//! engine's subscriptions ([`Pusher::sync`] after any change), and drains
//! them at shutdown.

#![forbid(unsafe_code)]

mod answer;
mod request;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Engine, Millis, SubscriptionInfo};
use courier_upstream::Upstreams;
use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use worker::PUSH_CONSUMER;
use worker::{Counters, Worker};

/// Push delivery for every push subscription of one engine.
pub struct Pusher {
    engine: Arc<dyn Engine>,
    upstreams: Upstreams,
    pull_wait: Duration,
    running: Mutex<HashMap<String, Running>>,
    /// Counters survive a reconfiguration (the worker is replaced).
    counters: Mutex<HashMap<String, Arc<Counters>>>,
    abort: CancellationToken,
    tracker: TaskTracker,
    closed: std::sync::atomic::AtomicBool,
}

struct Running {
    /// The settings the worker runs with (and the topic it reads).
    config: courier_core::PushConfig,
    stop: CancellationToken,
}

/// What `GET /v1/subscriptions/{name}/push` and `courier stats` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushStats {
    pub subscription: String,
    pub service: String,
    /// Messages not yet settled (the engine's backlog).
    pub backlog: u64,
    /// Push requests running now, and the messages they carry.
    pub requests_in_flight: u64,
    pub messages_in_flight: u64,
    /// Messages acked by a 2xx.
    pub delivered_total: u64,
    /// Failed attempts (non-2xx answers, timeouts, broken connections).
    pub failed_total: u64,
    /// Messages dead-lettered on the receiver's request.
    pub dead_lettered_total: u64,
    /// Messages given back unspent (no instance ready, shutdown).
    pub released_total: u64,
    /// How long the oldest unsettled message has waited, in milliseconds.
    pub oldest_unacked_age: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<Millis>,
}

impl Pusher {
    /// `pull_wait` bounds how long a worker's pull waits for a message
    /// before it looks at its service again.
    pub fn new(engine: Arc<dyn Engine>, upstreams: Upstreams, pull_wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            engine,
            upstreams,
            pull_wait,
            running: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
            closed: false.into(),
        })
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Brings the workers in step with the engine's subscriptions: starts
    /// one for each new push subscription, restarts those whose settings
    /// changed, stops those gone or no longer pushed.
    pub async fn sync(&self) -> courier_core::Result<()> {
        let subs = self.engine.list_subscriptions().await?;
        let mut running = self.running.lock();
        running.retain(|name, r| {
            let keep = subs
                .iter()
                .any(|s| &s.name == name && s.config.push.as_ref() == Some(&r.config));
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for s in subs {
            if let Some(push) = &s.config.push {
                if !running.contains_key(&s.name) {
                    self.start(&mut running, &s, push.clone());
                }
            }
        }
        Ok(())
    }

    /// [`Self::sync`] for one subscription, after it was created or updated.
    pub fn sync_one(&self, info: &SubscriptionInfo) {
        let mut running = self.running.lock();
        match (&info.config.push, running.get(&info.name)) {
            (Some(push), Some(r)) if &r.config == push => {}
            (Some(push), _) => {
                if let Some(old) = running.remove(&info.name) {
                    old.stop.cancel();
                }
                self.start(&mut running, info, push.clone());
            }
            (None, Some(_)) => self.forget(&mut running, &info.name),
            (None, None) => {}
        }
    }

    /// Stops pushing a deleted subscription.
    pub fn remove(&self, name: &str) {
        self.forget(&mut self.running.lock(), name);
        self.counters.lock().remove(name);
    }

    fn forget(&self, running: &mut HashMap<String, Running>, name: &str) {
        if let Some(old) = running.remove(name) {
            old.stop.cancel();
        }
    }

    fn start(
        &self,
        running: &mut HashMap<String, Running>,
        info: &SubscriptionInfo,
        config: courier_core::PushConfig,
    ) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let counters = self
            .counters
            .lock()
            .entry(info.name.clone())
            .or_default()
            .clone();
        let stop = CancellationToken::new();
        let worker = Arc::new(Worker {
            subscription: info.name.clone(),
            topic: info.config.topic.clone(),
            config: config.clone(),
            engine: self.engine.clone(),
            upstreams: self.upstreams.clone(),
            counters,
            pull_wait: self.pull_wait,
            stop: stop.clone(),
            abort: self.abort.clone(),
            tracker: self.tracker.clone(),
        });
        tracing::info!(subscription = %info.name, service = %config.service, path = %config.path, "push delivery started");
        self.tracker.spawn(worker.run());
        running.insert(info.name.clone(), Running { config, stop });
    }

    /// Push statistics of one subscription; `None` when it is not pushed.
    pub async fn stats(&self, name: &str) -> courier_core::Result<Option<PushStats>> {
        let Some(service) = self
            .running
            .lock()
            .get(name)
            .map(|r| r.config.service.clone())
        else {
            return Ok(None);
        };
        let counters = self.counters.lock().get(name).cloned().unwrap_or_default();
        let info = self.engine.subscription(name).await?;
        let oldest_unacked_age = if info.backlog == 0 {
            None
        } else {
            // The ack floor is the oldest unsettled sequence.
            let oldest = self
                .engine
                .read(&info.config.topic, info.ack_floor, 1)
                .await?;
            oldest
                .first()
                .map(|m| courier_core::clock::wall_now().saturating_sub(m.published_at))
        };
        let last_error = counters.last_error.lock().clone();
        Ok(Some(PushStats {
            subscription: name.to_string(),
            service,
            backlog: info.backlog,
            requests_in_flight: counters.requests_in_flight.load(Ordering::Relaxed),
            messages_in_flight: counters.messages_in_flight.load(Ordering::Relaxed),
            delivered_total: counters.delivered.load(Ordering::Relaxed),
            failed_total: counters.failed.load(Ordering::Relaxed),
            dead_lettered_total: counters.dead_lettered.load(Ordering::Relaxed),
            released_total: counters.released.load(Ordering::Relaxed),
            oldest_unacked_age,
            last_error_at: last_error.as_ref().map(|(at, _)| *at),
            last_error: last_error.map(|(_, e)| e),
        }))
    }

    /// The names of the subscriptions being pushed.
    pub fn pushed(&self) -> Vec<String> {
        let mut names: Vec<String> = self.running.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// Stops leasing, lets pushes in flight finish within `grace`, then cuts
    /// the rest and releases their messages (no attempt spent, nothing
    /// dead-lettered because of the shutdown). Call before the engine shuts down.
    pub async fn shutdown(&self, grace: Duration) {
        self.closed.store(true, Ordering::Relaxed);
        for (_, r) in self.running.lock().drain() {
            r.stop.cancel();
        }
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "pushes still running after the shutdown grace; releasing their messages"
            );
            self.abort.cancel();
            self.tracker.wait().await;
        }
    }
}
