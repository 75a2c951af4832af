//! A typed async client for Courier's HTTP API. [`wire`] is the `courier-api`
//! crate: the request and response types the server shares with this client.
//!
//! ```no_run
//! # async fn demo() -> courier_client::Result<()> {
//! use courier_client::{Client, Publish, wire::PullBody};
//! let client = Client::new("http://127.0.0.1:7070")?;
//! client.publish("orders", "hello", &Publish::default()).await?;
//! for d in client.pull("orders-worker", &PullBody::default()).await? {
//!     client.ack("orders-worker", &[d.token]).await?;
//! }
//! # Ok(()) }
//! ```
//!

#![forbid(unsafe_code)]

pub use courier_api as wire;

pub mod push;

#[cfg(feature = "http")]
mod client;
#[cfg(feature = "http")]
mod error;

#[cfg(feature = "http")]
pub use client::{Client, ClientBuilder, Created, Publish, RawDelivery, DEFAULT_URL};
#[cfg(feature = "http")]
pub use error::{Error, Result};
