//! Builds the HTTP request of a push: CloudEvents binary mode for one
//! message, a JSON [`PushBatch`] for several, signed when the subscription
//! has a secret. The wire format is documented in `courier_api::push`.

use bytes::Bytes;
use courier_api::push::{self, headers as h, PushBatch, PushedMessage};
use courier_core::{Delivery, Message, PushConfig};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request};

/// What the requests of one push subscription share.
pub(crate) struct Signer {
    subscription: String,
    topic: String,
    path: String,
    key: Option<Vec<u8>>,
    bearer: Option<HeaderValue>,
}

impl Signer {
    pub fn new(subscription: &str, topic: &str, config: &PushConfig) -> Self {
        Self {
            subscription: subscription.to_string(),
            topic: topic.to_string(),
            path: config.path.clone(),
            // `PushConfig` was validated when stored; a secret that does not
            // decode was refused there.
            key: config
                .secret
                .as_deref()
                .and_then(|s| push::secret_key(s).ok()),
            bearer: config
                .bearer_token
                .as_deref()
                .and_then(|t| HeaderValue::try_from(format!("Bearer {t}")).ok()),
        }
    }

    /// One message, body untouched.
    pub fn single(&self, d: &Delivery, now_secs: u64) -> Request<Bytes> {
        let m = &d.message;
        let mut req = self.base(&m.id, now_secs, &m.body);
        let map = req.headers_mut();
        let content_type = m
            .headers
            .get("content-type")
            .map(String::as_str)
            .unwrap_or("application/octet-stream");
        insert(map, CONTENT_TYPE, content_type);
        cloud_event_headers(map, &self.topic, m);
        insert(map, h::SEQ, itoa::Buffer::new().format(m.seq));
        insert(map, h::ATTEMPT, itoa::Buffer::new().format(d.attempt));
        if let Some(key) = &m.key {
            insert(map, h::KEY, key);
        }
        *req.body_mut() = m.body.clone();
        req
    }

    /// Several messages in one JSON request.
    pub fn batch(&self, deliveries: &[Delivery], now_secs: u64) -> Request<Bytes> {
        let batch = PushBatch {
            subscription: self.subscription.clone(),
            topic: self.topic.clone(),
            messages: deliveries
                .iter()
                .map(|d| PushedMessage {
                    message: d.message.clone().into(),
                    attempt: d.attempt,
                })
                .collect(),
        };
        let body = Bytes::from(serde_json::to_vec(&batch).expect("wire types serialize"));
        let first = deliveries.first().map_or("", |d| d.message.id.as_str());
        // Unique per batch content: the same messages sent again (a retry)
        // carry the same id, so a receiver may deduplicate whole batches.
        let id = format!("batch_{first}_{}", deliveries.len());
        let mut req = self.base(&id, now_secs, &body);
        insert(req.headers_mut(), CONTENT_TYPE, "application/json");
        *req.body_mut() = body;
        req
    }

    fn base(&self, id: &str, now_secs: u64, body: &[u8]) -> Request<Bytes> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .body(Bytes::new())
            .expect("the path was validated");
        let map = req.headers_mut();
        insert(map, h::SUBSCRIPTION, &self.subscription);
        insert(map, h::TOPIC, &self.topic);
        if let Some(key) = &self.key {
            insert(map, h::WEBHOOK_ID, id);
            insert(
                map,
                h::WEBHOOK_TIMESTAMP,
                itoa::Buffer::new().format(now_secs),
            );
            insert(
                map,
                h::WEBHOOK_SIGNATURE,
                &push::sign(key, id, now_secs, body),
            );
        }
        if let Some(bearer) = &self.bearer {
            map.insert(AUTHORIZATION, bearer.clone());
        }
        req
    }
}

