//! A hand-written HTTP/1.1 path for the hottest request, a single-message
//! publish (`POST /v1/topics/{name}/messages`), in front of hyper and axum.
//!
//! Why by hand: with 64 connections each publishing one message per request,
//! hyper's connection dispatcher plus axum's routing, extractors and response
//! building cost as much CPU per request as Redis spends on a whole durable
//! `XADD`, and on 2 cores that decided the throughput (docs/benchmarks.md:
//! about 60k against 78k requests/s with this path on the same machine). No
//! crate serves one route of an axum application on a lighter path, so this
//! module does, with `httparse` (the parser hyper itself uses) for the head.
//!
//! Every connection starts here. Requests that are plain HTTP/1.1 publishes
//! with a `Content-Length` body are served here, one after another. The first
//! request that is anything else (another route, a query string, a chunked
//! body, `Expect`, `Upgrade`, `Connection`, HTTP/1.0, the h2c preface, a head
//! this parser refuses or finds too long) hands the connection, with the bytes
//! already read, to hyper and axum for the rest of its life, so every other
//! behaviour stays theirs. What this path serves behaves as through axum: the
//! same codec and engine call ([`api::publish_one`]), the same edge rules
//! (request id, rate limit, body limit, request timeout, logs), the same
//! problem documents, and the same idle cut-off (`header_read_timeout`).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use courier_core::PublishReceipt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use crate::api::{self, AppState};
use crate::edge::{self, EdgeLayer, REQUEST_ID};
use crate::error::ApiError;

/// Heads with more header lines than this go to hyper (which allows 100).
const MAX_HEADERS: usize = 32;
/// Heads longer than this go to hyper, which has its own limits and answers.
const MAX_HEAD: usize = 16 * 1024;
const READ_BUFFER: usize = 8 * 1024;
const PREFIX: &str = "/v1/topics/";
const SUFFIX: &str = "/messages";

/// What every connection's fast path shares.
pub(crate) struct FastPublish {
    state: AppState,
    edge: EdgeLayer,
    header_read_timeout: Duration,
}

/// How a connection left the fast path.
pub(crate) enum Served {
    /// It is closed (by the client, a timeout, an error or shutdown).
    Closed,
    /// A request this path does not serve arrived: hyper takes the connection,
    /// starting with these bytes already read from it.
    Handoff(TcpStream, Bytes),
}

/// A publish request head, owned, so the read buffer can move on.
struct Head {
    len: usize,
    topic: String,
    content_length: usize,
    request_id: Option<HeaderValue>,
    /// The headers about the message, names in lower case, in request order.
    message_headers: Vec<(String, Vec<u8>)>,
}

enum Parsed {
    Publish(Head),
    /// More bytes are needed.
    Partial,
    /// Something for hyper.
    Other,
}

impl FastPublish {
    pub(crate) fn new(state: AppState, edge: EdgeLayer, header_read_timeout: Duration) -> Self {
        Self {
            state,
            edge,
            header_read_timeout,
        }
    }

    /// Serves publishes on `stream` until it closes or needs hyper.
    pub(crate) async fn serve(&self, mut stream: TcpStream, peer: SocketAddr) -> Served {
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        let mut out = Vec::with_capacity(512);
        loop {
            let head = match self.read_head(&mut stream, &mut buf).await {
                Ok(Some(head)) => head,
                Ok(None) => return Served::Handoff(stream, buf.freeze()),
                Err(()) => return Served::Closed,
            };
            let started = std::time::Instant::now();
            let id = head
                .request_id
                .clone()
                .unwrap_or_else(|| self.edge.next_request_id());
            let Ok((result, mut close)) = self.handle(&mut stream, &mut buf, &head, peer).await
            else {
                return Served::Closed;
            };
            close |= self.state.draining.is_cancelled();
            out.clear();
            let status = match result {
                Ok(receipt) => {
                    write_receipt(&mut out, &receipt, &id, close);
                    StatusCode::CREATED
                }
                Err(e) => write_response(&mut out, e.into_response(), &id, close).await,
            };
            if status.is_server_error() || tracing::enabled!(tracing::Level::DEBUG) {
                let path = format!("{PREFIX}{}{SUFFIX}", head.topic);
                let id = id.to_str().unwrap_or("");
                edge::log_answer(id, "POST", &path, status, started);
            }
            if stream.write_all(&out).await.is_err() || close {
                return Served::Closed;
            }
        }
    }

