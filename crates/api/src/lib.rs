//! Courier's HTTP API as data: the JSON it speaks, its header names, its
//! problem codes and their OpenAPI schemas (feature `openapi`). The server,
//! the client and the transports to come share this crate, so they cannot
//! drift apart, and the server depends on no client.
//!
//! Request types refuse unknown fields (a typo must not silently become a
//! default); response types accept them, so an older client keeps working
//! against a newer server. Domain types that already have a stable JSON form
//! (`TopicInfo`, `SubscriptionConfig`, …) are used as they are from
//! `courier-core`.

use base64::Engine as _;
use bytes::Bytes;
// Field types are spelled out (`u64`, `BTreeMap`) rather than core's aliases
// (`Seq`, `Headers`) so the OpenAPI generator sees primitives.
use std::collections::BTreeMap;

use courier_core::{LeaseToken, Message, Outcome, PublishReceipt, SubscriptionInfo, TopicInfo};
use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Stable `code`s of problem documents found before the engine is asked, and
/// the engine codes with an HTTP status of their own. The engine's other codes
/// are `courier_core::Error::code`.
pub mod push;

pub mod codes {
    pub const MALFORMED_JSON: &str = "malformed_json";
    pub const UNKNOWN_FIELD: &str = "unknown_field";
    pub const INVALID_FIELD: &str = "invalid_field";
    pub const INVALID_QUERY: &str = "invalid_query";
    pub const INVALID_HEADER: &str = "invalid_header";
    pub const TOO_MANY_HEADERS: &str = "too_many_headers";
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// 403: a state-changing request from a web page of an origin that is not
    /// this server's and not in `server.allowed_origins`.
    pub const ORIGIN_NOT_ALLOWED: &str = "origin_not_allowed";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const TIMEOUT: &str = "timeout";
    /// A 429 from something other than the rate limiter (kept for compatibility).
    pub const TOO_MANY_REQUESTS: &str = "too_many_requests";
    /// The client went over `server.rate_limit`; `Retry-After` says when to come back.
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const INTERNAL: &str = "internal_error";
    /// 401: the route needs a token (none was given and anonymous access is
    /// off), or the token is malformed, badly signed, expired, or for another
    /// issuer or audience.
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// 403: the token is valid but its `courier` claim does not grant this
    /// topic, or not with this filter.
    pub const FORBIDDEN: &str = "forbidden";
    /// 429: this client (IP address) holds `realtime.max_connections_per_ip`
    /// streaming connections already.
    pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
    /// 503: the server holds `realtime.max_connections` streaming connections already.
    pub const REALTIME_FULL: &str = "realtime_full";

    // Engine codes (`courier_core::Error::code`) with an HTTP status of their own.

    /// 501: the engine lacks a feature the request needs (`GET /v1/capabilities`
    /// lists what it has). Not retryable.
    pub const UNSUPPORTED_BY_ENGINE: &str = "unsupported_by_engine";
    /// 404: no service of that name (define one, or register an instance).
    pub const SERVICE_NOT_FOUND: &str = "service_not_found";
    /// 404: the service has no instance of that id (it may have expired: register again).
    pub const INSTANCE_NOT_FOUND: &str = "instance_not_found";
    /// 404: the subscription has no push settings.
    pub const NOT_PUSHED: &str = "not_pushed";
    /// 503 with `Retry-After`: the engine's backend (a NATS or Redis server)
    /// cannot be reached for now.
    pub const ENGINE_UNAVAILABLE: &str = "engine_unavailable";
}

/// Media type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";
/// CloudEvents structured mode.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// HTTP headers of the single-message publish and the raw pull.
pub mod headers {
    /// Client-supplied message id (deduplication key).
    pub const ID: &str = "courier-id";
    /// Ordering key.
    pub const KEY: &str = "courier-key";
    /// Delivery delay in milliseconds.
    pub const DELAY: &str = "courier-delay";
    /// Earliest delivery time: milliseconds since the epoch, or RFC 3339.
    pub const DELIVER_AT: &str = "courier-deliver-at";
    /// Prefix of a message header: `Courier-Header-Trace: abc` stores `trace: abc`.
    pub const HEADER_PREFIX: &str = "courier-header-";
    /// CloudEvents binary-mode attributes, kept as message headers as they are.
    pub const CLOUDEVENTS_PREFIX: &str = "ce-";
    /// Raw pull answers: metadata of the delivered message.
    pub const SEQ: &str = "courier-seq";
    /// Raw pull answers: the lease token that acks, nacks or extends this delivery.
    pub const TOKEN: &str = "courier-token";
    pub const ATTEMPT: &str = "courier-attempt";
    pub const LEASE_DEADLINE: &str = "courier-lease-deadline";
    pub const PUBLISHED_AT: &str = "courier-published-at";
}

