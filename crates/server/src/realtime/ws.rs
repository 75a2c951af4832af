//! `GET /v1/ws`: one WebSocket carries many subscriptions, publishes and
//! consumes, in the JSON frames of [`courier_api::realtime::ws`]
//! (docs/realtime.md, "WebSocket protocol").
//!
//! One connection is a handful of tasks around one bounded queue:
//!
//! ```text
//!  client ──frames──▶ Connection::run ──publish/ack futures (≤ ws_publishes_in_flight)
//!                         │  spawns
//!                         ├─▶ follow(sub)  : Feed ─┐
//!                         └─▶ consume(sub) : pull ─┤ Outbox (≤ ws_send_queue frames)
//!                                                  ▼
//!  client ◀──frames── writer (pings when idle, the close frame at the end)
//! ```
//!
//! Every producer puts serialized frames in the [`Outbox`]. When it is full
//! a producer waits (the log is the buffer: a subscription catching up
//! simply goes at the client's pace), but for at most
//! `realtime.ws_send_timeout`: a client that takes no frame for that long
//! is closed with 4008 "slow consumer", its queued frames dropped. So one
//! connection holds at most `ws_send_queue` frames plus tungstenite's small
//! write buffer, whatever the client does.
//!
//! Publishes read in one wake-up of the connection (a client with many in
//! flight sends them back to back) go to the engine as one batch per topic:
//! one append and one fsync for all of them, as a batch publish over HTTP
//! would, instead of one engine call each. Each still gets its own answer.
//!
//! The connection ends when the client closes it, when it sends nothing
//! (not even a pong) for three keep-alive intervals (4000), when its token
//! expires (4001), and at shutdown (1001, after the publishes in flight are
//! answered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use courier_api::realtime::ws::{close, ClientFrame, ServerFrame};
use courier_api::{Problem, PublishMessage};
use courier_core::{LeaseToken, NewMessage, PullRequest, StartPosition};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, SplitSink};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{parse_from, Admission, ClientIp, Feed, FeedEvent, Filter};
use crate::api::{message_from_json, AppState};
use crate::auth::Access;
use crate::error::{codes, ApiError};

/// tungstenite buffers: its defaults (128 KiB each way) would cost a
/// quarter of a megabyte per idle connection.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 8 * 1024;
/// How long the close frame may take to go out (after the frames before
/// it, at shutdown) before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Most frames read without waiting, after the one that woke the
/// connection, before their publishes go to the engine.
const MAX_FRAMES_PER_WAKE: usize = 256;
/// Most queued frames the writer hands the socket in one write.
const FRAMES_PER_WRITE: usize = 64;
/// Most deliveries one pull of a consume asks for.
const CONSUME_BATCH: usize = 100;
const DEFAULT_CONSUME_IN_FLIGHT: u32 = 10;

/// Opens a WebSocket for subscriptions, publishes and consumes.
///
/// Speaks the JSON protocol of docs/realtime.md ("WebSocket protocol"). The
/// token (`Authorization: Bearer` or `?token=`) is checked at the upgrade;
/// each subscribe, consume and publish is then checked against its grants.
#[utoipa::path(
    get, path = "/v1/ws", tag = "realtime",
    params(
        ("token" = Option<String>, Query, description = "A JWT, for clients that cannot send `Authorization: Bearer` (browsers)"),
    ),
    security((), ("bearer" = []), ("token" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "`invalid_header`: not a WebSocket upgrade request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`: a token that is not valid, or none while anonymous access is off", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`too_many_connections` (this client's streaming connections) or `rate_limited`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`realtime_full`: the server's streaming connections are all taken; or `shutting_down`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn ws(
    State(s): State<AppState>,
    access: Access,
    ClientIp(client): ClientIp,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|r| {
        ApiError::new(
            if r.status() == StatusCode::METHOD_NOT_ALLOWED {
                StatusCode::METHOD_NOT_ALLOWED
            } else {
                StatusCode::BAD_REQUEST
            },
            codes::INVALID_HEADER,
            format!("/v1/ws speaks WebSocket only: {}", r.body_text()),
        )
    })?;
    if let Access::Anonymous(a) = &access {
        if !a.read && !a.publish {
            return Err(ApiError::unauthenticated(
                "a token is required (Authorization: Bearer, or ?token=)",
            ));
        }
    }
    if s.draining.is_cancelled() {
        return Err(courier_core::Error::ShuttingDown.into());
    }
    let admission = s.realtime.limits.admit(client, "ws")?;
    // Counted until the connection's last task ends: the drain waits for it.
    let tracked = s.realtime.connections.token();
    let max = s.realtime.ws.max_message;
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + max + 1024)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            Connection::new(s, access, admission).run(socket).await;
            drop(tracked);
        }))
}