    /// Reads the next request head. `Ok(None)`: not one for this path.
    /// `Err`: the connection is to be closed (closed by the peer, idle or
    /// slow past `header_read_timeout`, or shutdown while idle).
    async fn read_head(
        &self,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
    ) -> Result<Option<Head>, ()> {
        let deadline = Instant::now() + self.header_read_timeout;
        loop {
            if !buf.is_empty() {
                match parse(buf) {
                    Parsed::Publish(head) => return Ok(Some(head)),
                    Parsed::Partial if buf.len() < MAX_HEAD => {}
                    Parsed::Partial | Parsed::Other => return Ok(None),
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_BUFFER);
            }
            let idle = buf.is_empty();
            tokio::select! {
                read = stream.read_buf(buf) => match read {
                    Ok(0) | Err(_) => return Err(()),
                    Ok(_) => {}
                },
                () = sleep_until(deadline) => return Err(()),
                // In-progress requests finish; idle connections close.
                () = self.state.draining.cancelled(), if idle => return Err(()),
            }
        }
    }

    /// Runs one publish whose head was read; the flag says whether the
    /// connection must close after the answer (its body was not read).
    /// `Err`: the client closed the connection before sending the body.
    async fn handle(
        &self,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        head: &Head,
        peer: SocketAddr,
    ) -> Result<(Result<PublishReceipt, ApiError>, bool), ()> {
        buf.advance(head.len);
        let length = head.content_length;
        let config = self.edge.config();
        let refused =
            if let Some(Err(wait)) = config.rate_limit.as_ref().map(|l| l.check(peer.ip())) {
                Some(ApiError::rate_limited(wait))
            } else if length > config.body_limit {
                Some(edge::body_too_large(config.body_limit))
            } else {
                courier_core::error::validate_name(&head.topic)
                    .err()
                    .map(ApiError::from)
            };
        if let Some(error) = refused {
            // Skip a body that is already here; otherwise the connection is
            // cut rather than read on.
            let skip = buf.len() >= length;
            if skip {
                buf.advance(length);
            }
            return Ok((Err(error), !skip));
        }
        let deadline = Instant::now() + config.request_timeout;
        let timed_out = || edge::timed_out(config.request_timeout);
        while buf.len() < length {
            buf.reserve(length - buf.len());
            tokio::select! {
                read = stream.read_buf(buf) => match read {
                    Ok(0) | Err(_) => return Err(()),
                    Ok(_) => {}
                },
                () = sleep_until(deadline) => return Ok((Err(timed_out()), true)),
            }
        }
        let body = api::detach(buf.split_to(length).freeze());
        let headers = head
            .message_headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()));
        let message =
            match api::message_from_headers(headers, body, self.state.max_headers_per_message) {
                Ok(m) => m,
                Err(e) => return Ok((Err(e), false)),
            };
        let published = tokio::select! {
            published = api::publish_one(&self.state, &head.topic, message) => published,
            () = sleep_until(deadline) => Err(timed_out()),
        };
        Ok((published, false))
    }
}

/// Parses the head at the start of `buf`, deciding whether this path serves it.
fn parse(buf: &[u8]) -> Parsed {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut lines);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if request.method != Some("POST") || request.version != Some(1) {
        return Parsed::Other;
    }
    let topic = request
        .path
        .and_then(|p| p.strip_prefix(PREFIX))
        .and_then(|p| p.strip_suffix(SUFFIX))
        .filter(|t| !t.is_empty() && !t.contains(['/', '?', '%', '#']));
    let Some(topic) = topic else {
        return Parsed::Other;
    };
    let mut content_length = None;
    let mut request_id = None;
    let mut message_headers = Vec::new();
    for line in request.headers.iter() {
        let name = line.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(line.value).ok();
            match value.and_then(|v| v.parse::<usize>().ok()) {
                Some(n) if content_length.is_none() => content_length = Some(n),
                _ => return Parsed::Other,
            }
        } else if ["transfer-encoding", "expect", "upgrade", "connection"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case(REQUEST_ID.as_str()) {
            match HeaderValue::from_bytes(line.value) {
                Ok(id) if request_id.is_none() => request_id = Some(id),
                _ => return Parsed::Other,
            }
        } else if may_be_message_header(name) {
            let name = name.to_ascii_lowercase();
            if api::is_message_header(&name) {
                message_headers.push((name, line.value.to_vec()));
            }
        }
    }
    let Some(content_length) = content_length else {
        return Parsed::Other;
    };
    Parsed::Publish(Head {
        len,
        topic: topic.to_owned(),
        content_length,
        request_id,
        message_headers,
    })
}

