//! Integration tests of the service client against real HTTP servers on
//! 127.0.0.1 (one test binary: one link on a small machine).

mod balance;
mod breaker;
mod common;
mod config;
mod health;
mod limits;
mod outlier;
mod pool;
mod ready;
mod registry;