/// An RFC 9457 problem document: every 4xx/5xx answer of the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Problem {
    /// A URI naming the problem type: `urn:courier:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    /// Stable machine-readable code, e.g. `topic_not_found`, `malformed_json`.
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A time given either as milliseconds since the epoch or as an RFC 3339 string,
/// before the year 10000 (at most 253402300799999 ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(untagged)]
pub enum Timestamp {
    Millis(u64),
    Rfc3339(String),
}

/// One message of a batch publish.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PublishMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The body as text; use `body_base64` for bytes that are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Not delivered before this many milliseconds from now (at most 100 years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 3153600000000_f64))]
    pub delay_ms: Option<u64>,
    /// Not delivered before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at: Option<Timestamp>,
}

impl PublishMessage {
    /// A message with this body, sent as text when it is UTF-8.
    pub fn new(body: impl Into<Bytes>) -> Self {
        let mut message = Self::default();
        message.set_body(body.into());
        message
    }

    pub fn set_body(&mut self, body: Bytes) {
        (self.body, self.body_base64) = encode_body(&body);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PublishBatch {
    /// At least one.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub messages: Vec<PublishMessage>,
}

/// Receipts in the order the messages were given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PublishBatchResponse {
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::PublishReceipt>))]
    pub receipts: Vec<PublishReceipt>,
}

/// A stored message as the API shows it. Exactly one of `body` (UTF-8) and
/// `body_base64` (anything else) is present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MessageView {
    pub seq: u64,
    pub id: String,
    pub published_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

impl MessageView {
    /// The body bytes, whichever way they were encoded.
    pub fn body_bytes(&self) -> Result<Bytes, base64::DecodeError> {
        decode_body(self.body.as_deref(), self.body_base64.as_deref())
    }
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        let (body, body_base64) = encode_body(&m.body);
        Self {
            seq: m.seq,
            id: m.id,
            published_at: m.published_at,
            deliver_at: m.deliver_at,
            key: m.key,
            headers: m.headers,
            body,
            body_base64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MessageList {
    pub messages: Vec<MessageView>,
}

/// A leased message: the message plus its delivery attempt and lease. On the
/// wire the message's fields sit beside `attempt`, `lease_deadline` and `token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DeliveryView {
    #[serde(flatten)]
    pub message: MessageView,
    /// 1 on first delivery.
    pub attempt: u32,
    /// Milliseconds since the epoch when the lease expires unless acked, nacked or extended.
    pub lease_deadline: u64,
    /// Names this lease: ack, nack and extend take it. Opaque; pass it back as
    /// it came. It settles nothing once the lease has expired or the message
    /// was leased again.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "5-17"))]
    pub token: LeaseToken,
}

impl From<courier_core::Delivery> for DeliveryView {
    fn from(d: courier_core::Delivery) -> Self {
        Self {
            message: d.message.into(),
            attempt: d.attempt,
            lease_deadline: d.lease_deadline,
            token: d.token,
        }
    }
}

/// Appends the JSON of a pull answer for `deliveries` to `out`: byte for byte
/// what serde_json makes of a [`PullResponse`] of their [`DeliveryView`]s.
///
/// Written by hand because the pull answer is the API's hottest encoding
/// (500 messages a request): building views copies every id, key, header and
/// body once more, `flatten` sends serde through its map machinery, and
/// serde_json looks every byte of a body up in its escape table, where
/// [`needs_escape`] checks eight at a time. Strings that need escaping still
/// go through serde_json.
pub fn write_pull_answer(out: &mut Vec<u8>, deliveries: &[courier_core::Delivery]) {
    out.extend_from_slice(b"{\"messages\":[");
    for (i, d) in deliveries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_delivery(out, d);
    }
    out.extend_from_slice(b"]}");
}