/// The WebSocket settings of `[realtime]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WsSettings {
    pub send_queue: usize,
    pub send_timeout: Duration,
    pub publishes_in_flight: usize,
    pub max_message: usize,
}

/// Why the server ends a connection: the close frame it sends.
struct Closing {
    frame: Mutex<Option<(u16, &'static str)>>,
    /// Cancelled when the client is too slow: its queued frames are dropped.
    evicted: CancellationToken,
}

impl Closing {
    /// The first reason given wins.
    fn set(&self, code: u16, reason: &'static str) {
        let mut frame = self.frame.lock().unwrap_or_else(|e| e.into_inner());
        frame.get_or_insert((code, reason));
    }
}

/// The connection's bounded queue of outgoing frames.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Utf8Bytes>,
    closing: Arc<Closing>,
    send_timeout: Duration,
}

impl Outbox {
    /// Queues `frame`, waiting up to `send_timeout` for room; `false` when
    /// the connection is ending (or just ended for being too slow).
    async fn send(&self, frame: &ServerFrame) -> bool {
        let text = Utf8Bytes::from(serde_json::to_string(frame).expect("wire types serialize"));
        let permit = match self.tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => return false,
            Err(mpsc::error::TrySendError::Full(())) => {
                let wait = tokio::time::timeout(self.send_timeout, self.tx.reserve());
                tokio::select! {
                    waited = wait => match waited {
                        Ok(Ok(permit)) => permit,
                        Ok(Err(_)) => return false,
                        Err(_) => {
                            self.evict();
                            return false;
                        }
                    },
                    () = self.closing.evicted.cancelled() => return false,
                }
            }
        };
        permit.send(text);
        true
    }

    async fn error(&self, ref_: Option<String>, sub: Option<String>, e: ApiError) {
        self.send(&ServerFrame::Error {
            ref_,
            sub,
            code: e.code.to_owned(),
            message: e.detail,
        })
        .await;
    }

    fn evict(&self) {
        if !self.closing.evicted.is_cancelled() {
            self.closing.set(close::SLOW_CONSUMER, "slow consumer");
            self.closing.evicted.cancel();
            metrics::counter!("courier_realtime_ws_slow_closes_total").increment(1);
        }
    }
}

/// Deliveries of one consume not yet settled over this connection: at most
/// `max` at once. Leases that expire give their place back.
struct Credit {
    subscription: String,
    max: usize,
    /// Token → lease deadline (ms since the epoch, the engine's clock).
    leased: Mutex<HashMap<LeaseToken, u64>>,
    freed: Notify,
}

impl Credit {
    /// Waits until fewer than `max` deliveries are unsettled; how many more may go.
    async fn room(&self) -> usize {
        loop {
            let freed = self.freed.notified();
            let next_expiry = {
                let mut leased = self.leased.lock().unwrap_or_else(|e| e.into_inner());
                let now = now_ms();
                leased.retain(|_, deadline| *deadline > now);
                if leased.len() < self.max {
                    return self.max - leased.len();
                }
                leased.values().min().map(|d| d.saturating_sub(now))
            };
            let expiry = Duration::from_millis(next_expiry.unwrap_or(1000).max(1));
            tokio::select! {
                () = freed => {}
                () = tokio::time::sleep(expiry) => {}
            }
        }
    }

