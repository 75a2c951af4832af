//! A minimal HTTP/1.1 keep-alive client for Courier's API: one connection per
//! worker, one request outstanding on it, no pool, no retries. Like the RESP
//! client in [`crate::resp`], it writes the request bytes as they are and
//! reads exactly one answer back (parsed by `httparse`), so both systems are
//! driven at the same client cost. A general client (hyper's, with its
//! connection task and channels) cost about twice the CPU per request, which
//! on a 2-core machine is taken from the server under test.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ::http::{Method, StatusCode};
use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// At most this many response headers are parsed; Courier sends about five.
const MAX_HEADERS: usize = 32;

/// One keep-alive connection to a Courier server.
pub struct Conn {
    stream: TcpStream,
    host: String,
    /// The request being written.
    out: Vec<u8>,
    /// What has been read and not yet consumed.
    input: BytesMut,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            host: addr.to_string(),
            out: Vec::with_capacity(1024),
            input: BytesMut::with_capacity(64 << 10),
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        self.out.clear();
        write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        )?;
        self.out.extend_from_slice(&body);
        self.stream.write_all(&self.out).await?;
        let (status, head_len, body_len) = loop {
            if let Some(head) = parse_head(&self.input)? {
                break head;
            }
            self.fill().await?;
        };
        while self.input.len() < head_len + body_len {
            self.input.reserve(head_len + body_len - self.input.len());
            self.fill().await?;
        }
        let mut answer = self.input.split_to(head_len + body_len);
        Ok((status, answer.split_off(head_len).freeze()))
    }

    async fn fill(&mut self) -> Result<()> {
        if self.input.capacity() - self.input.len() < 4096 {
            self.input.reserve(64 << 10);
        }
        if self.stream.read_buf(&mut self.input).await? == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }

    /// Sends a JSON request and fails unless the status is `expect`.
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
        expect: &[StatusCode],
    ) -> Result<Bytes> {
        let (status, answer) = self
            .send(method.clone(), path, "application/json", body)
            .await?;
        if !expect.contains(&status) {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(answer)
    }
}

/// The status, head length and body length of a complete response head at
/// the start of `input`, or `None` while the head is incomplete.
fn parse_head(input: &[u8]) -> Result<Option<(StatusCode, usize, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(input).context("malformed response")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(response.code.unwrap_or(0))?;
    let mut body_len = None;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = Some(std::str::from_utf8(h.value)?.trim().parse::<usize>()?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked responses are not supported by this client");
        }
    }
    // Courier sends a length with every answer; 204 and 304 have no body.
    let body_len = match (body_len, status.as_u16()) {
        (Some(n), _) => n,
        (None, 204 | 304) => 0,
        (None, code) => bail!("a {code} response without content-length"),
    };
    Ok(Some((status, head_len, body_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let r = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            parse_head(r).unwrap(),
            Some((StatusCode::CREATED, r.len() - 2, 2))
        );
        assert_eq!(parse_head(&r[..20]).unwrap(), None);
        let empty = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse_head(empty).unwrap(),
            Some((StatusCode::NO_CONTENT, empty.len(), 0))
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }
}

/// The JSON body of a batch publish of `n` copies of `body` (which must be
/// printable ASCII without quotes or backslashes, as [`crate::body`] makes).
pub fn batch_body(body: &[u8], n: usize) -> Bytes {
    let text = std::str::from_utf8(body).expect("an ASCII body");
    let one = serde_json::json!({ "body": text });
    let messages: Vec<_> = (0..n).map(|_| one.clone()).collect();
    serde_json::to_vec(&serde_json::json!({ "messages": messages }))
        .expect("JSON encodes")
        .into()
}

/// The part of a pull answer a consumer needs to ack. Bodies are borrowed from
/// the answer, as a consumer that cares about its CPU would parse them: the
/// generator's CPU comes out of the server under test.
#[derive(Deserialize)]
pub struct Pulled<'a> {
    #[serde(borrow)]
    pub messages: Vec<PulledMessage<'a>>,
}

#[derive(Deserialize)]
pub struct PulledMessage<'a> {
    pub seq: u64,
    /// The lease token that acks this delivery; the engine's tokens need no
    /// JSON escaping, so it borrows from the answer too.
    #[serde(borrow)]
    pub token: &'a str,
    #[serde(borrow)]
    pub body: Option<&'a str>,
}

/// The body of an ack of `tokens`.
pub fn ack_body(tokens: &[&str]) -> Bytes {
    #[derive(serde::Serialize)]
    struct Ack<'a> {
        tokens: &'a [&'a str],
    }
    serde_json::to_vec(&Ack { tokens })
        .expect("JSON encodes")
        .into()
}

/// How many results of an ack answer are `ok`, and how many results there are.
pub fn acked(answer: &[u8]) -> Result<(usize, usize), serde_json::Error> {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        results: Vec<Result<'a>>,
    }
    #[derive(Deserialize)]
    struct Result<'a> {
        #[serde(borrow)]
        outcome: &'a str,
    }
    let answer: Answer = serde_json::from_slice(answer)?;
    let ok = answer.results.iter().filter(|r| r.outcome == "ok").count();
    Ok((ok, answer.results.len()))
}

/// Fills `topic` with `count` copies of `body` in batch publishes of 1000,
/// over 4 connections; returns how long it took.
pub async fn prefill(addr: SocketAddr, topic: &str, count: u64, body: &[u8]) -> Result<Duration> {
    const PER_REQUEST: u64 = 1000;
    const WORKERS: u64 = 4;
    let started = Instant::now();
    let path = format!("/v1/topics/{topic}/messages/batch");
    let full = batch_body(body, PER_REQUEST as usize);
    let requests = count.div_ceil(PER_REQUEST);
    let mut tasks = Vec::new();
    for i in 0..WORKERS {
        let (path, full, body) = (path.clone(), full.clone(), Bytes::copy_from_slice(body));
        let mut conn = Conn::connect(addr).await?;
        tasks.push(tokio::spawn(async move {
            for r in (i..requests).step_by(WORKERS as usize) {
                let n = PER_REQUEST.min(count - r * PER_REQUEST) as usize;
                let batch = if n == PER_REQUEST as usize {
                    full.clone()
                } else {
                    batch_body(&body, n)
                };
                conn.json(Method::POST, &path, batch, &[StatusCode::CREATED])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}
