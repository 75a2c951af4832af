use std::time::Duration;

use bytes::Bytes;
use courier_core::{
    Capabilities, Headers, LeaseToken, PublishReceipt, SeekTarget, Seq, Stats, SubscriptionConfig,
    SubscriptionInfo, SubscriptionUpdate, TopicConfig, TopicInfo,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::wire::{self, *};

/// The broker a client talks to when none is given.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7070";

/// A typed client for the Courier HTTP API. Cheap to clone: clones share one
/// connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

/// How a `create_*` call ended: the object, and whether this call created it
/// (`false`: an identical one already existed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created<T> {
    pub value: T,
    pub created: bool,
}

/// Metadata of a single publish; the body travels untouched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    pub id: Option<String>,
    pub key: Option<String>,
    pub headers: Headers,
    pub content_type: Option<String>,
    pub delay: Option<Duration>,
    pub deliver_at: Option<wire::Timestamp>,
}

/// One message of a raw pull, exactly as the server sent it (CloudEvents
/// binary or structured mode).
#[derive(Debug, Clone)]
pub struct RawDelivery {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawDelivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn seq(&self) -> Option<Seq> {
        self.header(headers::SEQ).and_then(|v| v.parse().ok())
    }

    /// The lease token that acks, nacks or extends this delivery (`Courier-Token`).
    pub fn token(&self) -> Option<LeaseToken> {
        self.header(headers::TOKEN).map(LeaseToken::new)
    }
}

#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    timeout: Option<Duration>,
    http2_prior_knowledge: bool,
}

impl ClientBuilder {
    /// Overall time limit of each request. Leave it longer than pull waits.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Speak HTTP/2 over cleartext from the first byte (h2c with prior knowledge).
    pub fn http2_prior_knowledge(mut self) -> Self {
        self.http2_prior_knowledge = true;
        self
    }

    pub fn build(self) -> Result<Client> {
        let mut base = Url::parse(&self.url)
            .map_err(|e| Error::InvalidRequest(format!("server URL '{}': {e}", self.url)))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(Error::InvalidRequest(format!(
                "server URL '{}' must be http://host:port",
                self.url
            )));
        }
        // Paths are appended segment by segment; a trailing slash would add an empty one.
        if base.path().ends_with('/') {
            let trimmed = base.path().trim_end_matches('/').to_owned();
            base.set_path(&trimmed);
        }
        // The server closes keep-alive connections idle for its header read
        // timeout (10 s by default); drop them first rather than race it.
        let mut http = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(5));
        if let Some(t) = self.timeout {
            http = http.timeout(t);
        }
        if self.http2_prior_knowledge {
            http = http.http2_prior_knowledge();
        }
        let http = http
            .build()
            .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        Ok(Client { http, base })
    }
}

