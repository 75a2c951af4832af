//! For services that receive pushes: check that a request came from Courier.
//!
//! ```
//! use courier_client::push::PushVerifier;
//! # fn handle(headers: &http::HeaderMap, body: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = PushVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//! verifier.verify(headers, body)?; // before trusting the body
//! # Ok(()) }
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use courier_api::push::{self, headers, SignatureError};

/// Checks the Standard Webhooks signature of pushed requests with one
/// subscription secret.
#[derive(Clone)]
pub struct PushVerifier {
    key: Vec<u8>,
    tolerance_secs: u64,
}

impl std::fmt::Debug for PushVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("PushVerifier")
            .field("tolerance_secs", &self.tolerance_secs)
            .finish_non_exhaustive()
    }
}

impl PushVerifier {
    /// `secret` is the subscription's `push.secret` (`whsec_<base64>`).
    pub fn new(secret: &str) -> Result<Self, SignatureError> {
        Ok(Self {
            key: push::secret_key(secret)?,
            tolerance_secs: push::DEFAULT_TOLERANCE_SECS,
        })
    }

    /// How far the request's timestamp may be from this machine's clock
    /// (5 minutes by default); older requests are refused as replays.
    pub fn tolerance_secs(mut self, secs: u64) -> Self {
        self.tolerance_secs = secs;
        self
    }

    /// `Ok` when the request's `webhook-signature` matches its id, timestamp and body.
    pub fn verify(&self, headers: &http::HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(headers, body, now)
    }

    /// [`Self::verify`] against a given Unix time in seconds.
    pub fn verify_at(
        &self,
        map: &http::HeaderMap,
        body: &[u8],
        now: u64,
    ) -> Result<(), SignatureError> {
        let get = |name: &str| map.get(name).and_then(|v| v.to_str().ok());
        push::verify(
            &self.key,
            get(headers::WEBHOOK_ID),
            get(headers::WEBHOOK_TIMESTAMP),
            get(headers::WEBHOOK_SIGNATURE),
            body,
            now,
            self.tolerance_secs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_headers_of_a_signed_request() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = push::secret_key(secret).unwrap();
        let body = b"{\"liked\":1}";
        let mut map = http::HeaderMap::new();
        map.insert(headers::WEBHOOK_ID, "01J0".parse().unwrap());
        map.insert(headers::WEBHOOK_TIMESTAMP, "1000".parse().unwrap());
        let sig = push::sign(&key, "01J0", 1000, body);
        map.insert(headers::WEBHOOK_SIGNATURE, sig.parse().unwrap());
        let v = PushVerifier::new(secret).unwrap();
        assert_eq!(v.verify_at(&map, body, 1010), Ok(()));
        assert_eq!(
            v.verify_at(&map, b"{\"liked\":2}", 1010),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(v.verify_at(&map, body, 2000), Err(SignatureError::Expired));
        map.remove(headers::WEBHOOK_SIGNATURE);
        assert_eq!(
            v.verify_at(&map, body, 1000),
            Err(SignatureError::MissingHeader(headers::WEBHOOK_SIGNATURE))
        );
    }
}
