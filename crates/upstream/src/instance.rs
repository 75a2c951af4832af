//! Instances: what discovery knows of one (id, base URL, weight), and the
//! state the service keeps for it (health, ejection, breaker, load).

use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::Uri;
use tokio::time::Instant;

use crate::balance::PeakEwma;
use crate::breaker::{Breaker, CircuitState};
use crate::config::ServiceConfig;
use crate::health::HealthState;
use crate::outlier::Outlier;
use crate::stats::{InstanceStats, Registered};

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Unique within its service; names the instance in stats, logs, metrics
    /// and [`Reply::instance`](crate::Reply::instance).
    pub id: String,
    /// The base URL, e.g. `http://127.0.0.1:8081` or `http://host:80/prefix`;
    /// a call's path and query are appended to it.
    pub url: Uri,
    /// Relative share of calls under `weighted` and `ring_hash` (default 1;
    /// 0 counts as 1).
    pub weight: u32,
}

impl Instance {
    /// An instance of weight 1.
    pub fn new(id: impl Into<String>, url: Uri) -> Self {
        Instance {
            id: id.into(),
            url,
            weight: 1,
        }
    }

    /// The same instance with another weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// What [`Service::register`](crate::Service::register) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The instance's id.
    pub id: String,
    /// True when the instance was new, false when it was refreshed.
    pub created: bool,
    /// How long it stays without another heartbeat.
    pub ttl: Duration,
    /// When it expires without a heartbeat (monotonic clock); `None` when the
    /// id belongs to a static instance, which never expires.
    pub expires_at: Option<Instant>,
}

/// The state a service keeps for one instance. Every field is guarded by
/// the service's lock.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Unique for the service's lifetime: a call in flight finds its entry
    /// by serial, so an instance removed and added again is a new entry.
    pub(crate) serial: u64,
    pub(crate) instance: Instance,
    /// `None` for static instances.
    pub(crate) expires_at: Option<Instant>,
    pub(crate) health: HealthState,
    pub(crate) outlier: Outlier,
    pub(crate) breaker: Breaker,
    pub(crate) ewma: PeakEwma,
    pub(crate) in_flight: u32,
    pub(crate) requests_total: u64,
    pub(crate) failures_total: u64,
}

impl Entry {
    pub(crate) fn new(
        serial: u64,
        instance: Instance,
        expires_at: Option<Instant>,
        now: Instant,
    ) -> Self {
        Entry {
            serial,
            instance,
            expires_at,
            health: HealthState::default(),
            outlier: Outlier::default(),
            breaker: Breaker::new(now),
            ewma: PeakEwma::new(now),
            in_flight: 0,
            requests_total: 0,
            failures_total: 0,
        }
    }

    pub(crate) fn weight(&self) -> u32 {
        self.instance.weight.max(1)
    }

    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Applies what time alone changes: the end of an ejection, an open
    /// breaker turning half-open. Logs and exports each change.
    pub(crate) fn refresh(&mut self, now: Instant, service: &str) {
        if self.outlier.refresh(now) {
            tracing::info!(service, instance = %self.instance.id, "instance readmitted after ejection");
        }
        if let Some(state) = self.breaker.refresh(now) {
            self.circuit_changed(service, state);
        }
    }

    /// Logs and exports a new circuit state.
    pub(crate) fn circuit_changed(&self, service: &str, state: CircuitState) {
        let instance = self.instance.id.as_str();
        match state {
            CircuitState::Open => tracing::warn!(service, instance, "circuit opened"),
            CircuitState::HalfOpen => tracing::info!(service, instance, "circuit half-open"),
            CircuitState::Closed => tracing::info!(service, instance, "circuit closed"),
        }
        metrics::gauge!("courier_upstream_circuit_state",
            "service" => service.to_owned(), "instance" => instance.to_owned())
        .set(state.gauge());
    }

    /// Whether the instance can take a call now (after [`refresh`](Self::refresh)).
    pub(crate) fn admits(&self, now: Instant, config: &ServiceConfig) -> bool {
        !self.expired(now)
            && self.health.is_up()
            && self.outlier.ejected_until().is_none()
            && self.breaker.admits(&config.breaker)
            && self.in_flight < config.max_concurrent_per_instance.max(1)
    }

    /// The next moment time alone could make this instance ready.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        match (self.outlier.ejected_until(), self.breaker.open_until()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The absolute URI of a call to `path_and_query` on this instance.
    pub(crate) fn target(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, String> {
        let base = &self.instance.url;
        let authority = base
            .authority()
            .ok_or_else(|| format!("instance URL {base} has no host"))?;
        let prefix = base.path().trim_end_matches('/');
        let rest = path_and_query.map_or("/", PathAndQuery::as_str);
        let slash = if rest.starts_with('/') { "" } else { "/" };
        Uri::builder()
            .scheme(base.scheme().cloned().unwrap_or(Scheme::HTTP))
            .authority(authority.clone())
            .path_and_query(format!("{prefix}{slash}{rest}"))
            .build()
            .map_err(|e| format!("cannot build a URI on {base}: {e}"))
    }

    pub(crate) fn stats(&self, now: Instant) -> InstanceStats {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        InstanceStats {
            id: self.instance.id.clone(),
            url: self.instance.url.to_string(),
            weight: self.instance.weight,
            registered: match self.expires_at {
                None => Registered::Static,
                Some(at) => Registered::Expiring {
                    expires_in_ms: millis(at.saturating_duration_since(now)),
                },
            },
            health: self.health.status(),
            ejected_until: self.outlier.ejected_until(),
            ejected_for_ms: self
                .outlier
                .ejected_until()
                .map(|at| millis(at.saturating_duration_since(now))),
            circuit: self.breaker.state(),
            in_flight: self.in_flight,
            ewma_latency_ms: self.ewma.estimate_ms(now),
            requests_total: self.requests_total,
            failures_total: self.failures_total,
        }
    }
}
