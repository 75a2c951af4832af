//! `courier`: runs the broker (`courier serve`) and talks to one.
//!
//! Exit codes, for scripts:
//! 0 success · 1 the operation failed (server error, engine error) ·
//! 2 usage error (bad flags, invalid config, a request the server refused as invalid) ·
//! 3 not found · 4 conflict (exists, in use) ·
//! 5 broker unreachable, timed out, shutting down or rate limiting this client
//! (retry later). `ack`, `nack` and `extend` exit 1 when none of their
//! tokens took effect.

mod args;
mod commands;
mod engines;
mod output;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

/// Documented exit codes.
pub(crate) mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const CONFLICT: u8 = 4;
    pub const UNAVAILABLE: u8 = 5;
}

/// A failure on its way to stderr and an exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }
}

impl From<courier_client::Error> for Failure {
    fn from(e: courier_client::Error) -> Self {
        use courier_client::Error as E;
        let code = match &e {
            E::Api { problem } => match problem.status {
                404 => exit::NOT_FOUND,
                409 => exit::CONFLICT,
                408 | 503 => exit::UNAVAILABLE,
                400..=499 => exit::USAGE,
                _ => exit::FAILED,
            },
            E::RateLimited { .. } | E::Transport(_) => exit::UNAVAILABLE,
            E::InvalidRequest(_) => exit::USAGE,
            E::Protocol(_) => exit::FAILED,
        };
        Failure::new(code, e.to_string())
    }
}

// glibc malloc showed up as ~20% of the server's CPU under many small
// requests (per-thread arenas, consolidation); mimalloc's per-thread free
// lists make those allocations cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await,
            command => commands::run(cli.global, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
