//! The broker's configuration: one serde tree, every field defaulted, unknown
//! keys refused. Sources in increasing precedence: the TOML file, `COURIER_*`
//! environment variables, command-line flags (applied by the binary), then
//! [`Config::validate`].

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use courier_core::{SubscriptionConfig, TopicConfig};
use serde::{Deserialize, Serialize};

use courier_core::types::millis;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    pub log: LogConfig,
    pub realtime: RealtimeConfig,
    pub auth: AuthConfig,
    /// Topics created at start when missing.
    pub topics: Vec<DeclaredTopic>,
    /// Subscriptions created at start when missing (after the topics).
    pub subscriptions: Vec<DeclaredSubscription>,
    /// Services that push subscriptions deliver to, with their fixed
    /// instances (more can register at run time).
    pub services: Vec<DeclaredService>,
}

/// Which engine stores the messages, and each engine's own section.
///
/// The server does not read the sections: the binary hands the chosen one to
/// its engine, which parses and checks it (so the server depends on no
/// engine's settings type, and engines can be added without touching it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub kind: EngineKind,
    /// `[engine.embedded]`: the embedded engine's settings.
    pub embedded: toml::Table,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// Courier's own durable store in a local directory: nothing to install.
    #[default]
    Embedded,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Embedded => "embedded",
        }
    }
}

impl EngineConfig {
    /// The chosen engine's section.
    pub fn section(&self) -> &toml::Table {
        match self.kind {
            EngineKind::Embedded => &self.embedded,
        }
    }

    /// Sets a key of the embedded engine's section (flags and environment).
    pub fn set_embedded(&mut self, key: &str, value: impl Into<toml::Value>) {
        self.embedded.insert(key.to_string(), value.into());
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Time limit of one request, in milliseconds. Pulls get their wait on top,
    /// so a long poll is never cut off by this.
    #[serde(with = "millis")]
    pub request_timeout: Duration,
    /// Longest `wait_ms` a pull may ask for; longer asks are shortened to this.
    #[serde(with = "millis")]
    pub max_pull_wait: Duration,
    /// A client must have sent its request headers within this time (slowloris guard).
    #[serde(with = "millis")]
    pub header_read_timeout: Duration,
    /// Most message headers one published message may carry.
    pub max_headers_per_message: usize,
    /// Open connections at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests before closing connections anyway.
    #[serde(with = "millis")]
    pub shutdown_timeout: Duration,
    /// Requests per second one client (IP address; an IPv6 /64) may make on
    /// average before it gets 429 `rate_limited`. 0 turns rate limiting off.
    pub rate_limit: u32,
    /// Requests one client may make at once before the average applies. 0 means
    /// twice `rate_limit`.
    pub rate_burst: u32,
    /// Origins (`https://app.example.com`, scheme://host[:port]) whose web pages
    /// may change state through this server: publish, ack, create, delete.
    /// State-changing requests from any other origin are refused with 403
    /// `origin_not_allowed`; same-origin requests and requests without an
    /// `Origin` header (curl, SDKs) always pass. Empty by default.
    pub allowed_origins: Vec<String>,
    /// Proxies (addresses or CIDR blocks) whose `Forwarded` / `X-Forwarded-For`
    /// header names the client: requests from them are rate limited by the
    /// address they forward. Empty: every client is its own connection's peer.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            body_limit: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_pull_wait: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_headers_per_message: 64,
            max_connections: 10_000,
            shutdown_timeout: Duration::from_secs(30),
            rate_limit: 0,
            rate_burst: 0,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// An IP address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
/// IPv4-mapped IPv6 addresses match as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                net.to_bits() & mask == ip.to_bits() & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                net.to_bits() & mask == ip.to_bits() & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or CIDR block"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("'{s}': the prefix length must be 0 to {max}")),
            },
        };
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Highest `server.rate_limit` and `server.rate_burst`; beyond this a limit does
/// not limit anything a single client could send anyway.
pub const MAX_RATE: u32 = 1_000_000;

