//! Active health checks: one background task per service that GETs the
//! configured path on every instance each `interval`.
//!
//! An instance is unknown (and counts as healthy) until its first check. It
//! becomes unhealthy after `unhealthy_threshold` consecutive failed checks
//! (non-2xx, error or timeout) and healthy again after `healthy_threshold`
//! consecutive successes. Checks use the service's connection pool but are
//! not calls: they count neither for the breaker nor for the bulkhead.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::call::HttpClient;
use crate::config::HealthCheck;
use crate::service::Service;

/// What the health checks say about an instance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not checked yet (or health checks are off): counts as healthy.
    Unknown,
    /// The last `healthy_threshold` checks succeeded.
    Healthy,
    /// The last `unhealthy_threshold` checks failed: takes no calls.
    Unhealthy,
}

/// One instance's health-check state.
#[derive(Debug)]
pub(crate) struct HealthState {
    status: Health,
    successes: u32,
    failures: u32,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            status: Health::Unknown,
            successes: 0,
            failures: 0,
        }
    }
}

impl HealthState {
    pub(crate) fn status(&self) -> Health {
        self.status
    }

    /// Whether the instance may take calls.
    pub(crate) fn is_up(&self) -> bool {
        self.status != Health::Unhealthy
    }

    /// Records one check; returns the new status when it changed.
    pub(crate) fn record(&mut self, ok: bool, config: &HealthCheck) -> Option<Health> {
        let next = if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            match self.status {
                Health::Unknown => Health::Healthy,
                Health::Unhealthy if self.successes >= config.healthy_threshold => Health::Healthy,
                status => status,
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= config.unhealthy_threshold {
                Health::Unhealthy
            } else {
                self.status
            }
        };
        (next != self.status).then(|| {
            self.status = next;
            next
        })
    }
}

/// Starts the health-check task of a service. It holds the service weakly
/// and ends when the service is dropped, or when aborted.
pub(crate) fn spawn(service: Weak<Service>, check: HealthCheck) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(check.interval.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(svc) = service.upgrade() else { return };
            let (client, targets) = svc.health_targets(&check.path);
            drop(svc);
            let mut probes = JoinSet::new();
            for (serial, uri) in targets {
                let client = client.clone();
                let timeout = check.timeout;
                probes.spawn(async move { (serial, probe(&client, uri, timeout).await) });
            }
            let results = probes.join_all().await;
            let Some(svc) = service.upgrade() else { return };
            for (serial, ok) in results {
                svc.record_health(serial, ok, &check);
            }
        }
    })
}

/// One check: a GET answered with 2xx, body read, within `timeout`.
async fn probe(client: &HttpClient, uri: Uri, timeout: Duration) -> bool {
    let Ok(request) = Request::get(uri).body(Full::new(Bytes::new())) else {
        return false;
    };
    let check = async {
        let response = client.request(request).await.ok()?;
        let ok = response.status().is_success();
        // Reading the body hands the connection back to the pool.
        response.into_body().collect().await.ok()?;
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let cfg = HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthCheck::default()
        };
        let mut h = HealthState::default();
        assert!(h.is_up());
        assert_eq!(h.record(false, &cfg), None);
        assert_eq!(h.record(false, &cfg), None);
        assert_eq!(h.record(false, &cfg), Some(Health::Unhealthy));
        assert!(!h.is_up());
        assert_eq!(h.record(true, &cfg), None);
        assert_eq!(h.record(true, &cfg), Some(Health::Healthy));
        assert_eq!(h.record(false, &cfg), None);
        assert_eq!(h.record(true, &cfg), None);
    }
}
