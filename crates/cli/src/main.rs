//! `courier`: runs the broker (`courier serve`) and talks to one.
//!
//! Exit codes, for scripts:
//! 0 success · 1 the operation failed (server error, engine error) ·
//! 2 usage error (bad flags, invalid config, a request the server refused as invalid) ·
//! 3 not found · 4 conflict (exists, in use) ·
//! 5 broker unreachable, timed out, shutting down or rate limiting this client
//! (retry later). `ack`, `nack` and `extend` exit 1 when none of their
//! tokens took effect.
//!
//! With `--json`, an error is one JSON object on stderr:
//! `{"error":{"code":"topic_not_found","message":"…","exit_code":3}}`; `code` is
//! the broker's problem code when the broker answered, else one of `usage`,
//! `unreachable`, `protocol`, `failed`, `nothing_took_effect`.

mod args;
mod commands;
mod engines;
mod output;
mod serve;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

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
    /// The exit code.
    pub code: u8,
    /// Machine-readable kind, for `--json`: the broker's problem code, or one of
    /// the CLI's own (`usage`, `unreachable`, `protocol`, `failed`, …).
    pub kind: String,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        let kind = match code {
            exit::USAGE => "usage",
            exit::NOT_FOUND => "not_found",
            exit::CONFLICT => "conflict",
            exit::UNAVAILABLE => "unavailable",
            _ => "failed",
        };
        Self {
            code,
            kind: kind.into(),
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }

    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// Prints the failure on stderr: `error: …`, or one JSON object.
    fn print(&self, json: bool) {
        if json {
            let doc = serde_json::json!({
                "error": { "code": self.kind, "message": self.message, "exit_code": self.code }
            });
            eprintln!("{doc}");
        } else {
            eprintln!("error: {}", self.message);
        }
    }
}

impl From<courier_client::Error> for Failure {
    fn from(e: courier_client::Error) -> Self {
        use courier_client::Error as E;
        let kind = match &e {
            E::Api { problem } | E::RateLimited { problem, .. } => problem.code.clone(),
            E::Transport(_) => "unreachable".into(),
            E::InvalidRequest(_) => "usage".into(),
            E::Protocol(_) => "protocol".into(),
        };
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
        Failure::new(code, e.to_string()).with_kind(kind)
    }
}

// glibc malloc showed up as ~20% of the server's CPU under many small
// requests (per-thread arenas, consolidation); mimalloc's per-thread free
// lists make those allocations cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `--json` is known before parsing so that usage errors honour it too.
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    let cli = match Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) if json && e.use_stderr() => {
            // The message up to clap's usage hint, on one line.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let message = message.join(" ");
            Failure::usage(message.trim_start_matches("error: ")).print(true);
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => e.exit(),
    };
    let json = cli.global.json;
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
            failure.print(json);
            ExitCode::from(failure.code)
        }
    }
}