impl ServerConfig {
    /// The rate limit as (requests per second, burst), or `None` when it is off.
    pub fn rate_quota(&self) -> Option<(NonZeroU32, NonZeroU32)> {
        const TWICE: NonZeroU32 = NonZeroU32::new(2).unwrap();
        let rate = NonZeroU32::new(self.rate_limit)?;
        let burst = NonZeroU32::new(self.rate_burst).unwrap_or(rate.saturating_mul(TWICE));
        Some((rate, burst))
    }
}

/// Real-time delivery to browsers and apps: Server-Sent Events, WebSockets and long polls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeConfig {
    /// A comment is sent on an idle event stream (and a ping on a WebSocket)
    /// this often, in milliseconds, so proxies and browsers do not close it.
    #[serde(with = "millis")]
    pub keepalive_interval: Duration,
    /// The `retry:` hint an event stream starts with: how long a browser
    /// waits before reconnecting, in milliseconds.
    #[serde(with = "millis")]
    pub retry: Duration,
    /// Streaming connections (event streams and WebSockets) open at once, in total; more
    /// are refused with 503 `realtime_full`.
    pub max_connections: usize,
    /// Streaming connections one client (IP address, or the client a trusted
    /// proxy names) may hold; more are refused with 429
    /// `too_many_connections`. 0 = no per-client limit.
    pub max_connections_per_ip: usize,
    /// Frames waiting to be written to one WebSocket, at most; a client that
    /// reads so slowly that they fill up is closed with code 4008.
    pub ws_send_queue: usize,
    /// How long a frame may wait for room in a full WebSocket queue, in
    /// milliseconds, before the client is closed with code 4008.
    #[serde(with = "millis")]
    pub ws_send_timeout: Duration,
    /// Publishes one WebSocket may have in flight; past it the server reads
    /// no more frames from that client until one completes.
    pub ws_publishes_in_flight: usize,
    /// Largest WebSocket message a client may send, in bytes.
    pub ws_max_message: usize,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(15),
            retry: Duration::from_secs(3),
            max_connections: 10_000,
            max_connections_per_ip: 0,
            ws_send_queue: 1024,
            ws_send_timeout: Duration::from_secs(5),
            ws_publishes_in_flight: 256,
            ws_max_message: 1024 * 1024,
        }
    }
}

/// Who may subscribe and publish: JSON Web Tokens (docs/realtime.md). With
/// no key configured auth is off and every request may do everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret of HS256 tokens (at least 32 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_hs256_secret: Option<String>,
    /// Public key of RS256 tokens: PEM text, or the path of a PEM file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_rs256_public_key_pem: Option<String>,
    /// When set, tokens must carry this `iss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Requests without a token may subscribe (event streams, long polls,
    /// presence) to every topic.
    pub anonymous_read: bool,
    /// Requests without a token may publish to every topic.
    pub anonymous_publish: bool,
}

impl AuthConfig {
    /// Whether any key is configured (else auth is off).
    pub fn enabled(&self) -> bool {
        self.jwt_hs256_secret.is_some() || self.jwt_rs256_public_key_pem.is_some()
    }