    fn settle(&self, tokens: &[LeaseToken]) {
        let mut leased = self.leased.lock().unwrap_or_else(|e| e.into_inner());
        for t in tokens {
            leased.remove(t);
        }
        drop(leased);
        self.freed.notify_one();
    }
}

/// Answers of publishes, acks and nacks in flight: one future per engine
/// call, with one answer frame per publish (or per ack or nack frame).
type Pending = FuturesUnordered<BoxFuture<'static, Vec<ServerFrame>>>;

/// A publish read and checked, waiting for the end of the wake-up to go to
/// the engine with the others.
struct Unsent {
    ref_: String,
    topic: String,
    message: NewMessage,
}

struct Connection {
    s: AppState,
    access: Access,
    out: Outbox,
    rx: Option<mpsc::Receiver<Utf8Bytes>>,
    /// Subscriptions and consumes by the client's id.
    subs: HashMap<String, AbortHandle>,
    credits: HashMap<String, Arc<Credit>>,
    tasks: JoinSet<()>,
    pending: Pending,
    /// Frames the futures in `pending` will answer with: what the
    /// `ws_publishes_in_flight` window counts.
    in_flight: usize,
    unsent: Vec<Unsent>,
    _admission: Admission,
}

impl Connection {
    fn new(s: AppState, access: Access, admission: Admission) -> Self {
        let settings = s.realtime.ws;
        let (tx, rx) = mpsc::channel(settings.send_queue);
        let out = Outbox {
            tx,
            closing: Arc::new(Closing {
                frame: Mutex::new(None),
                evicted: CancellationToken::new(),
            }),
            send_timeout: settings.send_timeout,
        };
        Self {
            s,
            access,
            out,
            rx: Some(rx),
            subs: HashMap::new(),
            credits: HashMap::new(),
            tasks: JoinSet::new(),
            pending: Pending::new(),
            in_flight: 0,
            unsent: Vec::new(),
            _admission: admission,
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (sink, mut stream) = socket.split();
        let rx = self.rx.take().expect("run once");
        let keepalive = self.s.realtime.keepalive_interval;
        let writer = tokio::spawn(write(sink, rx, self.out.closing.clone(), keepalive));
        let closing = self.out.closing.clone();
        let draining = self.s.draining.clone();
        let idle_limit = keepalive * 3;
        let mut idle = Instant::now() + idle_limit;
        let expiry = self.token_expiry();
        let max_pending = self.s.realtime.ws.publishes_in_flight;
        loop {
            tokio::select! {
                biased;
                () = draining.cancelled() => {
                    closing.set(close::GOING_AWAY, "server shutting down");
                    // The publishes in flight are answered first.
                    self.send_unsent();
                    while let Some(answers) = self.pending.next().await {
                        for answer in &answers {
                            self.out.send(answer).await;
                        }
                    }
                    break;
                }
                () = closing.evicted.cancelled() => break,
                () = tokio::time::sleep_until(idle) => {
                    closing.set(close::IDLE, "no frame for three keep-alive intervals");
                    break;
                }
                () = sleep_until_opt(expiry) => {
                    closing.set(close::TOKEN_EXPIRED, "token expired");
                    break;
                }
                Some(answers) = self.pending.next(), if !self.pending.is_empty() => {
                    self.in_flight -= answers.len();
                    for answer in &answers {
                        self.out.send(answer).await;
                    }
                }
                Some(ended) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    if let Ok((id, ())) = ended {
                        self.subs.retain(|_, h| h.id() != id);
                    }
                }
                frame = stream.next(), if self.in_flight < max_pending => {
                    idle = Instant::now() + idle_limit;
                    let mut open = self.on_frame(frame).await;
                    // The frames already here join this wake-up's batch.
                    let mut read = 1;
                    while open
                        && read < MAX_FRAMES_PER_WAKE
                        && self.in_flight + self.unsent.len() < max_pending
                    {
                        let Some(frame) = stream.next().now_or_never() else { break };
                        open = self.on_frame(frame).await;
                        read += 1;
                    }
                    self.send_unsent();
                    if !open {
                        break;
                    }
                }
            }
        }
        self.tasks.shutdown().await;
        drop(self.pending);
        // The writer sends what is queued, then the close frame.
        drop(self.out);
        let abort = writer.abort_handle();
        if tokio::time::timeout(CLOSE_GRACE * 2, writer).await.is_err() {
            abort.abort();
        }
    }