/// `ce-*` attributes: the message's own where it has them (published as
/// CloudEvents), Courier's otherwise; the message's other headers go out
/// as `courier-header-<name>`.
fn cloud_event_headers(map: &mut http::HeaderMap, topic: &str, m: &Message) {
    for (name, value) in &m.headers {
        if name == "content-type" {
            continue;
        }
        let wire = if name.starts_with("ce-") {
            name.clone()
        } else {
            format!("{}{name}", h::HEADER_PREFIX)
        };
        insert(map, wire.as_str(), value);
    }
    insert(map, "ce-specversion", "1.0");
    insert(map, "ce-id", &m.id);
    if !m.headers.contains_key("ce-type") {
        insert(map, "ce-type", push::DEFAULT_EVENT_TYPE);
    }
    if !m.headers.contains_key("ce-source") {
        insert(map, "ce-source", &format!("/courier/topics/{topic}"));
    }
    if !m.headers.contains_key("ce-time") {
        insert(map, "ce-time", &rfc3339(m.published_at));
    }
}

fn rfc3339(millis: u64) -> String {
    let nanos = i128::from(millis) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Headers whose name or value cannot go on the wire are left out: message
/// headers were checked at publish, so this only drops what no HTTP peer
/// could read anyway.
fn insert<N>(map: &mut http::HeaderMap, name: N, value: &str)
where
    N: TryInto<HeaderName>,
{
    if let (Ok(name), Ok(value)) = (name.try_into(), HeaderValue::try_from(value)) {
        map.append(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::LeaseToken;

    fn delivery(body: &str) -> Delivery {
        let mut headers = courier_core::Headers::new();
        headers.insert("trace".into(), "t-1".into());
        headers.insert("content-type".into(), "application/json".into());
        Delivery {
            message: Message {
                seq: 7,
                id: "01J0ABC".into(),
                published_at: 1_700_000_000_123,
                deliver_at: None,
                key: Some("post-9".into()),
                headers,
                body: Bytes::from(body.to_string()),
            },
            attempt: 2,
            lease_deadline: 0,
            token: LeaseToken::new("7.1"),
        }
    }

    #[test]
    fn a_single_push_is_a_signed_cloud_event() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let config = PushConfig {
            service: "svc".into(),
            path: "/hooks/reactions?v=1".into(),
            secret: Some(secret.into()),
            bearer_token: Some("tkn".into()),
            ..PushConfig::default()
        };
        let req =
            Signer::new("notify", "reactions", &config).single(&delivery("{}"), 1_700_000_001);
        let hv = |n: &str| req.headers().get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(req.uri(), "/hooks/reactions?v=1");
        assert_eq!(req.body().as_ref(), b"{}");
        assert_eq!(hv("content-type"), "application/json");
        assert_eq!(hv("ce-id"), "01J0ABC");
        assert_eq!(hv("ce-specversion"), "1.0");
        assert_eq!(hv("ce-type"), push::DEFAULT_EVENT_TYPE);
        assert_eq!(hv("ce-source"), "/courier/topics/reactions");
        assert_eq!(hv("ce-time"), "2023-11-14T22:13:20.123Z");
        assert_eq!(hv("courier-header-trace"), "t-1");
        assert_eq!(hv("courier-seq"), "7");
        assert_eq!(hv("courier-attempt"), "2");
        assert_eq!(hv("courier-key"), "post-9");
        assert_eq!(hv("courier-subscription"), "notify");
        assert_eq!(hv("authorization"), "Bearer tkn");
        let verifier = courier_client::push::PushVerifier::new(secret).unwrap();
        assert_eq!(
            verifier.verify_at(req.headers(), b"{}", 1_700_000_001),
            Ok(())
        );
        assert!(verifier
            .verify_at(req.headers(), b"{ }", 1_700_000_001)
            .is_err());
    }

    #[test]
    fn a_batch_carries_every_message_and_its_attempt() {
        let config = PushConfig {
            service: "svc".into(),
            batch_size: 10,
            ..PushConfig::default()
        };
        let req =
            Signer::new("notify", "reactions", &config).batch(&[delivery("a"), delivery("b")], 1);
        let batch: PushBatch = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(batch.messages.len(), 2);
        assert_eq!(batch.messages[1].message.body.as_deref(), Some("b"));
        assert_eq!(batch.messages[1].attempt, 2);
        assert!(req.headers().get("webhook-signature").is_none());
    }
}
