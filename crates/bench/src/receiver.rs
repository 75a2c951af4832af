//! Push receivers: in-process HTTP/1.1 services (hyper, keep-alive) that
//! Courier pushes to, answering at once and counting what arrives in a
//! [`Tally`].
//!
//! - `POST /push` ([`SINGLE_PATH`]): one message per request, the body as
//!   published; answered 204.
//! - `POST /batch` ([`BATCH_PATH`]): a JSON batch; its entries are counted by
//!   their `"seq":` keys (message bodies are JSON strings, in which a quote
//!   is escaped, so a body cannot fake one), without parsing the JSON;
//!   answered 200 with an empty body, which acks every entry.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::tally::Tally;

/// The path single pushes go to.
pub const SINGLE_PATH: &str = "/push";
/// The path batch pushes go to.
pub const BATCH_PATH: &str = "/batch";

/// One receiver (one service instance) on 127.0.0.1. Dropping it closes its
/// listener and every connection.
pub struct Receiver {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Listens on 127.0.0.1:0 and serves until dropped, counting into `tally`.
    pub async fn start(tally: Arc<Tally>) -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind a receiver on 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so they end with the receiver.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let tally = tally.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(request, tally.clone()));
                    // A connection Courier closes, or breaks, just ends.
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Receiver { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The instance URL to register with Courier.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    request: Request<Incoming>,
    tally: Arc<Tally>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let batch = request.uri().path() == BATCH_PATH;
    let answer = |status| {
        let mut response = Response::new(Empty::new());
        *response.status_mut() = status;
        Ok(response)
    };
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return answer(StatusCode::BAD_REQUEST),
    };
    if batch {
        tally.many(count_entries(&body));
        answer(StatusCode::OK)
    } else {
        tally.one(&body);
        answer(StatusCode::NO_CONTENT)
    }
}

/// The entries of a JSON batch push, counted by their `"seq":` keys.
pub fn count_entries(batch: &[u8]) -> u64 {
    memchr::memmem::find_iter(batch, b"\"seq\":").count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_batch_entries() {
        let batch = br#"{"subscription":"s","topic":"t","messages":[{"seq":1,"id":"a","body":"x\"seq\":"},{"seq":2,"id":"b","body":"y"}]}"#;
        assert_eq!(count_entries(batch), 2);
        assert_eq!(count_entries(b"{}"), 0);
    }
}
