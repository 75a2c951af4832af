//! Courier's core: the domain types, the [`Engine`] trait every storage engine
//! implements, and the subscription state machine that the embedded engine
//! drives (leases, retries, ordering keys, delays, dead-lettering).

pub mod clock;
pub mod engine;
pub mod error;
pub mod subscription;
pub mod types;

pub use clock::Clock;
pub use engine::Engine;
pub use error::{Error, ErrorKind, Result};
pub use types::*;
