//! One named service: its instances and their state, selection, readiness
//! and stats. The call path itself is in [`crate::call`].
//!
//! All of a service's mutable state sits behind one `std::sync::Mutex`
//! (never held across an `.await`): choosing an instance and taking its
//! bulkhead slot and probe slot must be one atomic step, and recording an
//! outcome touches the breaker, the outlier state and the load estimate
//! together. Each critical section is a few field updates over the
//! instances of one service.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::Uri;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::balance::{Balancer, Candidate};
use crate::breaker::Ticket;
use crate::call::{self, HttpClient};
use crate::config::{HealthCheck, ServiceConfig};
use crate::error::CallError;
use crate::health::{self, Health};
use crate::instance::{Entry, Instance, Registration};
use crate::registry;
use crate::stats::ServiceStats;

/// A named service: the instances that serve it and how calls reach them.
/// Get one from [`Upstreams::define`](crate::Upstreams::define).
#[derive(Debug)]
pub struct Service {
    name: String,
    state: Mutex<State>,
    /// Readiness may have changed: an instance was added, a call finished,
    /// a circuit closed, a health status changed, the config changed.
    /// [`Service::ready`] waits on it.
    pub(crate) changed: Notify,
    /// A registration happened: the expiry task recomputes its next timer.
    pub(crate) registrations: Arc<Notify>,
    tasks: Mutex<Tasks>,
}

#[derive(Debug)]
struct State {
    config: ServiceConfig,
    client: HttpClient,
    entries: Vec<Entry>,
    next_serial: u64,
    balancer: Balancer,
}

#[derive(Debug, Default)]
struct Tasks {
    health: Option<JoinHandle<()>>,
    expiry: Option<JoinHandle<()>>,
}

/// A call's hold on one instance: its bulkhead slot and, when half-open, its
/// probe slot. Settled with the call's outcome; dropped unsettled (the
/// caller went away), it gives both slots back without an outcome.
pub(crate) struct Lease<'a> {
    service: &'a Service,
    serial: u64,
    ticket: Ticket,
    settled: bool,
    pub(crate) instance: String,
    pub(crate) target: Result<Uri, String>,
    pub(crate) client: HttpClient,
    pub(crate) http2: bool,
}

/// How a call that reached an instance ended, for its accounting.
pub(crate) struct Outcome {
    /// Timeout, connection error, or 5xx.
    pub(crate) failed: bool,
    /// The latency to feed the load estimate; `None` when the instance was
    /// never reached (a connection error says nothing about its speed).
    pub(crate) latency: Option<Duration>,
}

