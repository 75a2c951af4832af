//! What a push looks like on the wire: the request Courier sends to a
//! service, the answers it understands, and the request signature.
//!
//! **Single push** (`batch_size` 1): the message body goes out untouched in
//! CloudEvents binary mode (`ce-id`, `ce-type`, `ce-source`, `ce-time`,
//! `ce-specversion`) with Courier's headers ([`headers`]). A 2xx answer acks
//! it. Any other answer, a timeout or a broken connection is a failed
//! attempt, retried by the subscription's retry policy, except that
//! - `Retry-After` (seconds or an HTTP date) on the answer sets the delay
//!   before the next attempt;
//! - `Courier-Dead-Letter` on a non-2xx answer sends the message to the
//!   dead-letter topic at once; its value is kept as the error.
//!
//! **Batch push** (`batch_size` > 1): one `application/json` request carrying
//! a [`PushBatch`]. A 2xx answer with an empty body acks every entry; a 2xx
//! answer with a [`PushBatchAnswer`] settles each entry by its status (an
//! entry the answer leaves out is retried); any other answer fails them all,
//! with `Retry-After` and `Courier-Dead-Letter` as for a single push.
//!
//! **Signature**: the [Standard Webhooks] scheme. With a subscription secret
//! `whsec_<base64 key>`, every request carries `webhook-id` (the message id,
//! or the batch id), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
//! [`verify`] checks one, with a tolerance on the timestamp against replays.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::MessageView;

/// Headers of a push request and of the answers Courier reads.
pub mod headers {
    pub const SUBSCRIPTION: &str = "courier-subscription";
    pub const TOPIC: &str = "courier-topic";
    pub const SEQ: &str = "courier-seq";
    pub const ATTEMPT: &str = "courier-attempt";
    pub const KEY: &str = "courier-key";
    /// Prefix of the message's own headers: `trace: abc` goes out as `courier-header-trace: abc`.
    pub const HEADER_PREFIX: &str = "courier-header-";
    /// On a non-2xx answer: dead-letter the message now; the value is kept as the error.
    pub const DEAD_LETTER: &str = "courier-dead-letter";
    pub const WEBHOOK_ID: &str = "webhook-id";
    pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
    pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
}

/// The CloudEvents type of a pushed message that did not carry its own `ce-type`.
pub const DEFAULT_EVENT_TYPE: &str = "dev.courier.message";

/// The body of a batch push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushBatch {
    pub subscription: String,
    pub topic: String,
    pub messages: Vec<PushedMessage>,
}

/// One entry of a batch push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedMessage {
    #[serde(flatten)]
    pub message: MessageView,
    /// 1 on the first delivery.
    pub attempt: u32,
}

/// What a receiver may answer to a batch push (with a 2xx status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushBatchAnswer {
    pub results: Vec<PushEntryResult>,
}

/// The fate of one batch entry, named by message id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEntryResult {
    pub id: String,
    pub status: PushEntryStatus,
    /// For `retry`: milliseconds before the next attempt (the retry policy's
    /// backoff when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// For `retry` and `dead_letter`: why, kept with the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushEntryStatus {
    Ack,
    Retry,
    DeadLetter,
}

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// How far a signature's timestamp may be from the receiver's clock by default.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// The key bytes of a `whsec_<base64>` secret (the prefix is optional).
pub fn secret_key(secret: &str) -> Result<Vec<u8>, SignatureError> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| SignatureError::BadSecret)?;
    if key.is_empty() {
        return Err(SignatureError::BadSecret);
    }
    Ok(key)
}

/// The `webhook-signature` value for one request: `v1,<base64>`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = mac(key, id, timestamp);
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

fn mac(key: &[u8], id: &str, timestamp: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(itoa::Buffer::new().format(timestamp).as_bytes());
    mac.update(b".");
    mac
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The secret is not `whsec_` and base64.
    BadSecret,
    /// A `webhook-*` header is missing or unreadable.
    MissingHeader(&'static str),
    /// The timestamp is further than the tolerance from now.
    Expired,
    /// No `v1` signature in the header matches.
    Mismatch,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureError::BadSecret => f.write_str("the secret is not whsec_ and base64"),
            SignatureError::MissingHeader(h) => write!(f, "header {h} is missing or unreadable"),
            SignatureError::Expired => f.write_str("the timestamp is outside the tolerance"),
            SignatureError::Mismatch => f.write_str("no signature matches"),
        }
    }
}

impl std::error::Error for SignatureError {}

/// Checks a pushed request: `id`, `timestamp` and `signature` are the values
/// of the `webhook-*` headers, `now` is the receiver's Unix time in seconds.
/// The header may list several space-separated signatures (secret rotation);
/// one matching `v1` signature is enough. Comparison is constant-time.
pub fn verify(
    key: &[u8],
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let id = id.ok_or(SignatureError::MissingHeader(headers::WEBHOOK_ID))?;
    let timestamp: u64 = timestamp
        .and_then(|t| t.trim().parse().ok())
        .ok_or(SignatureError::MissingHeader(headers::WEBHOOK_TIMESTAMP))?;
    let signature = signature.ok_or(SignatureError::MissingHeader(headers::WEBHOOK_SIGNATURE))?;
    if now.abs_diff(timestamp) > tolerance_secs {
        return Err(SignatureError::Expired);
    }
    for candidate in signature.split_whitespace() {
        let Some(b64) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            continue;
        };
        let mut mac = mac(key, id, timestamp);
        mac.update(body);
        if mac.verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_specification_example() {
        let key = secret_key(SECRET).unwrap();
        assert_eq!(sign(&key, ID, TS, BODY), SIG);
    }

    #[test]
    fn verifies_good_and_refuses_tampered_or_expired() {
        let key = secret_key(SECRET).unwrap();
        let check = |body: &[u8], sig: &str, now: u64| {
            verify(
                &key,
                Some(ID),
                Some("1614265330"),
                Some(sig),
                body,
                now,
                300,
            )
        };
        assert_eq!(check(BODY, SIG, TS + 10), Ok(()));
        // Rotation: one of several signatures is enough.
        assert_eq!(check(BODY, &format!("v1,AAAA {SIG}"), TS), Ok(()));
        assert_eq!(
            check(br#"{"test": 2432232315}"#, SIG, TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(check(BODY, SIG, TS + 301), Err(SignatureError::Expired));
        assert_eq!(check(BODY, SIG, TS - 301), Err(SignatureError::Expired));
        assert_eq!(
            verify(&key, None, Some("1"), Some(SIG), BODY, 1, 300),
            Err(SignatureError::MissingHeader(headers::WEBHOOK_ID))
        );
        assert_eq!(secret_key("whsec_!!"), Err(SignatureError::BadSecret));
    }
}
