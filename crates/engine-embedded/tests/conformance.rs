//! The conformance suite (`crates/conformance`) against the embedded engine:
//! one test per behaviour, each on fresh engines in temporary directories.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use courier_conformance::EngineFactory;
use courier_core::{Clock, Engine};
use courier_embedded::{EmbeddedConfig, EmbeddedEngine};
use parking_lot::Mutex;
use tempfile::TempDir;

/// Opens embedded engines in temporary directories that live as long as the
/// factory (one per test), and finds an engine's directory again to reopen it.
#[derive(Default)]
struct Embedded {
    dirs: Mutex<Vec<TempDir>>,
    opened: Mutex<Vec<(Weak<EmbeddedEngine>, PathBuf)>>,
}

fn crate_factory() -> Embedded {
    Embedded::default()
}

fn config(dir: &Path) -> EmbeddedConfig {
    EmbeddedConfig {
        data_dir: dir.to_path_buf(),
        segment_bytes: 1 << 20,
        // No background timers: on tokio's paused clock a pending timer fires
        // whenever the runtime idles waiting for the disk, making time jump.
        // Pulls and acks collect expired leases; retention is applied by
        // `enforce_retention`.
        tick_interval: Duration::ZERO,
        checkpoint_interval: Duration::ZERO,
        retention_interval: Duration::ZERO,
        ..EmbeddedConfig::default()
    }
}

impl Embedded {
    async fn open_in(&self, dir: PathBuf, clock: Clock) -> Arc<EmbeddedEngine> {
        let engine = EmbeddedEngine::open_with_clock(config(&dir), clock)
            .await
            .unwrap_or_else(|e| panic!("opening the embedded engine in {}: {e}", dir.display()));
        self.opened.lock().push((Arc::downgrade(&engine), dir));
        engine
    }

    /// The concrete engine behind `engine`, and its directory.
    fn find(&self, engine: &Arc<dyn Engine>) -> (Arc<EmbeddedEngine>, PathBuf) {
        let wanted = Arc::as_ptr(engine) as *const ();
        self.opened
            .lock()
            .iter()
            .find(|(weak, _)| weak.as_ptr() as *const () == wanted)
            .and_then(|(weak, dir)| Some((weak.upgrade()?, dir.clone())))
            .expect("an engine this factory did not open")
    }
}

#[async_trait]
impl EngineFactory for Embedded {
    async fn open(&self, clock: Clock) -> Arc<dyn Engine> {
        let dir = TempDir::new().expect("a temporary directory");
        let path = dir.path().to_path_buf();
        self.dirs.lock().push(dir);
        self.open_in(path, clock).await
    }

    async fn reopen(&self, engine: Arc<dyn Engine>, clock: Clock) -> Option<Arc<dyn Engine>> {
        let (_, dir) = self.find(&engine);
        engine.shutdown().await.expect("shutdown before reopening");
        drop(engine);
        Some(self.open_in(dir, clock).await)
    }

    async fn unreachable(&self) -> Option<Arc<dyn Engine>> {
        None
    }

    async fn enforce_retention(&self, engine: &Arc<dyn Engine>) {
        let (engine, _) = self.find(engine);
        engine.enforce_retention().expect("enforce_retention");
    }
}

courier_conformance::conformance_tests!(crate_factory());