fn write_delivery(out: &mut Vec<u8>, d: &courier_core::Delivery) {
    let m = &d.message;
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(n.format(m.seq).as_bytes());
    out.extend_from_slice(b",\"id\":");
    write_str(out, &m.id);
    out.extend_from_slice(b",\"published_at\":");
    out.extend_from_slice(n.format(m.published_at).as_bytes());
    if let Some(at) = m.deliver_at {
        out.extend_from_slice(b",\"deliver_at\":");
        out.extend_from_slice(n.format(at).as_bytes());
    }
    if let Some(key) = &m.key {
        out.extend_from_slice(b",\"key\":");
        write_str(out, key);
    }
    out.extend_from_slice(b",\"headers\":{");
    for (i, (name, value)) in m.headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        write_str(out, value);
    }
    out.push(b'}');
    match std::str::from_utf8(&m.body) {
        Ok(text) => {
            out.extend_from_slice(b",\"body\":");
            write_str(out, text);
        }
        Err(_) => {
            out.extend_from_slice(b",\"body_base64\":\"");
            let encoded = base64::engine::general_purpose::STANDARD.encode(&m.body);
            out.extend_from_slice(encoded.as_bytes());
            out.push(b'"');
        }
    }
    out.extend_from_slice(b",\"attempt\":");
    out.extend_from_slice(n.format(d.attempt).as_bytes());
    out.extend_from_slice(b",\"lease_deadline\":");
    out.extend_from_slice(n.format(d.lease_deadline).as_bytes());
    out.extend_from_slice(b",\"token\":");
    write_str(out, d.token.as_str());
    out.push(b'}');
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether JSON needs any byte of `bytes` escaped: a control character, `"`
/// or `\\` (serde_json escapes nothing else). Eight bytes per step, with the
/// classic "has a zero byte" bit trick.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let v = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
        // Subtracting 0x20 sets the high bit of every byte below 0x20;
        // `& !v` drops the bytes that had it already (0x80 and up).
        let control = v.wrapping_sub(ONES * 0x20) & !v & HIGHS != 0;
        if control
            || has_zero(v ^ (ONES * u64::from(b'"')))
            || has_zero(v ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

pub mod realtime;

/// Body of `POST /v1/subscriptions/{name}/pull`; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PullBody {
    /// Consumer name for per-consumer flow control; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub consumer: Option<String>,
    /// At most this many messages (default 10, 1 to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max_messages: Option<u32>,
    /// Wait up to this long for the first message (default 0, capped at the server's max pull wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PullResponse {
    pub messages: Vec<DeliveryView>,
}

/// Most lease tokens one ack, nack or extend may carry.
pub const MAX_TOKENS: usize = 10_000;

/// Body of `POST /v1/subscriptions/{name}/ack`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// Lease tokens from pull answers; 1 to 10000.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, min_items = 1, max_items = 10000, example = json!(["5-17"])))]
    pub tokens: Vec<LeaseToken>,
}

/// Body of `POST /v1/subscriptions/{name}/nack`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NackBody {
    /// Lease tokens from pull answers; 1 to 10000.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, min_items = 1, max_items = 10000, example = json!(["5-17"])))]
    pub tokens: Vec<LeaseToken>,
    /// Redeliver after this delay instead of the subscription's backoff (at most 100 years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 3153600000000_f64))]
    pub delay_ms: Option<u64>,
    /// Why processing failed; kept on the dead letter if this was the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Body of `POST /v1/subscriptions/{name}/reject`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    /// Lease tokens from pull answers; 1 to 10000.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, min_items = 1, max_items = 10000, example = json!(["5-17"])))]
    pub tokens: Vec<LeaseToken>,
    /// Why the messages can never succeed; kept on the dead letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Body of `POST /v1/services/{name}/instances`: an instance of a service
/// registers itself (and sends the same again as its heartbeat).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InstanceRegistration {
    /// The instance's base URL, `http://host:port`.
    #[cfg_attr(feature = "openapi", schema(example = "http://127.0.0.1:9000"))]
    pub url: String,
    /// Names the instance; defaults to its URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Share of the traffic under weighted balancing; 1 to 1000, default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub weight: Option<u32>,
}

/// Answer of an instance registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Registered {
    pub service: String,
    pub id: String,
    /// Milliseconds before the instance is dropped unless it registers again
    /// (or sends a heartbeat).
    pub expires_in: u64,
}

