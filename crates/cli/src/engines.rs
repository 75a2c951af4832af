//! Opening the engine the configuration names. The binary is where engines
//! are wired in: the server sees only `dyn Engine`, and each engine parses
//! and checks its own `[engine.<kind>]` section.

use std::sync::Arc;

use courier_core::Engine;
use courier_embedded::{EmbeddedConfig, EmbeddedEngine};
use courier_server::{EngineConfig, EngineKind};

use crate::{exit, Failure};

/// The embedded engine's settings from `[engine.embedded]`, checked.
pub(crate) fn embedded_config(config: &EngineConfig) -> Result<EmbeddedConfig, Failure> {
    let settings: EmbeddedConfig = config
        .embedded
        .clone()
        .try_into()
        .map_err(|e| Failure::usage(format!("invalid [engine.embedded] settings: {e}")))?;
    settings
        .validate()
        .map_err(|e| Failure::usage(format!("invalid [engine.embedded] settings: {e}")))?;
    // Zero turns these timers off, which only tests want: a served broker
    // would keep its journal and its expired messages forever.
    if settings.checkpoint_interval.is_zero() || settings.retention_interval.is_zero() {
        return Err(Failure::usage(
            "engine.embedded.checkpoint_interval and retention_interval must be above 0 ms",
        ));
    }
    Ok(settings)
}

/// Checks the chosen engine's section without opening anything.
pub(crate) fn check(config: &EngineConfig) -> Result<(), Failure> {
    match config.kind {
        EngineKind::Embedded => embedded_config(config).map(|_| ()),
    }
}

pub(crate) async fn open(config: &EngineConfig) -> Result<Arc<dyn Engine>, Failure> {
    match config.kind {
        EngineKind::Embedded => {
            let settings = embedded_config(config)?;
            let dir = settings.data_dir.clone();
            let engine = EmbeddedEngine::open(settings).await.map_err(|e| {
                Failure::new(
                    exit::FAILED,
                    format!("cannot open the data directory {}: {e}", dir.display()),
                )
            })?;
            Ok(engine)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_section_is_parsed_and_checked_by_its_engine() {
        let mut config = EngineConfig::default();
        assert_eq!(embedded_config(&config).unwrap(), EmbeddedConfig::default());
        config.set_embedded("data_dir", "/tmp/x");
        assert_eq!(
            embedded_config(&config).unwrap().data_dir,
            std::path::PathBuf::from("/tmp/x")
        );
        config.set_embedded("segment_bytes", 10);
        let err = embedded_config(&config).unwrap_err().message;
        assert!(err.contains("segment_bytes"), "{err}");
        let mut config = EngineConfig::default();
        config.set_embedded("datadir", "x");
        let err = embedded_config(&config).unwrap_err().message;
        assert!(err.contains("unknown field"), "{err}");
    }
}