impl Service {
    pub(crate) fn new(name: &str, config: ServiceConfig) -> Self {
        let seed = RandomState::new().hash_one(name);
        Service {
            name: name.to_owned(),
            state: Mutex::new(State {
                client: call::client(&config),
                config,
                entries: Vec::new(),
                next_serial: 0,
                balancer: Balancer::new(seed),
            }),
            changed: Notify::new(),
            registrations: Arc::new(Notify::new()),
            tasks: Mutex::new(Tasks::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's current settings.
    pub fn config(&self) -> ServiceConfig {
        self.state().config.clone()
    }

    /// Adds an instance from configuration, or updates the one with its id
    /// (it becomes static). Static instances never expire. An instance whose
    /// URL changed starts with fresh state.
    pub fn add_static(&self, instance: Instance) {
        self.upsert(instance, None);
        self.changed.notify_waiters();
    }

    /// Registers an instance at run time, or refreshes the registration of
    /// the one with its id (a heartbeat is a register again). It expires
    /// after the service's `instance_ttl` without a heartbeat. Registering
    /// the id of a static instance updates its URL and weight; it stays
    /// static.
    pub fn register(&self, instance: Instance) -> Registration {
        let ttl = self.state().config.instance_ttl;
        let (id, created, expires_at) = self.upsert(instance, Some(ttl));
        self.registrations.notify_waiters();
        self.changed.notify_waiters();
        Registration {
            id,
            created,
            ttl,
            expires_at,
        }
    }

    /// Inserts or updates an instance; `ttl` is `None` for static ones.
    /// Returns (id, created, expires_at).
    fn upsert(&self, instance: Instance, ttl: Option<Duration>) -> (String, bool, Option<Instant>) {
        let now = Instant::now();
        let mut guard = self.state();
        let st = &mut *guard;
        let id = instance.id.clone();
        let existing = st.entries.iter().position(|e| e.instance.id == id);
        let expires_at = |old: Option<Option<Instant>>| match (old, ttl) {
            // Static stays static.
            (Some(None), _) | (_, None) => None,
            (_, Some(ttl)) => Some(now + ttl),
        };
        match existing {
            Some(i) if st.entries[i].instance.url == instance.url => {
                let entry = &mut st.entries[i];
                entry.expires_at = expires_at(Some(entry.expires_at));
                if entry.instance.weight != instance.weight {
                    entry.instance.weight = instance.weight;
                    st.balancer.membership_changed();
                }
                (id, false, entry.expires_at)
            }
            _ => {
                let expires = expires_at(existing.map(|i| st.entries[i].expires_at));
                let serial = st.next_serial;
                st.next_serial += 1;
                let entry = Entry::new(serial, instance, expires, now);
                metrics::gauge!("courier_upstream_instance_healthy",
                    "service" => self.name.clone(), "instance" => id.clone())
                .set(1.0);
                match existing {
                    Some(i) => st.entries[i] = entry,
                    None => st.entries.push(entry),
                }
                st.balancer.membership_changed();
                (id, existing.is_none(), expires)
            }
        }
    }

    /// Extends the registration of an instance by `instance_ttl`; false when
    /// the id is unknown (never registered, or already expired).
    pub fn heartbeat(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut st = self.state();
        let ttl = st.config.instance_ttl;
        let Some(entry) = st.entries.iter_mut().find(|e| e.instance.id == id) else {
            return false;
        };
        match entry.expires_at {
            None => true,
            Some(_) if entry.expired(now) => false,
            Some(_) => {
                entry.expires_at = Some(now + ttl);
                true
            }
        }
    }

    /// Removes an instance, static or registered; false when it was unknown.
    /// Calls in flight to it finish; their outcomes are dropped.
    pub fn deregister(&self, id: &str) -> bool {
        let mut st = self.state();
        let before = st.entries.len();
        st.entries.retain(|e| e.instance.id != id);
        let removed = st.entries.len() != before;
        if removed {
            st.balancer.membership_changed();
        }
        removed
    }

    /// Completes when at least one instance could take a call now (healthy,
    /// not ejected, circuit closed or half-open with a probe slot free, under
    /// its concurrency limit). It does not poll: it sleeps until a state
    /// change is announced or until the earliest timer that could make an
    /// instance ready (an ejection's end, a breaker's open period's end).
    pub async fn ready(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so no change between the check
            // and the wait is missed.
            notified.as_mut().enable();
            let wake_at = {
                let mut guard = self.state();
                let st = &mut *guard;
                let now = Instant::now();
                let mut wake_at: Option<Instant> = None;
                for entry in &mut st.entries {
                    entry.refresh(now, &self.name);
                    if entry.admits(now, &st.config) {
                        return;
                    }
                    wake_at = match (wake_at, entry.wake_at()) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                wake_at
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Whether an instance could take a call now (see [`Service::ready`]).
    pub fn has_ready_instance(&self) -> bool {
        let mut guard = self.state();
        let st = &mut *guard;
        let now = Instant::now();
        st.entries.iter_mut().any(|entry| {
            entry.refresh(now, &self.name);
            entry.admits(now, &st.config)
        })
    }

    /// A snapshot of the service and its instances.
    pub fn stats(&self) -> ServiceStats {
        let mut guard = self.state();
        let st = &mut *guard;
        let now = Instant::now();
        ServiceStats {
            name: self.name.clone(),
            balance: st.config.balance,
            instances: st
                .entries
                .iter_mut()
                .map(|entry| {
                    entry.refresh(now, &self.name);
                    entry.stats(now)
                })
                .collect(),
        }
    }

    /// Chooses an instance for a call to `path_and_query` and takes its
    /// slots, or says that none can take it.
    pub(crate) fn acquire(
        &self,
        key: Option<&[u8]>,
        path_and_query: Option<&PathAndQuery>,
    ) -> Result<Lease<'_>, CallError> {
        let mut guard = self.state();
        let st = &mut *guard;
        let now = Instant::now();
        for entry in &mut st.entries {
            entry.refresh(now, &self.name);
        }
        let candidates: Vec<Candidate<'_>> = st
            .entries
            .iter()
            .map(|e| Candidate {
                id: &e.instance.id,
                ready: e.admits(now, &st.config),
                weight: e.weight(),
                in_flight: e.in_flight,
                cost: e.ewma.estimate_ms(now) * f64::from(e.in_flight + 1),
            })
            .collect();
        let chosen = st.balancer.pick(st.config.balance, &candidates, key);
        drop(candidates);
        let Some(i) = chosen else {
            return Err(CallError::NoInstance);
        };
        let entry = &mut st.entries[i];
        entry.in_flight += 1;
        let ticket = entry.breaker.admit();
        in_flight_gauge(&self.name, entry);
        Ok(Lease {
            service: self,
            serial: entry.serial,
            ticket,
            settled: false,
            instance: entry.instance.id.clone(),
            target: entry.target(path_and_query),
            client: st.client.clone(),
            http2: st.config.http2,
        })
    }

    /// Gives a call's slots back and, when it has one, accounts its outcome.
    fn settle(&self, serial: u64, ticket: Ticket, outcome: Option<Outcome>) {
        let now = Instant::now();
        {
            let mut guard = self.state();
            let st = &mut *guard;
            // The instance may have been removed while the call was in flight.
            let Some(entry) = st.entries.iter_mut().find(|e| e.serial == serial) else {
                return;
            };
            entry.in_flight = entry.in_flight.saturating_sub(1);
            in_flight_gauge(&self.name, entry);
            match outcome {
                None => entry.breaker.cancel(ticket),
                Some(outcome) => {
                    entry.requests_total += 1;
                    entry.failures_total += u64::from(outcome.failed);
                    if let Some(latency) = outcome.latency {
                        entry.ewma.observe(now, latency);
                    }
                    let circuit =
                        entry
                            .breaker
                            .record(now, ticket, outcome.failed, &st.config.breaker);
                    if let Some(state) = circuit {
                        entry.circuit_changed(&self.name, state);
                    }
                    let ejected = entry
                        .outlier
                        .record(now, outcome.failed, &st.config.outlier);
                    if let Some(length) = ejected {
                        tracing::warn!(
                            service = %self.name,
                            instance = %entry.instance.id,
                            ejection_ms = length.as_millis() as u64,
                            "instance ejected after consecutive failures"
                        );
                    }
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// The health-check URI of every live instance, and the pool to use.
    pub(crate) fn health_targets(&self, path: &str) -> (HttpClient, Vec<(u64, Uri)>) {
        let now = Instant::now();
        let path = PathAndQuery::from_str(path).ok();
        let st = self.state();
        let targets = st
            .entries
            .iter()
            .filter(|e| !e.expired(now))
            .filter_map(|e| Some((e.serial, e.target(path.as_ref()).ok()?)))
            .collect();
        (st.client.clone(), targets)
    }

    /// Records one health check of the instance `serial`.
    pub(crate) fn record_health(&self, serial: u64, ok: bool, check: &HealthCheck) {
        let changed = {
            let mut st = self.state();
            let Some(entry) = st.entries.iter_mut().find(|e| e.serial == serial) else {
                return;
            };
            let Some(status) = entry.health.record(ok, check) else {
                return;
            };
            let (service, instance) = (self.name.as_str(), entry.instance.id.as_str());
            match status {
                Health::Unhealthy => tracing::warn!(service, instance, "instance unhealthy"),
                Health::Healthy => tracing::info!(service, instance, "instance healthy"),
                Health::Unknown => {}
            }
            metrics::gauge!("courier_upstream_instance_healthy",
                "service" => service.to_owned(), "instance" => instance.to_owned())
            .set(if status == Health::Unhealthy {
                0.0
            } else {
                1.0
            });
            true
        };
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Drops the registered instances whose TTL has passed; returns when the
    /// next one expires.
    pub(crate) fn expire(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut st = self.state();
        let before = st.entries.len();
        st.entries.retain(|e| {
            let expired = e.expired(now);
            if expired {
                tracing::info!(service = %self.name, instance = %e.instance.id,
                    "registered instance expired without a heartbeat");
            }
            !expired
        });
        if st.entries.len() != before {
            st.balancer.membership_changed();
        }
        st.entries.iter().filter_map(|e| e.expires_at).min()
    }

    /// Applies new settings, keeping instances and their state.
    pub(crate) fn reconfigure(self: &Arc<Self>, config: ServiceConfig) {
        let restart_health = {
            let mut st = self.state();
            if st.config.http2 != config.http2
                || st.config.connect_timeout != config.connect_timeout
            {
                st.client = call::client(&config);
            }
            if st.config.balance != config.balance {
                st.balancer.membership_changed();
            }
            let restart = st.config.health_check != config.health_check;
            if config.health_check.is_none() {
                for entry in &mut st.entries {
                    entry.health = Default::default();
                }
            }
            st.config = config;
            restart
        };
        if restart_health {
            self.start_health();
        }
        self.changed.notify_waiters();
    }

    /// Starts the background tasks (expiry, and health checks when
    /// configured). Without a Tokio runtime there are none: expired instances
    /// are then only skipped, and instances are never checked.
    pub(crate) fn start_tasks(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(service = %self.name, "no Tokio runtime: no health checks nor expiry task");
            return;
        }
        let expiry = registry::spawn_expiry(Arc::downgrade(self), self.registrations.clone());
        self.tasks()
            .expiry
            .replace(expiry)
            .inspect(JoinHandle::abort);
        self.start_health();
    }

    fn start_health(self: &Arc<Self>) {
        let check = self.state().config.health_check.clone();
        let task = match check {
            Some(check) if tokio::runtime::Handle::try_current().is_ok() => {
                Some(health::spawn(Arc::downgrade(self), check))
            }
            _ => None,
        };
        let old = std::mem::replace(&mut self.tasks().health, task);
        if let Some(old) = old {
            old.abort();
        }
    }

    fn tasks(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the background tasks.
    pub(crate) fn stop_tasks(&self) {
        let mut tasks = self.tasks();
        for task in [tasks.health.take(), tasks.expiry.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

impl Lease<'_> {
    /// Ends the call with its outcome.
    pub(crate) fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        self.service.settle(self.serial, self.ticket, Some(outcome));
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.service.settle(self.serial, self.ticket, None);
        }
    }
}

fn in_flight_gauge(service: &str, entry: &Entry) {
    metrics::gauge!("courier_upstream_in_flight",
        "service" => service.to_owned(), "instance" => entry.instance.id.clone())
    .set(f64::from(entry.in_flight));
}
