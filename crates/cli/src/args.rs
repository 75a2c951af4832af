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
    /// Broker URL.
    #[arg(long, global = true, env = "COURIER_URL", default_value = courier_client::DEFAULT_URL)]
    pub server: String,
    /// Print JSON for scripts: one document, or one per line for streams (publish --file, tail).
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
    /// Log format [default: pretty; env COURIER_LOG_FORMAT].
    #[arg(long, value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `debug` or `info,courier_server=debug` [default: info; env COURIER_LOG_LEVEL].
    #[arg(long)]
    pub log_level: Option<String>,
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic (succeeds if an identical one exists).
    Create {
        name: String,
        /// How long message ids are remembered for deduplication [default: 2m].
        #[arg(long, value_parser = parse_duration)]
        dedup_window: Option<Duration>,
        /// Drop messages older than this (e.g. 7d, 12h).
        #[arg(long, value_parser = parse_duration)]
        max_age: Option<Duration>,
        /// Keep at most this many bytes.
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Keep at most this many messages.
        #[arg(long)]
        max_messages: Option<u64>,
    },
    /// List topics.
    List,
    /// Show one topic.
    Show { name: String },
    /// Delete a topic and its messages (refused while subscriptions use it).
    Delete {
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
    Show { name: String },
    /// Change a live subscription's settings, keeping its position, leases and counters.
    Update(SubscriptionUpdateArgs),
    /// Delete a subscription.
    Delete { name: String },
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("settings")
        .required(true)
        .multiple(true)
        .args(["ack_deadline", "max_in_flight", "max_in_flight_per_consumer", "max_attempts", "dead_letter_topic"]),
))]
pub(crate) struct SubscriptionUpdateArgs {
    pub name: String,
    /// How long a pulled message stays leased, from the next lease on.
    #[arg(long, value_parser = parse_duration)]
    pub ack_deadline: Option<Duration>,
    /// Leased messages at once in the subscription.
    #[arg(long)]
    pub max_in_flight: Option<u32>,
    /// Leased messages at once per consumer.
    #[arg(long)]
    pub max_in_flight_per_consumer: Option<u32>,
    /// Attempts before dead-lettering; 0 = never (the rest of the retry policy stays).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Dead-letter topic, for messages that run out of attempts from now on.
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SubscriptionCreate {
    pub name: String,
    /// Topic to read.
    #[arg(long)]
    pub topic: String,
    /// Where to start: new, earliest, seq:N or time:MILLIS [default: new].
    #[arg(long, value_parser = parse_start)]
    pub start: Option<StartPosition>,
    /// How long a pulled message stays leased [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub ack_deadline: Option<Duration>,
    /// Leased messages at once in the subscription [default: 10000].
    #[arg(long)]
    pub max_in_flight: Option<u32>,
    /// Leased messages at once per consumer [default: 1000].
    #[arg(long)]
    pub max_in_flight_per_consumer: Option<u32>,
    /// Attempts before dead-lettering; 0 = never [default: 5].
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// First retry backoff [default: 100ms].
    #[arg(long, value_parser = parse_duration)]
    pub initial_backoff: Option<Duration>,
    /// Longest retry backoff [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub max_backoff: Option<Duration>,
    /// Backoff growth per attempt [default: 2].
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
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
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
    /// Deliver no earlier than this from now (e.g. 500ms, 10s).
    #[arg(long, value_parser = parse_duration)]
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
    pub subscription: String,
    /// At most this many messages.
    #[arg(long, default_value_t = 10)]
    pub max: u32,
    /// Wait for the first message, up to this long [default without the flag: don't
    /// wait; `--wait` alone: 30s].
    #[arg(long, num_args = 0..=1, default_missing_value = "30s", value_parser = parse_duration)]
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
    pub subscription: String,
    /// Acknowledge each message once printed.
    #[arg(long, overrides_with = "no_ack")]
    pub ack: bool,
    /// Leave messages unacknowledged: they come back after the ack deadline (the default).
    #[arg(long, overrides_with = "ack")]
    pub no_ack: bool,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Consumer name.
    #[arg(long)]
    pub consumer: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct AckArgs {
    pub subscription: String,
    /// Lease tokens, as `pull` printed them (e.g. 5-17).
    #[arg(required = true, value_parser = parse_token)]
    pub tokens: Vec<LeaseToken>,
}

#[derive(Debug, Args)]
pub(crate) struct NackArgs {
    pub subscription: String,
    /// Lease tokens, as `pull` printed them (e.g. 5-17).
    #[arg(required = true, value_parser = parse_token)]
    pub tokens: Vec<LeaseToken>,
    /// Redeliver after this delay instead of the subscription's backoff.
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Why processing failed (kept on the dead letter).
    #[arg(long)]
    pub error: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ExtendArgs {
    pub subscription: String,
    /// Lease tokens, as `pull` printed them (e.g. 5-17). They stay valid.
    #[arg(required = true, value_parser = parse_token)]
    pub tokens: Vec<LeaseToken>,
    /// The new lease deadline is now + this (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub by: Duration,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters of a subscription, oldest first.
    List {
        subscription: String,
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Put dead letters back into the subscription.
    Replay {
        subscription: String,
        /// Only up to this dead-letter sequence (inclusive).
        #[arg(long)]
        up_to: Option<u64>,
    },
}

/// `250` (milliseconds), `250ms`, `5s`, `2m`, `1h`, `7d`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 5s, 2m)"))?;
    let ms = match unit {
        "" | "ms" => Some(n),
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

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
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
