//! Courier's HTTP server: the JSON API over HTTP/1.1 and h2c, its configuration,
//! and graceful shutdown. It serves any [`courier_core::Engine`]; the binary
//! hands it the embedded one.
//!
//! - `config`: the configuration tree, env overrides, validation.
//! - `api`: routes and their OpenAPI description; `api::codec` maps messages to
//!   and from HTTP (single publish headers, CloudEvents).
//! - `extract` / `error`: request parsing and RFC 9457 problem answers;
//!   `bounds`: the largest times and durations a request may carry.
//! - `edge`: the tower layers every request passes first (request id,
//!   request log, rate limit, problem answers for bare errors, body limit,
//!   timeout); `edge::rate_limit` and `edge::forwarded`: per-client limits,
//!   behind trusted proxies too.
//! - `server`: the connection loop (hyper for every request) and the
//!   shutdown sequence.
//! - `metrics`: `GET /metrics` (Prometheus text format) and the request metrics.
//! - `origin`: browser safety (cross-origin state changes refused, CORS).
//! - `auth`: JWT authentication (a tower layer) and the permission checks
//!   handlers make with it.
//! - `realtime`: Server-Sent Events, long polls and presence: a filtered,
//!   resumable feed of a topic that every real-time transport encodes.

#![forbid(unsafe_code)]

mod api;
mod auth;
mod bounds;
pub mod config;
mod edge;
pub mod error;
mod extract;
mod metrics;
mod origin;
mod realtime;
mod server;
mod telemetry;

pub use api::{openapi, openapi_json};
pub use config::{
    AuthConfig, Config, ConfigError, EngineConfig, EngineKind, IpNet, RealtimeConfig,
};
pub use server::{run, shutdown_signal, ServerError};
pub use telemetry::init_tracing;