impl Client {
    pub fn new(url: &str) -> Result<Self> {
        Self::builder(url).build()
    }

    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder {
            url: url.to_owned(),
            timeout: None,
            http2_prior_knowledge: false,
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    // ---- topics ----

    pub async fn create_topic(
        &self,
        name: &str,
        config: &TopicConfig,
    ) -> Result<Created<TopicInfo>> {
        let response = self
            .send(
                self.request(Method::PUT, &["v1", "topics", name])
                    .json(config),
            )
            .await?;
        created(response).await
    }

    pub async fn topic(&self, name: &str) -> Result<TopicInfo> {
        self.get_json(&["v1", "topics", name]).await
    }

    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        Ok(self.get_json::<TopicList>(&["v1", "topics"]).await?.topics)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &["v1", "topics", name]))
            .await
            .map(drop)
    }

    /// Deletes a topic together with the subscriptions that read it.
    pub async fn delete_topic_force(&self, name: &str) -> Result<()> {
        self.send(
            self.request(Method::DELETE, &["v1", "topics", name])
                .query(&[("force", "true")]),
        )
        .await
        .map(drop)
    }

    // ---- messages ----

    /// Publishes one message; the body is stored byte for byte.
    pub async fn publish(
        &self,
        topic: &str,
        body: impl Into<Bytes>,
        options: &Publish,
    ) -> Result<PublishReceipt> {
        let mut request = self
            .request(Method::POST, &["v1", "topics", topic, "messages"])
            .body(body.into());
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(id) = &options.id {
            pairs.push((headers::ID.into(), id.clone()));
        }
        if let Some(key) = &options.key {
            pairs.push((headers::KEY.into(), key.clone()));
        }
        if let Some(delay) = options.delay {
            pairs.push((headers::DELAY.into(), delay.as_millis().to_string()));
        }
        match &options.deliver_at {
            Some(Timestamp::Millis(ms)) => pairs.push((headers::DELIVER_AT.into(), ms.to_string())),
            Some(Timestamp::Rfc3339(s)) => pairs.push((headers::DELIVER_AT.into(), s.clone())),
            None => {}
        }
        if let Some(ct) = &options.content_type {
            pairs.push((CONTENT_TYPE.as_str().into(), ct.clone()));
        }
        for (name, value) in &options.headers {
            pairs.push((format!("{}{name}", headers::HEADER_PREFIX), value.clone()));
        }
        for (name, value) in pairs {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| Error::InvalidRequest(format!("invalid header name '{name}'")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| Error::InvalidRequest(format!("invalid value for header '{name}'")))?;
            request = request.header(name, value);
        }
        json(self.send(request).await?).await
    }

    /// Publishes one message given as raw HTTP headers and body (CloudEvents binary
    /// or structured mode, or anything else the single-publish endpoint accepts).
    pub async fn publish_raw(
        &self,
        topic: &str,
        headers: HeaderMap,
        body: impl Into<Bytes>,
    ) -> Result<PublishReceipt> {
        let request = self
            .request(Method::POST, &["v1", "topics", topic, "messages"])
            .headers(headers)
            .body(body.into());
        json(self.send(request).await?).await
    }

    /// Publishes many messages durably in one request; receipts come back in order.
    pub async fn publish_batch(
        &self,
        topic: &str,
        messages: Vec<PublishMessage>,
    ) -> Result<Vec<PublishReceipt>> {
        let body = PublishBatch { messages };
        let response = self
            .send(
                self.request(Method::POST, &["v1", "topics", topic, "messages", "batch"])
                    .json(&body),
            )
            .await?;
        Ok(json::<PublishBatchResponse>(response).await?.receipts)
    }

    /// Stored messages of a topic from `from` on, without leasing them.
    pub async fn browse(&self, topic: &str, from: Seq, max: usize) -> Result<Vec<MessageView>> {
        let request = self
            .request(Method::GET, &["v1", "topics", topic, "messages"])
            .query(&[("from", from as u128), ("max", max as u128)]);
        Ok(json::<MessageList>(self.send(request).await?)
            .await?
            .messages)
    }

    // ---- subscriptions ----

    pub async fn create_subscription(
        &self,
        name: &str,
        config: &SubscriptionConfig,
    ) -> Result<Created<SubscriptionInfo>> {
        let response = self
            .send(
                self.request(Method::PUT, &["v1", "subscriptions", name])
                    .json(config),
            )
            .await?;
        created(response).await
    }

    pub async fn subscription(&self, name: &str) -> Result<SubscriptionInfo> {
        self.get_json(&["v1", "subscriptions", name]).await
    }

    pub async fn list_subscriptions(&self) -> Result<Vec<SubscriptionInfo>> {
        Ok(self
            .get_json::<SubscriptionList>(&["v1", "subscriptions"])
            .await?
            .subscriptions)
    }

    /// Changes a live subscription's settings (those left `None` stay), keeping
    /// its position, leases and counters.
    pub async fn update_subscription(
        &self,
        name: &str,
        update: &SubscriptionUpdate,
    ) -> Result<SubscriptionInfo> {
        let request = self
            .request(Method::PATCH, &["v1", "subscriptions", name])
            .json(update);
        json(self.send(request).await?).await
    }

    pub async fn delete_subscription(&self, name: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &["v1", "subscriptions", name]))
            .await
            .map(drop)
    }

    /// Leases messages, waiting up to `wait_ms` for the first one.
    pub async fn pull(&self, subscription: &str, body: &PullBody) -> Result<Vec<DeliveryView>> {
        let response: PullResponse = self.post_json(subscription, "pull", body).await?;
        Ok(response.messages)
    }

    /// Leases at most one message and receives it as it was published:
    /// CloudEvents binary mode as `ce-*` headers, structured mode as
    /// `application/cloudevents+json`. `None` when nothing arrived within the wait.
    pub async fn pull_raw(
        &self,
        subscription: &str,
        body: &PullBody,
    ) -> Result<Option<RawDelivery>> {
        let request = self
            .request(Method::POST, &["v1", "subscriptions", subscription, "pull"])
            .header(ACCEPT, CLOUDEVENTS_JSON)
            .json(body);
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok(Some(RawDelivery { headers, body }))
    }

    /// Settles the messages whose leases `tokens` name. The answer has one
    /// result per token, in order; only the `ok` ones took effect (see
    /// [`SettleResponse::ok_count`]). An answer with no `ok` is still `Ok`.
    pub async fn ack(&self, subscription: &str, tokens: &[LeaseToken]) -> Result<SettleResponse> {
        let body = AckBody {
            tokens: tokens.to_vec(),
        };
        self.post_json(subscription, "ack", &body).await
    }

    /// Gives leased messages back for redelivery; one result per token, in order.
    pub async fn nack(&self, subscription: &str, body: &NackBody) -> Result<SettleResponse> {
        self.post_json(subscription, "nack", body).await
    }

    /// Pushes lease deadlines to now + `by`; one result per token, in order.
    pub async fn extend(
        &self,
        subscription: &str,
        tokens: &[LeaseToken],
        by: Duration,
    ) -> Result<SettleResponse> {
        let body = ExtendBody {
            tokens: tokens.to_vec(),
            by_ms: by.as_millis() as u64,
        };
        self.post_json(subscription, "extend", &body).await
    }

    pub async fn seek(&self, subscription: &str, target: SeekTarget) -> Result<()> {
        let body = match target {
            SeekTarget::Seq(seq) => SeekBody {
                seq: Some(seq),
                time: None,
            },
            SeekTarget::Time(ms) => SeekBody {
                seq: None,
                time: Some(Timestamp::Millis(ms)),
            },
        };
        self.post_no_content(subscription, "seek", &body).await
    }

    /// Dead letters not yet replayed, oldest first.
    pub async fn dead_letters(&self, subscription: &str, max: usize) -> Result<Vec<MessageView>> {
        let request = self
            .request(
                Method::GET,
                &["v1", "subscriptions", subscription, "dead-letters"],
            )
            .query(&[("max", max)]);
        Ok(json::<MessageList>(self.send(request).await?)
            .await?
            .messages)
    }

    /// Puts dead letters back into the subscription; returns how many.
    pub async fn replay_dead_letters(&self, subscription: &str, up_to: Option<Seq>) -> Result<u64> {
        let request = self
            .request(
                Method::POST,
                &[
                    "v1",
                    "subscriptions",
                    subscription,
                    "dead-letters",
                    "replay",
                ],
            )
            .json(&ReplayBody { up_to });
        Ok(json::<ReplayResponse>(self.send(request).await?)
            .await?
            .replayed)
    }

    // ---- broker ----

    pub async fn stats(&self) -> Result<Stats> {
        self.get_json(&["v1", "stats"]).await
    }

    /// What the broker's engine supports.
    pub async fn capabilities(&self) -> Result<Capabilities> {
        self.get_json(&["v1", "capabilities"]).await
    }

    /// Whether the broker answers at all.
    pub async fn health(&self) -> Result<Health> {
        self.get_json(&["healthz"]).await
    }

    /// Whether the broker accepts work (false while it shuts down).
    pub async fn ready(&self) -> Result<Health> {
        self.get_json(&["readyz"]).await
    }

    /// The OpenAPI document the server serves.
    /// Gives leased messages back without spending an attempt; one result per token.
    pub async fn release(
        &self,
        subscription: &str,
        tokens: &[LeaseToken],
    ) -> Result<SettleResponse> {
        let body = AckBody {
            tokens: tokens.to_vec(),
        };
        self.post_json(subscription, "release", &body).await
    }

    /// Dead-letters leased messages at once; one result per token.
    pub async fn reject(&self, subscription: &str, body: &RejectBody) -> Result<SettleResponse> {
        self.post_json(subscription, "reject", body).await
    }

    /// Push statistics of a push subscription (as JSON: backlog, in flight,
    /// delivered, failed, dead-lettered, oldest unacked age).
    pub async fn push_stats(&self, subscription: &str) -> Result<serde_json::Value> {
        self.get_json(&["v1", "subscriptions", subscription, "push"])
            .await
    }

    // ---- services ----

    /// Defines a service or changes its settings (`balance`, `health_check`,
    /// `breaker`, ...; see the OpenAPI document). Answers the service's view.
    pub async fn define_service(
        &self,
        name: &str,
        settings: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let request = self
            .request(Method::PUT, &["v1", "services", name])
            .json(settings);
        json(self.send(request).await?).await
    }

    /// A service with each instance's health, circuit state and latency.
    pub async fn service(&self, name: &str) -> Result<serde_json::Value> {
        self.get_json(&["v1", "services", name]).await
    }

    pub async fn services(&self) -> Result<serde_json::Value> {
        self.get_json(&["v1", "services"]).await
    }

    pub async fn delete_service(&self, name: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &["v1", "services", name]))
            .await
            .map(drop)
    }

    /// Registers an instance (or refreshes it: calling again is a heartbeat).
    pub async fn register_instance(
        &self,
        service: &str,
        registration: &InstanceRegistration,
    ) -> Result<Registered> {
        let request = self
            .request(Method::POST, &["v1", "services", service, "instances"])
            .json(registration);
        json(self.send(request).await?).await
    }

    /// Keeps a registered instance; `Error::Api` with `instance_not_found`
    /// when it expired (register again).
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<()> {
        let request = self.request(
            Method::POST,
            &["v1", "services", service, "instances", id, "heartbeat"],
        );
        self.send(request).await.map(drop)
    }

    pub async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        let request = self.request(
            Method::DELETE,
            &["v1", "services", service, "instances", id],
        );
        self.send(request).await.map(drop)
    }

    pub async fn openapi(&self) -> Result<serde_json::Value> {
        self.get_json(&["openapi.json"]).await
    }

    // ---- plumbing ----

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `cannot_be_a_base` was ruled out in `build`, so this cannot fail.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.http.request(method, self.url(segments))
    }

    async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let response = request.send().await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(problem(response).await)
    }

    async fn get_json<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T> {
        json(self.send(self.request(Method::GET, segments)).await?).await
    }

    async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        subscription: &str,
        action: &str,
        body: &B,
    ) -> Result<T> {
        let request = self
            .request(Method::POST, &["v1", "subscriptions", subscription, action])
            .json(body);
        json(self.send(request).await?).await
    }

    async fn post_no_content<B: Serialize>(
        &self,
        subscription: &str,
        action: &str,
        body: &B,
    ) -> Result<()> {
        let request = self
            .request(Method::POST, &["v1", "subscriptions", subscription, action])
            .json(body);
        self.send(request).await.map(drop)
    }
}

async fn json<T: DeserializeOwned>(response: Response) -> Result<T> {
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("invalid JSON answer: {e}")))
}

async fn created<T: DeserializeOwned>(response: Response) -> Result<Created<T>> {
    let created = response.status() == StatusCode::CREATED;
    Ok(Created {
        value: json(response).await?,
        created,
    })
}

/// Turns an error answer into `Error::Api` (`Error::RateLimited` for 429),
/// inventing a problem document when a proxy or an older server answered with
/// something else.
async fn problem(response: Response) -> Error {
    let status = response.status();
    let retry_after = crate::error::retry_after(response.headers());
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return Error::from(e),
    };
    let problem = serde_json::from_slice::<Problem>(&bytes).unwrap_or_else(|_| Problem {
        type_: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("error").into(),
        status: status.as_u16(),
        code: format!("http_{}", status.as_u16()),
        detail: Some(String::from_utf8_lossy(&bytes).chars().take(500).collect()),
    });
    if status == StatusCode::TOO_MANY_REQUESTS {
        Error::RateLimited {
            problem,
            retry_after,
        }
    } else {
        Error::Api { problem }
    }
}
