//! Discovery: the registry of named services, and the expiry of instances
//! registered at run time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ServiceConfig;
use crate::service::Service;

/// The registry of named services. Cloning is cheap and shares the registry.
#[derive(Clone, Debug, Default)]
pub struct Upstreams {
    services: Arc<Mutex<HashMap<String, Arc<Service>>>>,
}

impl Upstreams {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn services(&self) -> MutexGuard<'_, HashMap<String, Arc<Service>>> {
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the service `name`, or reconfigures it in place, keeping its
    /// instances and their state. Starts its background tasks (expiry, and
    /// health checks when configured) on the current Tokio runtime.
    ///
    /// The settings are not validated here: check [`ServiceConfig::problem`]
    /// when loading them. Nonsense values are clamped to something harmless.
    pub fn define(&self, name: &str, config: ServiceConfig) -> Arc<Service> {
        if let Some(problem) = config.problem() {
            tracing::warn!(
                service = name,
                problem,
                "service defined with settings that cannot work"
            );
        }
        let mut services = self.services();
        if let Some(service) = services.get(name) {
            service.reconfigure(config);
            return Arc::clone(service);
        }
        let service = Arc::new(Service::new(name, config));
        service.start_tasks();
        services.insert(name.to_owned(), Arc::clone(&service));
        service
    }

    /// The service `name`, if defined.
    pub fn get(&self, name: &str) -> Option<Arc<Service>> {
        self.services().get(name).cloned()
    }

    /// Removes the service `name` and stops its tasks; false when it was not
    /// defined. Holders of its `Arc` may still call it.
    pub fn remove(&self, name: &str) -> bool {
        let removed = self.services().remove(name);
        if let Some(service) = &removed {
            service.stop_tasks();
        }
        removed.is_some()
    }

    /// All services, by name.
    pub fn list(&self) -> Vec<Arc<Service>> {
        let mut list: Vec<_> = self.services().values().cloned().collect();
        list.sort_by(|a, b| a.name().cmp(b.name()));
        list
    }

    /// Stops every service's health-check and expiry tasks (at shutdown).
    /// The services still answer calls; expired instances are then only
    /// skipped, not removed.
    pub fn shutdown(&self) {
        for service in self.services().values() {
            service.stop_tasks();
        }
    }
}

/// Starts the task that drops registered instances whose TTL passed. It
/// sleeps until the earliest expiry, or until a registration announces a new
/// one; it holds the service weakly and ends when the service is dropped.
pub(crate) fn spawn_expiry(service: Weak<Service>, registrations: Arc<Notify>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let registered = registrations.notified();
            tokio::pin!(registered);
            registered.as_mut().enable();
            let next = match service.upgrade() {
                Some(service) => service.expire(),
                None => return,
            };
            // Without registered instances, wake now and then anyway: cheap,
            // and it bounds the cost of any missed announcement.
            let next = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                () = &mut registered => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
    })
}
