//! A minimal HTTP/1.1 keep-alive client for Courier's API: one connection per
//! worker, one request outstanding on it, no pool, no retries. Bodies are
//! prepared once and shared (`Bytes`), so a request costs the client little
//! more than hyper's framing.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// One keep-alive connection to a Courier server.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes the connection.
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            host: addr.to_string(),
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
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(body))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
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

/// The part of a pull answer a consumer needs to ack.
#[derive(Deserialize)]
pub struct Pulled {
    pub messages: Vec<PulledMessage>,
}

#[derive(Deserialize)]
pub struct PulledMessage {
    pub seq: u64,
    pub body: Option<String>,
}