/// A cheap test before lower-casing a name for [`api::is_message_header`].
fn may_be_message_header(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 3 && (b[0] | 0x20 == b'c') && matches!(b[1] | 0x20, b'o' | b'e')
}

fn write_receipt(out: &mut Vec<u8>, receipt: &PublishReceipt, id: &HeaderValue, close: bool) {
    let json = serde_json::to_vec(receipt).expect("a receipt serializes");
    out.extend_from_slice(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n");
    end_head(out, id, json.len(), close);
    out.extend_from_slice(&json);
}

/// Writes any response (here: problem documents) and returns its status.
async fn write_response(
    out: &mut Vec<u8>,
    response: Response,
    id: &HeaderValue,
    close: bool,
) -> StatusCode {
    let (parts, body) = response.into_parts();
    // Problem documents are small, complete bodies.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == axum::http::header::CONTENT_LENGTH || name == REQUEST_ID {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    end_head(out, id, body.len(), close);
    out.extend_from_slice(&body);
    parts.status
}

/// The headers every answer ends with, and the blank line.
fn end_head(out: &mut Vec<u8>, id: &HeaderValue, length: usize, close: bool) {
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\ndate: ");
    http_date(out);
    out.extend_from_slice(b"\r\n\r\n");
}

/// The `Date` header's value, formatted once per second per thread (as hyper does).
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// A connection handed to hyper: the bytes the fast path already read come
/// first, then the socket. (hyper-util's own `Rewind` is private.)
pub(crate) struct Rewind {
    read: Bytes,
    stream: TcpStream,
}

impl Rewind {
    pub(crate) fn new(read: Bytes, stream: TcpStream) -> Self {
        Self { read, stream }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(out.remaining());
            out.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Parsed {
        parse(raw.as_bytes())
    }

    #[test]
    fn takes_plain_publishes_and_leaves_the_rest() {
        let Parsed::Publish(h) = head(
            "POST /v1/topics/orders/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nCourier-Key: k\r\nCE-Id: 7\r\ncontent-type: text/plain\r\nX-Request-Id: abc\r\n\r\nabc",
        ) else {
            panic!("a plain publish is served here");
        };
        assert_eq!(h.topic, "orders");
        assert_eq!(h.content_length, 3);
        assert_eq!(h.request_id.unwrap(), "abc");
        let names: Vec<_> = h.message_headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["courier-key", "ce-id", "content-type"]);
        assert!(matches!(
            head("POST /v1/topics/orders/messages HTTP/1.1\r\nContent-Le"),
            Parsed::Partial
        ));
        for other in [
            "GET /v1/topics/orders/messages HTTP/1.1\r\n\r\n",
            "POST /v1/topics/orders/messages HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            "POST /v1/topics/orders/messages/batch HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "POST /v1/topics/a/b/messages HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "POST /v1/topics/or%20ders/messages HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "POST /v1/topics/orders/messages?x=1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "POST /v1/topics//messages HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "POST /v1/topics/orders/messages HTTP/1.1\r\n\r\n",
            "POST /v1/topics/orders/messages HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST /v1/topics/orders/messages HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "POST /v1/topics/orders/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/topics/orders/messages HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
            "POST /v1/topics/orders/messages HTTP/1.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST /v1/topics/orders/messages HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert!(matches!(head(other), Parsed::Other), "{other}");
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let too_many =
            format!("POST /v1/topics/t/messages HTTP/1.1\r\nContent-Length: 0\r\n{many}\r\n");
        assert!(matches!(head(&too_many), Parsed::Other));
    }
}