/// Body of `POST /v1/subscriptions/{name}/extend`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// Lease tokens from pull answers; 1 to 10000. They stay valid.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, min_items = 1, max_items = 10000, example = json!(["5-17"])))]
    pub tokens: Vec<LeaseToken>,
    /// The new lease deadline is now + `by_ms` (1 ms to 100 years).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3153600000000_f64))]
    pub by_ms: u64,
}

/// What an ack, nack or extend did to the message of one token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenResult {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "5-17"))]
    pub token: LeaseToken,
    #[cfg_attr(feature = "openapi", schema(value_type = schema::Outcome))]
    pub outcome: Outcome,
}

/// Answer of ack, nack and extend: one result per token, in request order.
/// A valid request always gets this answer (200), whatever the outcomes; only
/// the `ok` ones took effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SettleResponse {
    pub results: Vec<TokenResult>,
}

impl SettleResponse {
    /// Pairs each token with its outcome, in order.
    pub fn new(tokens: Vec<LeaseToken>, outcomes: Vec<Outcome>) -> Self {
        Self {
            results: tokens
                .into_iter()
                .zip(outcomes)
                .map(|(token, outcome)| TokenResult { token, outcome })
                .collect(),
        }
    }

    /// How many tokens took effect.
    pub fn ok_count(&self) -> usize {
        self.results.iter().filter(|r| r.outcome.is_ok()).count()
    }
}

/// Exactly one of `seq` and `time`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[cfg_attr(feature = "openapi", schema(max_properties = 1))]
#[serde(deny_unknown_fields)]
pub struct SeekBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub time: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Replay dead letters up to this dead-letter-topic sequence (inclusive); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReplayResponse {
    pub replayed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TopicList {
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::TopicInfo>))]
    pub topics: Vec<TopicInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SubscriptionList {
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<schema::SubscriptionInfo>))]
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// Answer of `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Health {
    /// `ok`, or `shutting_down` from `/readyz` while draining.
    pub status: String,
}

/// UTF-8 bodies travel as text, anything else as base64.
pub fn encode_body(body: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(body) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(body)),
        ),
    }
}

/// The bytes of a `body` / `body_base64` pair; neither means an empty body.
pub fn decode_body(
    body: Option<&str>,
    body_base64: Option<&str>,
) -> Result<Bytes, base64::DecodeError> {
    match (body, body_base64) {
        (Some(text), _) => Ok(Bytes::copy_from_slice(text.as_bytes())),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from),
        (None, None) => Ok(Bytes::new()),
    }
}

/// OpenAPI schemas of the `courier-core` types the API carries. They mirror the
/// serde form of those types (durations are whole milliseconds); the server's
/// tests check that the mirrors and the real serializations agree.
#[cfg(feature = "openapi")]
pub mod schema {
    #![allow(dead_code)]

    use super::ToSchema;
    use serde::{Deserialize, Serialize};

    // A mirror's default is built from the core type's default, so the defaults
    // the document shows are the real ones.

    fn ms(d: std::time::Duration) -> u64 {
        d.as_millis() as u64
    }

    impl Default for Retention {
        fn default() -> Self {
            let r = courier_core::Retention::default();
            Self {
                max_age: r.max_age.map(ms),
                max_bytes: r.max_bytes,
                max_messages: r.max_messages,
            }
        }
    }

    impl Default for TopicConfig {
        fn default() -> Self {
            let c = courier_core::TopicConfig::default();
            Self {
                retention: Retention::default(),
                dedup_window: ms(c.dedup_window),
            }
        }
    }

    impl Default for StartPosition {
        fn default() -> Self {
            match courier_core::StartPosition::default() {
                courier_core::StartPosition::New => Self::New,
                courier_core::StartPosition::Earliest => Self::Earliest,
                courier_core::StartPosition::Seq(n) => Self::Seq(n),
                courier_core::StartPosition::Time(t) => Self::Time(t),
            }
        }
    }

    impl Default for RetryPolicy {
        fn default() -> Self {
            let r = courier_core::RetryPolicy::default();
            Self {
                initial_backoff: ms(r.initial_backoff),
                max_backoff: ms(r.max_backoff),
                multiplier: r.multiplier,
                max_attempts: r.max_attempts,
                jitter: r.jitter,
            }
        }
    }

