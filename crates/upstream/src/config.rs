//! The settings of one service: one serde tree with a default on every field.
//!
//! Durations are written as integer milliseconds (`connect_timeout = 1000`);
//! the field names carry no unit suffix, so every duration field documents it.
//! [`ServiceConfig::problem`] says why a tree cannot work; [`Upstreams::define`]
//! does not refuse one (it clamps nonsense to something harmless), so callers
//! that load configuration check `problem()` first.
//!
//! [`Upstreams::define`]: crate::Upstreams::define

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a service picks the instance for a call. Every policy skips
/// instances that cannot take a call now (see [`crate::balance`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each ready instance in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx): instance `i` gets
    /// `weight_i / sum(weights)` of the calls, interleaved rather than in bursts.
    Weighted,
    /// The ready instance with the fewest calls in flight.
    LeastRequest,
    /// Consistent hashing of the call's key on a ring of virtual nodes: a key
    /// stays on its instance while that instance is there and ready.
    RingHash,
    /// Power of two random choices, comparing peak-EWMA latency × (in flight + 1).
    P2cEwma,
}

/// The settings of one service. Reconfiguring a service with
/// [`Upstreams::define`](crate::Upstreams::define) keeps its instances and
/// their state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// The balancing policy; `round_robin` by default.
    pub balance: Balance,
    /// The bulkhead: at most this many calls in flight to one instance
    /// (default 256). An instance at its limit is skipped by the balancer.
    pub max_concurrent_per_instance: u32,
    /// How long establishing a TCP connection may take, in milliseconds
    /// (default 1000).
    #[serde(with = "millis")]
    pub connect_timeout: Duration,
    /// `false` (default): HTTP/1.1 with keep-alive, a pool of connections per
    /// instance. `true`: HTTP/2 over cleartext with prior knowledge (h2c),
    /// one multiplexed connection per instance.
    pub http2: bool,
    /// Active health checks; none by default (instances count as healthy).
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection: ejection after consecutive failures.
    pub outlier: OutlierDetection,
    /// The per-instance circuit breaker on the failure rate.
    pub breaker: BreakerConfig,
    /// How long an instance registered at run time stays without a heartbeat,
    /// in milliseconds (default 30 000). Static instances never expire.
    #[serde(with = "millis")]
    pub instance_ttl: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            balance: Balance::RoundRobin,
            max_concurrent_per_instance: 256,
            connect_timeout: Duration::from_secs(1),
            http2: false,
            health_check: None,
            outlier: OutlierDetection::default(),
            breaker: BreakerConfig::default(),
            instance_ttl: Duration::from_secs(30),
        }
    }
}

/// Active health checking: a background task GETs `path` on every instance
/// every `interval`. A 2xx answer within `timeout` is a success; anything
/// else (other status, error, timeout) a failure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheck {
    /// Path (and query) to GET, appended to the instance's base URL
    /// (default `/health`).
    pub path: String,
    /// Time between two rounds of checks, in milliseconds (default 5000).
    #[serde(with = "millis")]
    pub interval: Duration,
    /// How long one check may take, in milliseconds (default 1000).
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy instance healthy (default 2).
    pub healthy_threshold: u32,
    /// Consecutive failures that make an instance unhealthy (default 3).
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/health".to_owned(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// Passive outlier detection on the calls themselves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive failed calls that eject an instance (default 5; 0 turns
    /// outlier detection off).
    pub consecutive_failures: u32,
    /// How long the first ejection lasts, in milliseconds (default 10 000).
    /// Each further ejection doubles it, up to `max_ejection`.
    #[serde(with = "millis")]
    pub ejection: Duration,
    /// The longest ejection, in milliseconds (default 300 000).
    #[serde(with = "millis")]
    pub max_ejection: Duration,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// The per-instance circuit breaker: it opens when, over the last `window`,
/// at least `min_requests` calls were made and at least `failure_rate` of
/// them failed; after `open_for` it lets `half_open_probes` calls through and
/// closes when all of them succeed, or opens again on the first failure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// The sliding window over which the failure rate is measured, in
    /// milliseconds (default 10 000).
    #[serde(with = "millis")]
    pub window: Duration,
    /// Fewest calls in the window before the breaker may open (default 20).
    pub min_requests: u32,
    /// Failure rate in `0..=1` that opens the breaker (default 0.5).
    pub failure_rate: f64,
    /// How long the breaker stays open before probing, in milliseconds
    /// (default 5000).
    #[serde(with = "millis")]
    pub open_for: Duration,
    /// Calls let through while half-open; all must succeed to close (default 3).
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_requests: 20,
            failure_rate: 0.5,
            open_for: Duration::from_secs(5),
            half_open_probes: 3,
        }
    }
}

impl ServiceConfig {
    /// Why these settings cannot work, or `None` when they can.
    pub fn problem(&self) -> Option<String> {
        let zero = |d: Duration| d.is_zero();
        if self.max_concurrent_per_instance == 0 {
            return Some("max_concurrent_per_instance must be at least 1".into());
        }
        if zero(self.connect_timeout) {
            return Some("connect_timeout must be more than 0 ms".into());
        }
        if zero(self.instance_ttl) {
            return Some("instance_ttl must be more than 0 ms".into());
        }
        if let Some(check) = &self.health_check {
            if !check.path.starts_with('/') {
                return Some(format!(
                    "health_check.path must start with '/' (got {:?})",
                    check.path
                ));
            }
            if zero(check.interval) || zero(check.timeout) {
                return Some("health_check.interval and timeout must be more than 0 ms".into());
            }
            if check.healthy_threshold == 0 || check.unhealthy_threshold == 0 {
                return Some(
                    "health_check.healthy_threshold and unhealthy_threshold must be at least 1"
                        .into(),
                );
            }
        }
        let outlier = &self.outlier;
        if outlier.consecutive_failures > 0 {
            if zero(outlier.ejection) {
                return Some("outlier.ejection must be more than 0 ms".into());
            }
            if outlier.max_ejection < outlier.ejection {
                return Some(format!(
                    "outlier.max_ejection ({} ms) is shorter than outlier.ejection ({} ms)",
                    outlier.max_ejection.as_millis(),
                    outlier.ejection.as_millis()
                ));
            }
        }
        let breaker = &self.breaker;
        if !(0.0..=1.0).contains(&breaker.failure_rate) {
            return Some(format!(
                "breaker.failure_rate must be within 0..=1 (got {})",
                breaker.failure_rate
            ));
        }
        if zero(breaker.window) || zero(breaker.open_for) {
            return Some("breaker.window and breaker.open_for must be more than 0 ms".into());
        }
        if breaker.min_requests == 0 {
            return Some("breaker.min_requests must be at least 1".into());
        }
        if breaker.half_open_probes == 0 {
            return Some("breaker.half_open_probes must be at least 1".into());
        }
        None
    }
}

/// Serde for durations as integer milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
