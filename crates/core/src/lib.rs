//! Courier's core: the nouns every engine and transport shares, the
//! [`Engine`] contract, its [`Capabilities`] and its errors. The state
//! machines that keep the contract belong to each engine.

pub mod capabilities;
pub mod clock;
pub mod engine;
pub mod error;
pub mod push;
mod retry;
pub mod types;

pub use capabilities::{Capabilities, Feature};
pub use clock::Clock;
pub use engine::{Engine, Tail};
pub use error::{Error, ErrorKind, Result};
pub use push::PushConfig;
pub use types::*;