    /// The RS256 public key's PEM text: the setting itself when it looks like
    /// PEM, else the file it names.
    pub fn rs256_pem(&self) -> Result<Option<String>, ConfigError> {
        let Some(value) = &self.jwt_rs256_public_key_pem else {
            return Ok(None);
        };
        if value.trim_start().starts_with("-----BEGIN") {
            return Ok(Some(value.clone()));
        }
        std::fs::read_to_string(value)
            .map(Some)
            .map_err(|source| ConfigError::Read {
                path: PathBuf::from(value),
                source,
            })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format '{other}' (pretty or json)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter: a level (`info`) or directives (`info,courier_server=debug`).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredTopic {
    pub name: String,
    #[serde(flatten)]
    pub config: TopicConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredSubscription {
    pub name: String,
    #[serde(flatten)]
    pub config: SubscriptionConfig,
}

/// `[[services]]`: a service, its fixed instances and the resilient
/// client's settings for it (see `courier_upstream::ServiceConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredService {
    pub name: String,
    /// Base URLs (`http://host:port`) of instances that never expire.
    #[serde(default)]
    pub instances: Vec<DeclaredInstance>,
    #[serde(flatten)]
    pub config: courier_upstream::ServiceConfig,
}

/// A fixed instance: `{ url = "http://10.0.0.7:9000", weight = 2 }`; the
/// id defaults to the URL's host and port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredInstance {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid environment variable {var}='{value}': {message}")]
    Env {
        var: &'static str,
        value: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Environment variables read by [`Config::apply_env`], with what they set.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("COURIER_LISTEN", "server.listen"),
    ("COURIER_BODY_LIMIT", "server.body_limit"),
    ("COURIER_REQUEST_TIMEOUT", "server.request_timeout (ms)"),
    ("COURIER_MAX_PULL_WAIT", "server.max_pull_wait (ms)"),
    (
        "COURIER_RATE_LIMIT",
        "server.rate_limit (requests/s per client, 0 = off)",
    ),
    ("COURIER_RATE_BURST", "server.rate_burst"),
    (
        "COURIER_TRUSTED_PROXIES",
        "server.trusted_proxies (comma-separated addresses or CIDR blocks)",
    ),
    ("COURIER_DATA_DIR", "engine.embedded.data_dir"),
    ("COURIER_FSYNC", "engine.embedded.fsync"),
    (
        "COURIER_JWT_HS256_SECRET",
        "auth.jwt_hs256_secret (keeps the secret out of the file)",
    ),
    ("COURIER_LOG_FORMAT", "log.format"),
    ("COURIER_LOG_LEVEL", "log.level"),
];

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let mut message = e.to_string();
            if message.contains("expected `kind` or `embedded`") {
                // Files written before engines were chosen by kind.
                message.push_str(
                    "\nthe embedded engine's settings go under [engine.embedded] \
                     (see config/courier.example.toml)",
                );
            }
            ConfigError::Parse {
                path: path.to_owned(),
                message,
            }
        })
    }

    /// Reads the file when given (defaults otherwise), then applies the
    /// process environment. Call [`Config::validate`] after any further overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::from_toml(&text, path)?
            }
            None => Config::default(),
        };
        config.apply_env(|var| std::env::var(var).ok())?;
        Ok(config)
    }

    /// Applies `COURIER_*` overrides; `get` is the environment (a parameter so tests
    /// need not mutate the process environment).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                var,
                value: value.to_owned(),
                message: e.to_string(),
            })
        }
        let ms = |var, value: &str| parse::<u64>(var, value).map(Duration::from_millis);

        for &(var, _) in ENV_VARS {
            let Some(value) = get(var) else { continue };
            match var {
                "COURIER_LISTEN" => self.server.listen = parse(var, &value)?,
                "COURIER_BODY_LIMIT" => self.server.body_limit = parse(var, &value)?,
                "COURIER_REQUEST_TIMEOUT" => self.server.request_timeout = ms(var, &value)?,
                "COURIER_MAX_PULL_WAIT" => self.server.max_pull_wait = ms(var, &value)?,
                "COURIER_RATE_LIMIT" => self.server.rate_limit = parse(var, &value)?,
                "COURIER_RATE_BURST" => self.server.rate_burst = parse(var, &value)?,
                "COURIER_TRUSTED_PROXIES" => {
                    self.server.trusted_proxies = value
                        .split(',')
                        .filter(|p| !p.trim().is_empty())
                        .map(|p| parse(var, p))
                        .collect::<Result<_, _>>()?
                }
                "COURIER_DATA_DIR" => self.engine.set_embedded("data_dir", value),
                "COURIER_FSYNC" => self
                    .engine
                    .set_embedded("fsync", parse::<bool>(var, &value)?),
                "COURIER_JWT_HS256_SECRET" => self.auth.jwt_hs256_secret = Some(value),
                "COURIER_LOG_FORMAT" => self.log.format = parse(var, &value)?,
                "COURIER_LOG_LEVEL" => self.log.level = value,
                _ => unreachable!("every ENV_VARS entry is handled"),
            }
        }
        Ok(())
    }

    /// Refuses settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if s.body_limit < 1024 {
            return bad(format!(
                "server.body_limit = {} is below 1024 bytes",
                s.body_limit
            ));
        }
        for (key, value) in [
            ("server.request_timeout", s.request_timeout),
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.shutdown_timeout", s.shutdown_timeout),
        ] {
            if value.is_zero() {
                return bad(format!("{key} must be above 0 ms"));
            }
        }
        if s.max_pull_wait > Duration::from_secs(600) {
            return bad("server.max_pull_wait must be at most 600000 ms".into());
        }
        if s.max_headers_per_message == 0 {
            return bad("server.max_headers_per_message must be at least 1".into());
        }
        for origin in &s.allowed_origins {
            if !crate::origin::is_valid_origin(origin) {
                return bad(format!(
                    "server.allowed_origins: '{origin}' is not an origin \
                     (scheme://host[:port], e.g. https://app.example.com)"
                ));
            }
        }
        if s.max_connections == 0 {
            return bad("server.max_connections must be at least 1".into());
        }
        for (key, value) in [
            ("server.rate_limit", s.rate_limit),
            ("server.rate_burst", s.rate_burst),
        ] {
            if value > MAX_RATE {
                return bad(format!("{key} = {value} is above {MAX_RATE}"));
            }
        }
        let r = &self.realtime;
        for (key, value) in [
            ("realtime.keepalive_interval", r.keepalive_interval),
            ("realtime.retry", r.retry),
            ("realtime.ws_send_timeout", r.ws_send_timeout),
        ] {
            if value.is_zero() {
                return bad(format!("{key} must be above 0 ms"));
            }
        }
        if r.max_connections == 0 {
            return bad("realtime.max_connections must be at least 1".into());
        }
        for (key, value) in [
            ("realtime.ws_send_queue", r.ws_send_queue),
            ("realtime.ws_publishes_in_flight", r.ws_publishes_in_flight),
        ] {
            if value == 0 {
                return bad(format!("{key} must be at least 1"));
            }
        }
        if r.ws_max_message < 1024 {
            return bad("realtime.ws_max_message must be at least 1024 bytes".into());
        }
        crate::auth::Authenticator::from_config(&self.auth)?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return bad(format!("log.level '{}': {e}", self.log.level));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.topics {
            courier_core::error::validate_name(&t.name)
                .map_err(|e| ConfigError::Invalid(format!("[[topics]]: {e}")))?;
            if !seen.insert(&t.name) {
                return bad(format!("[[topics]] declares '{}' twice", t.name));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for svc in &self.services {
            courier_core::error::validate_name(&svc.name)
                .map_err(|e| ConfigError::Invalid(format!("[[services]]: {e}")))?;
            if !seen.insert(&svc.name) {
                return bad(format!("[[services]] declares '{}' twice", svc.name));
            }
            if let Some(problem) = svc.config.problem() {
                return bad(format!("[[services]] '{}': {problem}", svc.name));
            }
            for i in &svc.instances {
                crate::api::instance_from(&i.url, i.id.clone(), i.weight).map_err(|e| {
                    ConfigError::Invalid(format!("[[services]] '{}': {}", svc.name, e.detail))
                })?;
            }
        }
        let mut seen = std::collections::HashSet::new();
        for sub in &self.subscriptions {
            courier_core::error::validate_name(&sub.name)
                .map_err(|e| ConfigError::Invalid(format!("[[subscriptions]]: {e}")))?;
            if !seen.insert(&sub.name) {
                return bad(format!("[[subscriptions]] declares '{}' twice", sub.name));
            }
            if sub.config.topic.is_empty() {
                return bad(format!("[[subscriptions]] '{}' needs a topic", sub.name));
            }
            crate::bounds::subscription(&sub.config).map_err(|e| {
                ConfigError::Invalid(format!("[[subscriptions]] '{}': {e}", sub.name))
            })?;
            let r = &sub.config.retry;
            if !(r.multiplier >= 1.0 && r.multiplier.is_finite()) {
                return bad(format!(
                    "[[subscriptions]] '{}': retry.multiplier must be at least 1",
                    sub.name
                ));
            }
            if !(0.0..=1.0).contains(&r.jitter) {
                return bad(format!(
                    "[[subscriptions]] '{}': retry.jitter must be between 0 and 1",
                    sub.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_toml("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
    }

    #[test]
    fn trusted_proxies_are_addresses_or_blocks() {
        let c = Config::from_toml(
            "[server]\ntrusted_proxies = ['10.0.0.0/8', '192.0.2.7', '2001:db8::/32']",
            Path::new("x.toml"),
        )
        .unwrap();
        let [block, one, v6] = c.server.trusted_proxies[..] else {
            panic!("three entries");
        };
        assert!(block.contains("10.200.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!block.contains("11.0.0.1".parse().unwrap()));
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["'10.0.0.0/33'", "'proxy.local'", "'::/129'"] {
            let doc = format!("[server]\ntrusted_proxies = [{bad}]");
            assert!(
                Config::from_toml(&doc, Path::new("x.toml")).is_err(),
                "{bad}"
            );
        }
        let mut c = Config::default();
        c.apply_env(env(&[("COURIER_TRUSTED_PROXIES", "10.0.0.1, fd00::/8")]))
            .unwrap();
        assert_eq!(c.server.trusted_proxies.len(), 2);
    }

    #[test]
    fn unknown_keys_are_refused_everywhere() {
        for doc in [
            "bogus = 1",
            "[server]\nlisten_addr = '0.0.0.0:1'",
            "[engine]\ndata_dir = 'x'",
            "[log]\nformat = 'pretty'\ncolour = true",
            "[[topics]]\nname = 'a'\ndedup = 5",
            "[[topics]]\nname = 'a'\n[topics.retention]\nmax_ages = 5",
            "[[subscriptions]]\nname = 's'\ntopic = 'a'\nack_deadlin = 5",
        ] {
            let err = Config::from_toml(doc, Path::new("x.toml")).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{doc}: {err}");
        }
        let err = Config::from_toml("[engine]\ndata_dir = 'x'", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("[engine.embedded]"), "{err}");
    }

    #[test]
    fn declared_objects_parse() {
        let c = Config::from_toml(
            r#"
            [[topics]]
            name = "orders"
            dedup_window = 1000
            retention = { max_messages = 10 }

            [[subscriptions]]
            name = "billing"
            topic = "orders"
            start = "earliest"
            ack_deadline = 5000
            retry = { max_attempts = 3 }
            "#,
            Path::new("x.toml"),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.topics[0].config.dedup_window, Duration::from_secs(1));
        assert_eq!(c.topics[0].config.retention.max_messages, Some(10));
        let s = &c.subscriptions[0];
        assert_eq!(s.config.topic, "orders");
        assert_eq!(s.config.start, courier_core::StartPosition::Earliest);
        assert_eq!(s.config.retry.max_attempts, 3);
        assert_eq!(s.config.retry.max_backoff, Duration::from_secs(60));
    }

    #[test]
    fn env_overrides_and_errors_name_the_variable() {
        let mut c = Config::default();
        c.apply_env(env(&[
            ("COURIER_LISTEN", "0.0.0.0:9000"),
            ("COURIER_DATA_DIR", "/var/lib/courier"),
            ("COURIER_LOG_FORMAT", "json"),
            ("COURIER_FSYNC", "false"),
            ("COURIER_REQUEST_TIMEOUT", "1500"),
        ]))
        .unwrap();
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(
            c.engine.embedded["data_dir"].as_str(),
            Some("/var/lib/courier")
        );
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.engine.embedded["fsync"].as_bool(), Some(false));
        assert_eq!(c.server.request_timeout, Duration::from_millis(1500));

        let err = c
            .apply_env(env(&[("COURIER_LISTEN", "localhost")]))
            .unwrap_err();
        assert!(err.to_string().contains("COURIER_LISTEN"), "{err}");
        let err = c
            .apply_env(env(&[("COURIER_RATE_LIMIT", "-1")]))
            .unwrap_err();
        assert!(err.to_string().contains("COURIER_RATE_LIMIT"), "{err}");
    }

    #[test]
    fn rate_limit_is_off_by_default_and_bursts_twice_the_rate() {
        let mut c = Config::default();
        assert_eq!(c.server.rate_quota(), None);
        c.apply_env(env(&[("COURIER_RATE_LIMIT", "50")])).unwrap();
        let (rate, burst) = c.server.rate_quota().unwrap();
        assert_eq!((rate.get(), burst.get()), (50, 100));
        c.apply_env(env(&[("COURIER_RATE_BURST", "7")])).unwrap();
        let (rate, burst) = c.server.rate_quota().unwrap();
        assert_eq!((rate.get(), burst.get()), (50, 7));
        c.validate().unwrap();
        // Burst without a rate is simply unused.
        c.server.rate_limit = 0;
        assert_eq!(c.server.rate_quota(), None);
        c.validate().unwrap();
    }

    #[test]
    fn validate_refuses_nonsense() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("body_limit", Box::new(|c| c.server.body_limit = 10)),
            (
                "allowed_origins",
                Box::new(|c| c.server.allowed_origins = vec!["app.example.com".into()]),
            ),
            (
                "request_timeout",
                Box::new(|c| c.server.request_timeout = Duration::ZERO),
            ),
            (
                "max_pull_wait",
                Box::new(|c| c.server.max_pull_wait = Duration::from_secs(3600)),
            ),
            (
                "max_connections",
                Box::new(|c| c.server.max_connections = 0),
            ),
            (
                "server.rate_limit",
                Box::new(|c| c.server.rate_limit = MAX_RATE + 1),
            ),
            (
                "server.rate_burst",
                Box::new(|c| c.server.rate_burst = u32::MAX),
            ),
            ("log.level", Box::new(|c| c.log.level = "[[[".into())),
            (
                "invalid name",
                Box::new(|c| {
                    c.topics.push(DeclaredTopic {
                        name: "a b".into(),
                        config: TopicConfig::default(),
                    })
                }),
            ),
            (
                "ack_deadline",
                Box::new(|c| {
                    c.subscriptions.push(DeclaredSubscription {
                        name: "s".into(),
                        config: SubscriptionConfig {
                            ack_deadline: Duration::from_millis(u64::MAX),
                            ..SubscriptionConfig::for_topic("t")
                        },
                    })
                }),
            ),
            (
                "needs a topic",
                Box::new(|c| {
                    c.subscriptions.push(DeclaredSubscription {
                        name: "s".into(),
                        config: SubscriptionConfig::default(),
                    })
                }),
            ),
        ];
        for (needle, mutate) in cases {
            let mut c = Config::default();
            mutate(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    fn example() -> (PathBuf, String) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/courier.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    /// The example states every key at its default value, the embedded
    /// engine's section included.
    #[test]
    fn example_file_is_the_defaults() {
        let (path, text) = example();
        let mut c = Config::from_toml(&text, &path).unwrap();
        c.validate().unwrap();
        let embedded: courier_embedded::EmbeddedConfig =
            std::mem::take(&mut c.engine.embedded).try_into().unwrap();
        assert_eq!(embedded, courier_embedded::EmbeddedConfig::default());
        assert_eq!(c, Config::default());
    }

    /// The commented-out declarations at the end of the example work when uncommented.
    #[test]
    fn example_declarations_parse_when_uncommented() {
        let (path, text) = example();
        let (head, tail) = text
            .split_once("# ---- Declared topics and subscriptions")
            .expect("marker in the example file");
        let uncommented: String = tail
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with('[')
                        || rest.split_once(" = ").is_some_and(|(k, _)| {
                            k.chars()
                                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
                        }) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::from_toml(&format!("{head}\n{uncommented}"), &path).unwrap();
        c.validate().unwrap();
        assert!(!c.topics.is_empty() && !c.subscriptions.is_empty());
        assert_eq!(c.subscriptions[0].config.topic, c.topics[0].name);
    }
}
