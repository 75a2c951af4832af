use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use courier_core::{LeaseToken, StartPosition};
use courier_server::config::LogFormat;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the operation failed (server or engine error, a feature the engine lacks)
  2  usage error: bad flags, invalid config, or a request the broker refused as invalid
  3  not found
  4  conflict: already exists differently, still in use
  5  retry later: broker unreachable, timed out, shutting down or rate limiting you

ack, nack and extend exit 1 when none of their tokens took effect (each
token's outcome is printed: ok, lease_lost, not_leased or not_found).";

/// Courier: a durable message broker in one binary.
///
/// `courier serve` runs the broker; every other command talks to one over HTTP.
#[derive(Debug, Parser)]
#[command(name = "courier", version, after_help = EXIT_CODES, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct Global {
    /// Broker URL (client commands).
    #[arg(long, visible_alias = "server", global = true, env = "COURIER_URL", default_value = courier_client::DEFAULT_URL)]
    pub url: String,
    /// Print JSON for scripts: one document, or one per line for streams (publish --file,
    /// tail); errors too, as one object on stderr: {"error":{"code","message","exit_code"}}.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Create, list, show and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Create, list, show, update and delete subscriptions.
    #[command(subcommand, name = "sub", visible_alias = "subscription")]
    Subscription(SubscriptionCommand),
    /// Publish messages: BODY, or `--file` (one message per line), or stdin (one message).
    Publish(PublishArgs),
    /// Lease messages once and print them.
    Pull(PullArgs),
    /// Print messages as they arrive, until Ctrl-C or `--count`.
    Tail(TailArgs),
    /// Acknowledge leased messages, by the tokens `pull` printed.
    Ack(AckArgs),
    /// Give leased messages back for redelivery, by the tokens `pull` printed.
    Nack(NackArgs),
    /// Keep leased messages longer, by the tokens `pull` printed.
    Extend(ExtendArgs),
    /// Give leased messages back without spending an attempt (they were never tried).
    Release(AckArgs),
    /// Dead-letter leased messages at once: they can never succeed.
    Reject(RejectArgs),
    /// Services that push subscriptions deliver to: define, list, register instances.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// List and replay dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Broker-wide counters.
    Stats,
    /// What the broker's engine supports.
    Capabilities,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML config file (see config/courier.example.toml).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070; env COURIER_LISTEN].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Data directory [default: ./data; env COURIER_DATA_DIR].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Log format: pretty or json [default: pretty; env COURIER_LOG_FORMAT].
    #[arg(long, value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `debug` or `info,courier_server=debug` [default: info; env COURIER_LOG_LEVEL].
    #[arg(long)]
    pub log_level: Option<String>,
    // The client commands' global `--url` and `--json` do not apply here: these
    // hidden twins keep them out of `serve --help` (clap does not propagate a
    // global flag to a command that has its own of the same name).
    #[arg(long, hide = true)]
    pub url: Option<String>,
    #[arg(long, hide = true)]
    pub json: bool,
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic (succeeds if an identical one exists).
    Create {
        /// Topic name.
        name: String,
        /// How long message ids are remembered for deduplication, with a unit (e.g. 2m, 90s)
        /// [default: 2m].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        dedup_window: Option<Duration>,
        /// Drop messages older than this, with a unit (e.g. 7d, 12h).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        max_age: Option<Duration>,
        /// Keep at most this many bytes of messages.
        #[arg(long, value_name = "BYTES")]
        max_bytes: Option<u64>,
        /// Keep at most this many messages.
        #[arg(long, value_name = "COUNT")]
        max_messages: Option<u64>,
    },
    /// List topics.
    List,
    /// Show one topic.
    Show {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and its messages (refused while subscriptions use it).
    Delete {
        /// Topic name.
        name: String,
        /// Also delete the subscriptions that read it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SubscriptionCommand {
    /// Create a subscription (succeeds if an identical one exists).
    Create(SubscriptionCreate),
    /// List subscriptions.
    List,
    /// Show one subscription and its counters.
    Show {
        /// Subscription name.
        name: String,
    },
    /// Change a live subscription's settings, keeping its position, leases and counters.
    Update(SubscriptionUpdateArgs),
    /// Delete a subscription.
    Delete {
        /// Subscription name.
        name: String,
    },
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("settings")
        .required(true)
        .multiple(true)
        .args(["ack_deadline", "max_in_flight", "max_in_flight_per_consumer", "max_attempts", "dead_letter_topic", "push_service", "no_push"]),
))]
pub(crate) struct SubscriptionUpdateArgs {
    /// Subscription name.
    pub name: String,
    /// How long a pulled message stays leased, from the next lease on, with a unit
    /// (e.g. 30s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ack_deadline: Option<Duration>,
    /// Leased messages at once in the subscription (a count).
    #[arg(long, value_name = "COUNT")]
    pub max_in_flight: Option<u32>,
    /// Leased messages at once per consumer (a count).
    #[arg(long, value_name = "COUNT")]
    pub max_in_flight_per_consumer: Option<u32>,
    /// Attempts before dead-lettering; 0 = never (the rest of the retry policy stays).
    #[arg(long, value_name = "COUNT")]
    pub max_attempts: Option<u32>,
    /// Dead-letter topic, for messages that run out of attempts from now on.
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// New push settings (replacing the old ones whole).
    #[command(flatten)]
    pub push: PushArgs,
    /// Stop pushing: messages wait for pulls again.
    #[arg(long, conflicts_with = "push_service")]
    pub no_push: bool,
}

