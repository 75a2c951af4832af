//! A snapshot of a service and its instances, for admin endpoints and tests.

use serde::Serialize;
use tokio::time::Instant;

use crate::breaker::CircuitState;
use crate::config::Balance;
use crate::health::Health;

/// A snapshot of one service.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ServiceStats {
    /// The service's name.
    pub name: String,
    /// Its balancing policy.
    pub balance: Balance,
    /// Its instances, in the order they were added.
    pub instances: Vec<InstanceStats>,
}

/// A snapshot of one instance.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct InstanceStats {
    /// The instance's id, unique within its service.
    pub id: String,
    /// Its base URL.
    pub url: String,
    /// Its weight.
    pub weight: u32,
    /// Whether it is static or expires.
    pub registered: Registered,
    /// What the health checks say.
    pub health: Health,
    /// Until when it is ejected by outlier detection (monotonic clock; not
    /// serialized, see `ejected_for_ms`).
    #[serde(skip)]
    pub ejected_until: Option<Instant>,
    /// How much longer it stays ejected, in milliseconds.
    pub ejected_for_ms: Option<u64>,
    /// The state of its circuit breaker.
    pub circuit: CircuitState,
    /// Calls in flight to it.
    pub in_flight: u32,
    /// Its peak-EWMA latency estimate, in milliseconds.
    pub ewma_latency_ms: f64,
    /// Calls that reached it (answered or failed), since it was added.
    pub requests_total: u64,
    /// Of those, the failures (timeout, connection error, 5xx).
    pub failures_total: u64,
}

/// How an instance came to be known.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Registered {
    /// From configuration: never expires.
    Static,
    /// Registered at run time: expires without a heartbeat.
    Expiring {
        /// Milliseconds until it expires.
        expires_in_ms: u64,
    },
}
