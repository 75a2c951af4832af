//! Courier's service client: every call Courier makes to a service (push
//! delivery to consumer services, gateway routes) goes through it. It knows
//! nothing of messages or engines.
//!
//! # The pieces
//!
//! - **Discovery** ([`Upstreams`], `registry`): named
//!   [`Service`]s, each with instances that are either static (from
//!   configuration, never expire) or registered at run time (expire after
//!   `instance_ttl` without a heartbeat; a background task drops them).
//! - **Health** (`health`): an optional background task per service that
//!   GETs a path on every instance; consecutive-failure and
//!   consecutive-success thresholds mark instances unhealthy and healthy.
//! - **Outlier detection** (`outlier`): passive; a run of failed calls ejects
//!   an instance for a time that doubles with each repeated ejection.
//! - **Circuit breaker** (`breaker`): per instance; opens on the failure
//!   rate over a sliding window, probes half-open with a few calls, closes
//!   when they succeed.
//! - **Bulkhead**: at most `max_concurrent_per_instance` calls in flight per
//!   instance; a full instance is skipped, never queued on.
//! - **Selection** (`balance`): round robin, smooth weighted round robin,
//!   least outstanding requests, ring hash on a per-call key, and power of
//!   two choices on peak-EWMA latency. Every policy considers only *ready*
//!   instances: healthy, not ejected, circuit closed or half-open with a
//!   probe slot free, under the concurrency limit.
//! - **Pool and call path** (`call`): one hyper-util client per service with
//!   keep-alive (HTTP/1.1) or one multiplexed h2c connection per instance.
//!
//! # How a call flows
//!
//! [`Service::call`] takes the service's lock once to refresh time-driven
//! state (ejections ending, open circuits turning half-open), pick a ready
//! instance and take its bulkhead slot (and probe slot when half-open). It
//! then sends the request with the instance's base URL prepended, under the
//! per-call timeout, and reads the whole body. It takes the lock again to
//! settle: a timeout, connection error, broken connection or 5xx is a
//! failure for the breaker and outlier detection, any other answer a
//! success; the latency feeds the load estimate; the slots are released and
//! waiters on [`Service::ready`] are woken. Nothing is retried: the caller
//! owns retries, and [`CallError`] says whether the request may have
//! reached the instance. A caller that gives up mid-call (drops the future)
//! releases the slots without an outcome.
//!
//! Time is Tokio's clock (`tokio::time::Instant`) throughout, so tests can
//! pause it.
//!
//! # Logs and metrics
//!
//! One log line per state change (circuit opened, half-open, closed;
//! instance ejected, readmitted; health changed; registered instance
//! expired), none per call. Metrics: `courier_upstream_requests_total`
//! {service, instance, outcome = success | client_error | server_error |
//! timeout | connect_error | io_error | no_instance},
//! `courier_upstream_request_duration_seconds` {service, instance},
//! `courier_upstream_in_flight` {service, instance},
//! `courier_upstream_circuit_state` {service, instance} (0 closed,
//! 1 half-open, 2 open), `courier_upstream_instance_healthy`
//! {service, instance} (1 or 0).

#![warn(missing_docs, unreachable_pub)]

mod balance;
mod breaker;
mod call;
mod config;
mod error;
mod health;
mod instance;
mod outlier;
mod registry;
mod service;
mod stats;

pub use breaker::CircuitState;
pub use call::{Reply, UpstreamClient};
pub use config::{Balance, BreakerConfig, HealthCheck, OutlierDetection, ServiceConfig};
pub use error::CallError;
pub use health::Health;
pub use instance::{Instance, Registration};
pub use registry::Upstreams;
pub use service::Service;
pub use stats::{InstanceStats, Registered, ServiceStats};