/// Push delivery: Courier sends each message to an instance of a service.
#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// Push each message to an instance of this service (see `courier service`).
    #[arg(long, value_name = "SERVICE")]
    pub push_service: Option<String>,
    /// Path requested on the instance [default: /].
    #[arg(long, value_name = "PATH", requires = "push_service")]
    pub push_path: Option<String>,
    /// Messages per request; above 1, pushes go as JSON batches [default: 1].
    #[arg(long, value_name = "COUNT", requires = "push_service")]
    pub push_batch: Option<u32>,
    /// Push requests in flight at once, a count [default: 64].
    #[arg(long, value_name = "COUNT", requires = "push_service")]
    pub push_concurrency: Option<u32>,
    /// How long one push may take, with a unit (e.g. 10s, 500ms) [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "push_service")]
    pub push_timeout: Option<Duration>,
    /// Signing secret, whsec_ and base64 (Standard Webhooks).
    #[arg(long, value_name = "SECRET", requires = "push_service")]
    pub push_secret: Option<String>,
    /// Sent as `Authorization: Bearer <TOKEN>` with every push.
    #[arg(long, value_name = "TOKEN", requires = "push_service")]
    pub push_bearer_token: Option<String>,
}

impl PushArgs {
    pub fn config(&self) -> Option<courier_core::PushConfig> {
        let service = self.push_service.clone()?;
        let d = courier_core::PushConfig::default();
        Some(courier_core::PushConfig {
            service,
            path: self.push_path.clone().unwrap_or(d.path),
            batch_size: self.push_batch.unwrap_or(d.batch_size),
            max_concurrent: self.push_concurrency.unwrap_or(d.max_concurrent),
            timeout: self.push_timeout.unwrap_or(d.timeout),
            secret: self.push_secret.clone(),
            bearer_token: self.push_bearer_token.clone(),
            hash_header: None,
        })
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ServiceCommand {
    /// List services and their instances' health.
    List,
    /// Show one service: settings, instances, health, circuit state, latency.
    Show {
        /// Service name.
        name: String,
    },
    /// Define a service or change its settings (instances stay).
    Define {
        /// Service name.
        name: String,
        /// round_robin, weighted, least_request, ring_hash or p2c_ewma [default: round_robin].
        #[arg(long)]
        balance: Option<String>,
        /// Requests in flight at once per instance, a count [default: 256].
        #[arg(long, value_name = "COUNT")]
        max_concurrent_per_instance: Option<u32>,
        /// Active health check: GET this path on each instance.
        #[arg(long, value_name = "PATH")]
        health_path: Option<String>,
        /// Time between health checks, with a unit (e.g. 5s) [default: 5s].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "health_path")]
        health_interval: Option<Duration>,
    },
    /// Remove a service.
    Delete {
        /// Service name.
        name: String,
    },
    /// Register an instance (run again, or `heartbeat`, before its TTL ends).
    Register {
        /// Service name (created with default settings if needed).
        name: String,
        /// The instance's base URL, http://host:port.
        #[arg(value_name = "URL")]
        instance_url: String,
        /// Instance id [default: host:port].
        #[arg(long)]
        id: Option<String>,
        /// Share of the traffic under weighted balancing [default: 1].
        #[arg(long, value_name = "COUNT")]
        weight: Option<u32>,
    },
    /// Take an instance out at once.
    Deregister {
        /// Service name.
        name: String,
        /// Instance id.
        id: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct RejectArgs {
    #[command(flatten)]
    pub leases: Leases,
    /// Why the messages can never succeed (kept on the dead letters).
    #[arg(long)]
    pub error: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SubscriptionCreate {
    /// Subscription name.
    pub name: String,
    /// Topic to read.
    #[arg(long)]
    pub topic: String,
    /// Where to start: new, earliest, seq:N or time:MILLIS [default: new].
    #[arg(long, value_parser = parse_start)]
    pub start: Option<StartPosition>,
    /// How long a pulled message stays leased, with a unit (e.g. 30s, 500ms) [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ack_deadline: Option<Duration>,
    /// Leased messages at once in the subscription, a count [default: 10000].
    #[arg(long, value_name = "COUNT")]
    pub max_in_flight: Option<u32>,
    /// Leased messages at once per consumer, a count [default: 1000].
    #[arg(long, value_name = "COUNT")]
    pub max_in_flight_per_consumer: Option<u32>,
    /// Attempts before dead-lettering; 0 = never [default: 5].
    #[arg(long, value_name = "COUNT")]
    pub max_attempts: Option<u32>,
    /// First retry backoff, with a unit (e.g. 100ms, 1s) [default: 100ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub initial_backoff: Option<Duration>,
    /// Longest retry backoff, with a unit (e.g. 60s, 5m) [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_backoff: Option<Duration>,
    /// Backoff growth per attempt, a factor [default: 2].
    #[arg(long)]
    pub backoff_multiplier: Option<f64>,
    /// Fraction of the backoff randomised away, 0 to 1 [default: 0.2].
    #[arg(long)]
    pub jitter: Option<f64>,
    /// Dead-letter topic [default: <name>.dlq].
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// Deliver each ordering key strictly in order, one in flight per key.
    #[arg(long)]
    pub ordered: bool,
    #[command(flatten)]
    pub push: PushArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Topic to publish to.
    pub topic: String,
    /// The message body; read from stdin when neither BODY nor --file is given.
    #[arg(conflicts_with = "file")]
    pub body: Option<String>,
    /// Publish each line of this file as a message (`-` for stdin).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Ordering key.
    #[arg(long)]
    pub key: Option<String>,
    /// Message header, repeatable: --header trace=abc.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Deliver no earlier than this from now, with a unit (e.g. 500ms, 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Message id for deduplication (with --file: used as a prefix, `<id>-<line>`).
    #[arg(long)]
    pub id: Option<String>,
    /// Content type stored with the message.
    #[arg(long)]
    pub content_type: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PullArgs {
    /// Subscription to pull from.
    pub subscription: String,
    /// At most this many messages.
    #[arg(long, value_name = "COUNT", default_value_t = 10)]
    pub max: u32,
    /// Wait for the first message, up to this long, with a unit (e.g. 2s, 500ms) [default
    /// without the flag: don't wait; `--wait` alone: 30s].
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "30s", value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// Acknowledge what was printed.
    #[arg(long)]
    pub ack: bool,
    /// Consumer name, for per-consumer flow control.
    #[arg(long)]
    pub consumer: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Subscription to follow.
    pub subscription: String,
    /// Acknowledge each message once printed.
    #[arg(long, overrides_with = "no_ack")]
    pub ack: bool,
    /// Leave messages unacknowledged: they come back after the ack deadline (the default).
    #[arg(long, overrides_with = "ack")]
    pub no_ack: bool,
    /// Stop after this many messages.
    #[arg(long, value_name = "COUNT")]
    pub count: Option<u64>,
    /// Consumer name.
    #[arg(long)]
    pub consumer: Option<String>,
}

/// The positionals of ack, nack and extend: whose leases, and which.
#[derive(Debug, Args)]
pub(crate) struct Leases {
    /// Subscription the messages were pulled from.
    pub subscription: String,
    /// Lease tokens, as `pull` printed them (e.g. 5-17).
    #[arg(required = true, value_parser = parse_token)]
    pub tokens: Vec<LeaseToken>,
}

#[derive(Debug, Args)]
pub(crate) struct AckArgs {
    #[command(flatten)]
    pub leases: Leases,
}

#[derive(Debug, Args)]
pub(crate) struct NackArgs {
    #[command(flatten)]
    pub leases: Leases,
    /// Redeliver after this delay instead of the subscription's backoff, with a unit
    /// (e.g. 5s, 500ms; 0 for now).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Why processing failed (kept on the dead letter).
    #[arg(long)]
    pub error: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ExtendArgs {
    #[command(flatten)]
    pub leases: Leases,
    /// The new lease deadline is now + this, with a unit (e.g. 30s, 5m); the tokens
    /// stay valid.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub by: Duration,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters of a subscription, oldest first.
    List {
        /// Subscription whose dead letters to list.
        subscription: String,
        /// At most this many dead letters.
        #[arg(long, value_name = "COUNT", default_value_t = 100)]
        max: usize,
    },
    /// Put dead letters back into the subscription.
    Replay {
        /// Subscription whose dead letters to replay.
        subscription: String,
        /// Only up to this dead-letter sequence number (inclusive).
        #[arg(long, value_name = "SEQ")]
        up_to: Option<u64>,
    },
}

/// A number with a unit: `250ms`, `5s`, `2m`, `1h`, `7d`; `0` alone is zero.
/// A bare number is refused: `2` could mean 2 s or 2 ms.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 5s, 2m)"))?;
    let ms = match unit {
        "" if n == 0 => Some(0),
        "" => return Err(format!("give a unit: {n}s or {n}ms")),
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("unknown unit in '{s}' (ms, s, m, h or d)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("'{s}' is too long"))
}

fn parse_start(s: &str) -> Result<StartPosition, String> {
    s.parse()
}

/// Tokens are opaque; only an empty one is surely wrong.
fn parse_token(s: &str) -> Result<LeaseToken, String> {
    if s.is_empty() {
        return Err("a lease token is not empty".into());
    }
    Ok(LeaseToken::new(s))
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not name=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every positional argument of every command says what it is.
    #[test]
    fn positionals_are_described() {
        fn walk(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_positionals() {
                assert!(
                    arg.get_help().is_some(),
                    "{path} <{}> has no description",
                    arg.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&Cli::command(), "courier");
    }

    /// Flags that take a duration name it, so --help shows `<DURATION>` next to
    /// the units it takes.
    #[test]
    fn duration_flags_say_so() {
        fn walk(cmd: &clap::Command) {
            for arg in cmd.get_opts() {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let names = arg.get_value_names().unwrap_or_default();
                if names.iter().any(|n| n == "DURATION") {
                    assert!(help.contains("unit"), "--{} help: {help}", arg.get_id());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub);
            }
        }
        walk(&Cli::command());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2"), Err("give a unit: 2s or 2ms".into()));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999d").is_err());
    }

    #[test]
    fn start_positions() {
        assert_eq!(parse_start("earliest"), Ok(StartPosition::Earliest));
        assert_eq!(parse_start("seq:5"), Ok(StartPosition::Seq(5)));
        assert!(parse_start("seq:x").is_err());
        assert!(parse_start("latest").is_err());
    }
}