    /// Handles one frame read from the client; `false` when the connection
    /// is to end (closed by the client, or a read error).
    async fn on_frame(&mut self, frame: Option<Result<WsMessage, axum::Error>>) -> bool {
        match frame {
            Some(Ok(WsMessage::Text(text))) => self.handle(&text).await,
            Some(Ok(WsMessage::Binary(_))) => {
                self.out
                    .error(
                        None,
                        None,
                        ApiError::bad_request(
                            codes::MALFORMED_JSON,
                            "frames are JSON text, not binary",
                        ),
                    )
                    .await;
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            Some(Ok(WsMessage::Close(_))) | None => return false,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket read failed");
                return false;
            }
        }
        true
    }

    /// Sends the publishes read so far to the engine: one call per topic,
    /// in the order they were read, each answered publish by publish.
    fn send_unsent(&mut self) {
        let mut unsent = std::mem::take(&mut self.unsent);
        while !unsent.is_empty() {
            let topic = unsent[0].topic.clone();
            let (batch, rest): (Vec<_>, Vec<_>) =
                unsent.into_iter().partition(|u| u.topic == topic);
            unsent = rest;
            self.in_flight += batch.len();
            let s = self.s.clone();
            self.pending.push(
                async move {
                    let (refs, messages): (Vec<_>, Vec<_>) =
                        batch.into_iter().map(|u| (u.ref_, u.message)).unzip();
                    match s.engine.publish(&topic, messages).await {
                        Ok(receipts) if receipts.len() == refs.len() => refs
                            .into_iter()
                            .zip(receipts)
                            .map(|(ref_, r)| ServerFrame::Published {
                                ref_,
                                seq: r.seq,
                                id: r.id,
                            })
                            .collect(),
                        Ok(_) => {
                            let e = ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                codes::INTERNAL,
                                "the engine returned a receipt count unlike the batch's",
                            );
                            refs.into_iter()
                                .map(|r| error_frame(Some(r), e.clone()))
                                .collect()
                        }
                        Err(e) => {
                            let e = ApiError::from(e);
                            refs.into_iter()
                                .map(|r| error_frame(Some(r), e.clone()))
                                .collect()
                        }
                    }
                }
                .boxed(),
            );
        }
    }

    /// When the connection's token expires, if it has one.
    fn token_expiry(&self) -> Option<Instant> {
        let Access::Token(claims) = &self.access else {
            return None;
        };
        // `exp` is wall-clock time; converted once to a delay on the monotonic clock.
        let left = Duration::from_secs(claims.exp).saturating_sub(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        );
        Some(Instant::now() + left)
    }

    async fn handle(&mut self, text: &str) {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame,
            Err(e) => {
                // Name the ref of a well-formed frame that failed, so the
                // client can match the error to its request.
                let ref_ = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("ref")?.as_str().map(str::to_owned));
                let code = if e.is_syntax() || e.is_eof() {
                    codes::MALFORMED_JSON
                } else {
                    codes::INVALID_FIELD
                };
                return self
                    .out
                    .error(ref_, None, ApiError::bad_request(code, e.to_string()))
                    .await;
            }
        };
        if !matches!(frame, ClientFrame::Publish { .. }) {
            // Whatever the client sent before this frame reaches the engine first.
            self.send_unsent();
        }
        match frame {
            ClientFrame::Subscribe {
                id,
                topic,
                from,
                after,
                key,
                headers,
            } => {
                let filter = Filter {
                    key,
                    headers: headers.into_iter().collect(),
                };
                let result = self.subscribe(&id, &topic, from, after, filter).await;
                self.answer_subscribe(id, result).await;
            }
            ClientFrame::Consume {
                id,
                subscription,
                consumer,
                max_in_flight,
            } => {
                let result = self
                    .consume(&id, subscription, consumer, max_in_flight)
                    .await;
                self.answer_subscribe(id, result).await;
            }
            ClientFrame::Unsubscribe { id } => {
                if let Some(handle) = self.subs.remove(&id) {
                    handle.abort();
                    self.credits.remove(&id);
                    self.out.send(&ServerFrame::Unsubscribed { sub: id }).await;
                } else {
                    let e = ApiError::new(
                        StatusCode::NOT_FOUND,
                        codes::NOT_FOUND,
                        format!("no subscription '{id}' on this connection"),
                    );
                    self.out.error(None, Some(id), e).await;
                }
            }
            ClientFrame::Publish {
                ref_,
                topic,
                body,
                body_base64,
                id,
                key,
                headers,
            } => {
                let message = PublishMessage {
                    id,
                    key,
                    headers,
                    body,
                    body_base64,
                    delay_ms: None,
                    deliver_at: None,
                };
                match message_from_json(0, message, self.s.max_headers_per_message).and_then(|m| {
                    self.live()?
                        .check_publish(&topic, std::slice::from_ref(&m))
                        .map(|()| m)
                }) {
                    Ok(message) => self.unsent.push(Unsent {
                        ref_,
                        topic,
                        message,
                    }),
                    Err(e) => self.out.error(Some(ref_), None, e).await,
                }
            }
            ClientFrame::Ack {
                ref_,
                subscription,
                tokens,
            } => self.settle(ref_, subscription, tokens, None),
            ClientFrame::Nack {
                ref_,
                subscription,
                tokens,
                delay_ms,
                error,
            } => self.settle(ref_, subscription, tokens, Some((delay_ms, error))),
            ClientFrame::Ping { ref_ } => {
                self.out.send(&ServerFrame::Pong { ref_ }).await;
            }
        }
    }

    /// The connection's access, or `unauthenticated` once its token has expired.
    fn live(&self) -> Result<&Access, ApiError> {
        if let Access::Token(claims) = &self.access {
            if claims.exp <= now_ms() / 1000 {
                return Err(ApiError::unauthenticated("the token has expired"));
            }
        }
        Ok(&self.access)
    }

    async fn answer_subscribe(&mut self, id: String, result: Result<(), ApiError>) {
        match result {
            Ok(()) => {
                self.out.send(&ServerFrame::Subscribed { sub: id }).await;
            }
            Err(e) => self.out.error(None, Some(id), e).await,
        }
    }

    fn check_id(&self, id: &str) -> Result<(), ApiError> {
        if id.is_empty() || id.len() > 200 {
            return Err(ApiError::invalid_argument("id must be 1 to 200 characters"));
        }
        if self.subs.contains_key(id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                codes::INVALID_FIELD,
                format!("subscription id '{id}' is in use on this connection"),
            ));
        }
        Ok(())
    }

    async fn subscribe(
        &mut self,
        id: &str,
        topic: &str,
        from: Option<String>,
        after: Option<u64>,
        filter: Filter,
    ) -> Result<(), ApiError> {
        self.check_id(id)?;
        let invalid = |mut e: ApiError| {
            e.code = codes::INVALID_FIELD;
            e
        };
        let start = match (after, from) {
            (Some(seq), _) => StartPosition::Seq(seq.saturating_add(1)),
            (None, Some(from)) => parse_from(&from).map_err(invalid)?,
            (None, None) => StartPosition::New,
        };
        self.live()?.check_subscribe(topic, &filter)?;
        let label = filter.label();
        let feed = Feed::open(self.s.engine.as_ref(), topic, start, filter).await?;
        let listening = self.s.realtime.presence.join(topic, label);
        let out = self.out.clone();
        let sub = id.to_owned();
        let handle = self.tasks.spawn(async move {
            let _listening = listening;
            follow(out, sub, feed).await;
        });
        self.subs.insert(id.to_owned(), handle);
        Ok(())
    }

    async fn consume(
        &mut self,
        id: &str,
        subscription: String,
        consumer: Option<String>,
        max_in_flight: Option<u32>,
    ) -> Result<(), ApiError> {
        self.check_id(id)?;
        let max = match max_in_flight.unwrap_or(DEFAULT_CONSUME_IN_FLIGHT) {
            n @ 1..=1000 => n as usize,
            n => {
                return Err(ApiError::invalid_argument(format!(
                    "max_in_flight = {n} is outside 1 to 1000"
                )))
            }
        };
        let consumer = consumer.unwrap_or_else(|| "ws".to_owned());
        if consumer.is_empty() || consumer.len() > 200 {
            return Err(ApiError::invalid_argument(
                "consumer must be 1 to 200 characters",
            ));
        }
        check_consume(&self.s, self.live()?, &subscription).await?;
        let credit = Arc::new(Credit {
            subscription,
            max,
            leased: Mutex::default(),
            freed: Notify::new(),
        });
        self.credits.insert(id.to_owned(), credit.clone());
        let (out, s, sub) = (self.out.clone(), self.s.clone(), id.to_owned());
        let handle = self.tasks.spawn(async move {
            lease(out, s, sub, consumer, credit).await;
        });
        self.subs.insert(id.to_owned(), handle);
        Ok(())
    }

    fn settle(
        &mut self,
        ref_: Option<String>,
        subscription: String,
        tokens: Vec<LeaseToken>,
        nack: Option<(Option<u64>, Option<String>)>,
    ) {
        for credit in self.credits.values() {
            if credit.subscription == subscription {
                credit.settle(&tokens);
            }
        }
        let s = self.s.clone();
        let access = self.access.clone();
        let allowed = self.live().map(|_| ());
        self.in_flight += 1;
        self.pending.push(
            async move {
                let answer = async {
                    allowed?;
                    crate::api::check_tokens(&tokens)?;
                    check_consume(&s, &access, &subscription).await?;
                    Ok::<_, ApiError>(match nack {
                        None => {
                            let outcomes = s.engine.ack(&subscription, &tokens).await?;
                            ServerFrame::Acked {
                                ref_: ref_.clone(),
                                results: ServerFrame::results(tokens, outcomes),
                            }
                        }
                        Some((delay_ms, error)) => {
                            let delay = delay_ms
                                .map(|ms| {
                                    crate::bounds::duration_ms("delay_ms", ms)
                                        .map(Duration::from_millis)
                                })
                                .transpose()
                                .map_err(ApiError::invalid_argument)?;
                            let outcomes =
                                s.engine.nack(&subscription, &tokens, delay, error).await?;
                            ServerFrame::Nacked {
                                ref_: ref_.clone(),
                                results: ServerFrame::results(tokens, outcomes),
                            }
                        }
                    })
                };
                vec![answer.await.unwrap_or_else(|e| error_frame(ref_, e))]
            }
            .boxed(),
        );
    }
}