    impl Default for SubscriptionConfig {
        fn default() -> Self {
            let c = courier_core::SubscriptionConfig::default();
            Self {
                topic: c.topic,
                start: StartPosition::default(),
                ack_deadline: ms(c.ack_deadline),
                max_in_flight: c.max_in_flight,
                max_in_flight_per_consumer: c.max_in_flight_per_consumer,
                retry: RetryPolicy::default(),
                dead_letter_topic: c.dead_letter_topic,
                ordered: c.ordered,
                push: None,
            }
        }
    }

    /// Retention limits of a topic; the oldest messages go first when any is exceeded.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct Retention {
        /// Milliseconds.
        #[serde(skip_serializing_if = "Option::is_none")]
        max_age: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_bytes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_messages: Option<u64>,
    }

    /// Body of `PUT /v1/topics/{name}`; every field has a default.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct TopicConfig {
        retention: Retention,
        /// How long a client-supplied message id is remembered, in milliseconds (default 120000).
        dedup_window: u64,
    }

    #[derive(ToSchema)]
    pub struct TopicInfo {
        name: String,
        config: TopicConfig,
        /// Oldest retained sequence (equals `next_seq` when empty).
        first_seq: u64,
        /// The sequence the next message will get.
        next_seq: u64,
        messages: u64,
        bytes: u64,
    }

    /// Where a new subscription starts: `"new"`, `"earliest"`, `{"seq": n}` or `{"time": ms}`.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum StartPosition {
        New,
        Earliest,
        Seq(u64),
        Time(u64),
    }

    /// Exponential backoff with jitter between delivery attempts; durations in milliseconds.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct RetryPolicy {
        /// At most 100 years.
        #[schema(maximum = 3153600000000_f64)]
        initial_backoff: u64,
        /// At most 100 years.
        #[schema(maximum = 3153600000000_f64)]
        max_backoff: u64,
        multiplier: f64,
        /// Attempts before a message is dead-lettered; 0 means never.
        max_attempts: u32,
        /// Fraction of the backoff randomised away (0 = none, 1 = full jitter).
        jitter: f64,
    }

    /// Body of `PUT /v1/subscriptions/{name}`; only `topic` is required in practice.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct SubscriptionConfig {
        /// The topic to read; required.
        #[schema(
            required = true,
            min_length = 1,
            max_length = 200,
            pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$"
        )]
        topic: String,
        start: StartPosition,
        /// Lease length in milliseconds (default 30000, at most 100 years).
        #[schema(maximum = 3153600000000_f64)]
        ack_deadline: u64,
        max_in_flight: u32,
        max_in_flight_per_consumer: u32,
        retry: RetryPolicy,
        /// Defaults to `<subscription>.dlq`.
        #[serde(skip_serializing_if = "Option::is_none")]
        dead_letter_topic: Option<String>,
        /// One message in flight per ordering key, delivered in order.
        ordered: bool,
        /// Courier delivers the messages to a service itself; pulling keeps working beside it.
        #[serde(skip_serializing_if = "Option::is_none")]
        push: Option<PushConfig>,
    }

    /// The resilient client's settings for one service (`PUT /v1/services/{name}`,
    /// `[[services]]` in the config). Every field defaults; durations are
    /// milliseconds.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ServiceConfig {
        balance: Balance,
        /// Calls in flight at once to one instance (default 256).
        #[schema(minimum = 1)]
        max_concurrent_per_instance: u32,
        /// Milliseconds to open a connection (default 1000).
        #[schema(minimum = 1, maximum = 3153600000000_f64)]
        connect_timeout: u64,
        /// One multiplexed h2c connection per instance instead of an HTTP/1.1 pool.
        http2: bool,
        /// Active health checks; none by default.
        #[schema(nullable = true)]
        health_check: Option<HealthCheck>,
        outlier: OutlierDetection,
        breaker: BreakerConfig,
        /// Milliseconds a registered instance lives without a heartbeat (default 30000).
        #[schema(minimum = 1, maximum = 3153600000000_f64)]
        instance_ttl: u64,
    }

    /// How a service picks an instance: `round_robin` (default), `weighted`,
    /// `least_request`, `ring_hash` (on the ordering key, or `push.hash_header`),
    /// `p2c_ewma` (two random choices, lower latency x load wins).
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Balance {
        RoundRobin,
        Weighted,
        LeastRequest,
        RingHash,
        P2cEwma,
    }

    /// GET `path` on each instance every `interval` ms; a 2xx within `timeout` ms is healthy.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HealthCheck {
        path: String,
        #[schema(minimum = 1, maximum = 3153600000000_f64)]
        interval: u64,
        #[schema(minimum = 1, maximum = 3153600000000_f64)]
        timeout: u64,
        #[schema(minimum = 1)]
        healthy_threshold: u32,
        #[schema(minimum = 1)]
        unhealthy_threshold: u32,
    }

    /// Eject an instance after `consecutive_failures` failed calls in a row
    /// (0: never) for `ejection` ms, doubling on repeats up to `max_ejection` ms.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct OutlierDetection {
        consecutive_failures: u32,
        #[schema(minimum = 1, maximum = 3153600000000_f64)]
        ejection: u64,
        #[schema(minimum = 1, maximum = 3153600000000_f64)]
        max_ejection: u64,
    }

    /// A circuit per instance: opens when at least `min_requests` calls in the
    /// last `window` ms failed at `failure_rate` (0 to 1) or more; after
    /// `open_for` ms, `half_open_probes` calls go through and must all succeed.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct BreakerConfig {
        #[schema(minimum = 1, maximum = 3153600000000_f64)]
        window: u64,
        #[schema(minimum = 1)]
        min_requests: u32,
        #[schema(minimum = 0, maximum = 1)]
        failure_rate: f64,
        #[schema(minimum = 1, maximum = 3153600000000_f64)]
        open_for: u64,
        #[schema(minimum = 1)]
        half_open_probes: u32,
    }

    /// Push delivery: each message goes to an instance of `service` as an
    /// HTTP POST (CloudEvents binary mode, or a JSON batch), and a 2xx acks it.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PushConfig {
        /// The service whose instances receive the messages; required.
        #[schema(required = true, min_length = 1)]
        service: String,
        /// Path and query requested on the instance (default `/`).
        #[schema(pattern = "^/")]
        path: String,
        /// Messages per request: 1 (default) sends each message alone, more send JSON batches.
        #[schema(minimum = 1, maximum = 1000)]
        batch_size: u32,
        /// Requests in flight at once for this subscription (default 64).
        #[schema(minimum = 1, maximum = 10000)]
        max_concurrent: u32,
        /// Milliseconds one request may take before it counts as failed (default 10000); shorter than `ack_deadline`.
        #[schema(minimum = 1, maximum = 3153600000000_f64)]
        timeout: u64,
        /// Signing secret, `whsec_` and base64 (Standard Webhooks); requests are unsigned without one.
        #[serde(skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        /// Sent as `Authorization: Bearer <token>`.
        #[serde(skip_serializing_if = "Option::is_none")]
        bearer_token: Option<String>,
        /// Consistent hashing uses this message header instead of the ordering key.
        #[serde(skip_serializing_if = "Option::is_none")]
        hash_header: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct SubscriptionInfo {
        name: String,
        config: SubscriptionConfig,
        /// Every sequence below this is settled.
        ack_floor: u64,
        backlog: u64,
        in_flight: u64,
        waiting: u64,
        delivered_total: u64,
        acked_total: u64,
        dead_lettered_total: u64,
    }

    /// Body of `PATCH /v1/subscriptions/{name}`: the settings to change; those
    /// left out keep their value. The position, leases and counters stay;
    /// leases already granted keep their deadlines.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SubscriptionUpdate {
        /// Lease length in milliseconds, for leases granted from now on (at most 100 years).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(maximum = 3153600000000_f64)]
        ack_deadline: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_in_flight: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_in_flight_per_consumer: Option<u32>,
        /// Replaces the whole retry policy (fields left out take their defaults).
        #[serde(skip_serializing_if = "Option::is_none")]
        retry: Option<RetryPolicy>,
        /// Where messages go after the last attempt from now on.
        #[serde(skip_serializing_if = "Option::is_none")]
        dead_letter_topic: Option<String>,
        /// New push settings (replacing the old ones whole), or `null` to stop pushing.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = true)]
        push: Option<PushConfig>,
    }

    /// What an ack, nack or extend did to one message: `ok` (it took effect),
    /// `lease_lost` (the message is still pending, but this lease expired, was
    /// given back, or the message was leased again since), `not_leased` (the
    /// message is pending and was not leased since it was read or replayed),
    /// `not_found` (settled already, never published or not read yet, or not
    /// a token of this engine).
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Outcome {
        Ok,
        LeaseLost,
        NotLeased,
        NotFound,
    }

    /// One optional feature of the engine contract.
    #[derive(ToSchema, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Feature {
        OrderingKeys,
        DelayedDelivery,
        Dedup,
        SeekBySeq,
        SeekByTime,
        PerConsumerInFlight,
        LeaseExtension,
        NackDelay,
        TopicTails,
        DeadLetterReplay,
        SubscriptionUpdate,
        RetentionMaxAge,
        RetentionMaxBytes,
        RetentionMaxMessages,
        Release,
        Reject,
    }

    /// What the broker's engine supports. A request that needs a feature not
    /// listed is refused with 501 `unsupported_by_engine`.
    #[derive(ToSchema)]
    pub struct Capabilities {
        /// The engine's name, as in configuration (`embedded`, `nats`, `redis`).
        engine: String,
        features: Vec<Feature>,
        /// Longest dedup window the engine keeps, in milliseconds; null when unbounded.
        max_dedup_window: Option<u64>,
        /// Largest message body accepted, in bytes.
        max_message_bytes: u64,
    }

    #[derive(ToSchema)]
    pub struct PublishReceipt {
        seq: u64,
        id: String,
        /// True when this publish repeated an id already stored within the dedup window.
        duplicate: bool,
    }

    #[derive(ToSchema)]
    pub struct Stats {
        topics: u64,
        subscriptions: u64,
        messages: u64,
        bytes: u64,
        published_total: u64,
        delivered_total: u64,
        acked_total: u64,
        dead_lettered_total: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::Delivery;
    use proptest::prelude::*;

    fn delivery() -> impl Strategy<Value = Delivery> {
        (
            any::<u64>(),
            "\\PC{0,12}",
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of("[a-z\"\\\\\\n\u{e9}]{0,6}"),
            proptest::collection::btree_map("[a-z\"\\-]{1,5}", "\\PC{0,5}", 0..3),
            prop_oneof![
                "\\PC{0,40}".prop_map(Bytes::from),
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from),
            ],
            any::<u32>(),
            any::<u64>(),
            "[0-9a-z\"\\\\\\-]{0,12}",
        )
            .prop_map(
                |(
                    seq,
                    id,
                    published_at,
                    deliver_at,
                    key,
                    headers,
                    body,
                    attempt,
                    deadline,
                    token,
                )| {
                    Delivery {
                        message: Message {
                            seq,
                            id,
                            published_at,
                            deliver_at,
                            key,
                            headers,
                            body,
                        },
                        attempt,
                        lease_deadline: deadline,
                        token: LeaseToken::new(token),
                    }
                },
            )
    }

    proptest! {
        /// The pull hot path must not change a byte of what clients parse.
        #[test]
        fn pull_answer_is_the_views_json(deliveries in proptest::collection::vec(delivery(), 0..4)) {
            let mut direct = Vec::new();
            write_pull_answer(&mut direct, &deliveries);
            let direct = String::from_utf8(direct).unwrap();
            let views = PullResponse {
                messages: deliveries.iter().cloned().map(DeliveryView::from).collect(),
            };
            prop_assert_eq!(&direct, &serde_json::to_string(&views).unwrap());
            let back: PullResponse = serde_json::from_str(&direct).unwrap();
            prop_assert_eq!(back, views);
        }

        #[test]
        fn needs_escape_agrees_with_serde_json(text in "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}])*") {
            let escaped = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(needs_escape(text.as_bytes()), escaped.len() != text.len() + 2);
        }
    }

    #[test]
    fn needs_escape_finds_each_byte_in_every_lane() {
        for bad in (0u8..0x20).chain([b'"', b'\\']) {
            for len in 1..20 {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = bad;
                    assert!(needs_escape(&bytes), "{bad:#x} at {at} of {len}");
                }
            }
        }
        let clean: Vec<u8> = (0x20u8..=0xff)
            .filter(|b| ![b'"', b'\\'].contains(b))
            .collect();
        assert!(!needs_escape(&clean));
    }
}