/// Consuming and settling need the right to follow the subscription's topic.
async fn check_consume(s: &AppState, access: &Access, subscription: &str) -> Result<(), ApiError> {
    if matches!(access, Access::Open) {
        return Ok(());
    }
    let info = s.engine.subscription(subscription).await?;
    access.check_subscribe(&info.config.topic, &Filter::default())
}

fn error_frame(ref_: Option<String>, e: ApiError) -> ServerFrame {
    ServerFrame::Error {
        ref_,
        sub: None,
        code: e.code.to_owned(),
        message: e.detail,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One subscription: its feed's events as frames, until it ends.
async fn follow(out: Outbox, sub: String, mut feed: Feed) {
    let sent = metrics::counter!("courier_realtime_events_sent_total", "transport" => "ws");
    loop {
        let frame = match feed.next().await {
            Some(Ok(FeedEvent::Message(m))) => ServerFrame::Message {
                sub: sub.clone(),
                seq: m.seq,
                message: m.into(),
            },
            Some(Ok(FeedEvent::Reset(reset))) => ServerFrame::Reset {
                sub: sub.clone(),
                reset,
            },
            Some(Ok(FeedEvent::Skipped { .. })) => continue,
            Some(Err(courier_core::Error::ShuttingDown)) | None => return,
            Some(Err(e)) => {
                out.send(&ServerFrame::Error {
                    ref_: None,
                    sub: Some(sub),
                    code: e.code().to_owned(),
                    message: e.to_string(),
                })
                .await;
                return;
            }
        };
        if !out.send(&frame).await {
            return;
        }
        sent.increment(1);
    }
}

/// One consume: leases as many deliveries as its credit allows, in a loop.
async fn lease(out: Outbox, s: AppState, sub: String, consumer: String, credit: Arc<Credit>) {
    loop {
        let room = credit.room().await;
        let request = PullRequest {
            consumer: consumer.clone(),
            max_messages: room.min(CONSUME_BATCH),
            wait: s.max_pull_wait,
        };
        // Cancel-safe: a pull dropped (unsubscribe, shutdown) leased nothing.
        let deliveries = match s.engine.pull(&credit.subscription, request).await {
            Ok(d) => d,
            Err(courier_core::Error::ShuttingDown) => return,
            Err(e) => {
                out.send(&ServerFrame::Error {
                    ref_: None,
                    sub: Some(sub),
                    code: e.code().to_owned(),
                    message: e.to_string(),
                })
                .await;
                return;
            }
        };
        {
            let mut leased = credit.leased.lock().unwrap_or_else(|e| e.into_inner());
            for d in &deliveries {
                leased.insert(d.token.clone(), d.lease_deadline);
            }
        }
        for d in deliveries {
            let frame = ServerFrame::Delivery {
                sub: sub.clone(),
                message: d.message.into(),
                attempt: d.attempt,
                lease_deadline: d.lease_deadline,
                token: d.token,
            };
            // Undelivered leases expire and are redelivered.
            if !out.send(&frame).await {
                return;
            }
        }
    }
}

/// Writes queued frames, pings when idle, and ends with the close frame.
async fn write(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut rx: mpsc::Receiver<Utf8Bytes>,
    closing: Arc<Closing>,
    keepalive: Duration,
) {
    let ping = tokio::time::sleep(keepalive);
    tokio::pin!(ping);
    loop {
        let message = tokio::select! {
            biased;
            () = closing.evicted.cancelled() => break,
            frame = rx.recv() => match frame {
                Some(text) => WsMessage::Text(text),
                None => break,
            },
            () = &mut ping => WsMessage::Ping(Bytes::new()),
        };
        ping.as_mut().reset(Instant::now() + keepalive);
        let sent = async {
            sink.feed(message).await?;
            // The frames already queued go out in the same write.
            for _ in 1..FRAMES_PER_WRITE {
                let Ok(text) = rx.try_recv() else { break };
                sink.feed(WsMessage::Text(text)).await?;
            }
            sink.flush().await
        };
        tokio::select! {
            sent = sent => if sent.is_err() { return },
            // A client too slow to take a frame: stop waiting for it.
            () = closing.evicted.cancelled() => break,
        }
    }
    // An evicted client's queued frames are dropped now, not after the close.
    drop(rx);
    let (code, reason) = closing
        .frame
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or((1000, ""));
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(WsMessage::Close(Some(frame)))).await;
}
