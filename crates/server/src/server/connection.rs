//! One client connection: hyper reads every request off it and hands it to
//! the application; at shutdown it is closed as soon as it has no request
//! in flight.
//!
//! hyper's own graceful shutdown closes idle keep-alive connections, but a
//! connection that sent part of a request head is "busy" to it until the head
//! completes or `header_read_timeout` passes. Here a connection counts its
//! requests from the moment hyper hands one over until the answer's body is
//! done, and a connection with none (and no answer stuck on a full socket)
//! is dropped at once when shutdown begins.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub(super) struct Connection {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub app: Router,
    /// Cancelled when shutdown begins.
    pub draining: CancellationToken,
}

/// How connections are served: HTTP/1.1 (with upgrades, for WebSockets)
/// and h2c, told apart by their first bytes.
#[derive(Clone)]
pub(super) struct Protocols {
    /// Serves a connection whose first bytes are not yet conclusive.
    pub auto: auto::Builder<TokioExecutor>,
    /// Serves a connection that is clearly HTTP/1.
    pub http1: http1::Builder,
    /// How long the first bytes may take (`server.header_read_timeout`).
    pub header_read_timeout: Duration,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the bytes a client sent first say about its protocol.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    /// Not the HTTP/2 preface: HTTP/1.
    Http1,
    /// The preface, or a part of it too short to tell, or nothing yet.
    Undecided,
}

fn sniff(first: &[u8]) -> Sniffed {
    let n = first.len().min(H2_PREFACE.len());
    if n > 0 && first[..n] != H2_PREFACE[..n] {
        Sniffed::Http1
    } else {
        Sniffed::Undecided
    }
}

impl Connection {
    /// Serves requests until the client closes the connection, an error, or
    /// shutdown (after the requests in flight are answered).
    ///
    /// An HTTP/1 connection goes straight to hyper's HTTP/1 server. The
    /// auto-detecting one reads the first 24 bytes itself and hands them
    /// back to HTTP/1 separately, which made hyper's read buffer grow from
    /// 8 to 16 KiB on every connection: 8 KiB more for each open event
    /// stream. The first bytes are only peeked at here, so nothing is split.
    pub(super) async fn serve(self, protocols: &Protocols) {
        let Connection {
            stream,
            peer,
            app,
            draining,
        } = self;
        let mut first = [0u8; 24];
        let sniffed = tokio::select! {
            peeked = stream.peek(&mut first) => match peeked {
                Ok(n) => sniff(&first[..n]),
                Err(_) => Sniffed::Undecided,
            },
            // Silent clients are auto-detection's to time out, as before.
            () = tokio::time::sleep(protocols.header_read_timeout) => Sniffed::Undecided,
            () = draining.cancelled() => return,
        };
        let activity = Arc::new(Activity::default());
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let started = InFlight::start(activity.clone());
                let mut request = request.map(Body::new);
                // The peer address, for the rate limiter and anything else that asks.
                request.extensions_mut().insert(ConnectInfo(peer));
                let answer = app.clone().oneshot(request);
                async move {
                    let response = answer.await?;
                    Ok::<_, Infallible>(response.map(|body| Counted {
                        body,
                        _in_flight: started,
                    }))
                }
            })
        };
        let io = TokioIo::new(Watched {
            stream,
            activity: activity.clone(),
        });
        // With upgrades: a WebSocket leaves this loop once switched.
        let result = match sniffed {
            Sniffed::Http1 => {
                let connection = protocols
                    .http1
                    .serve_connection(io, service)
                    .with_upgrades();
                tokio::pin!(connection);
                drive(connection, |c| c.graceful_shutdown(), &draining, &activity)
                    .await
                    .map_err(|e| e.to_string())
            }
            Sniffed::Undecided => {
                let connection = protocols.auto.serve_connection_with_upgrades(io, service);
                tokio::pin!(connection);
                drive(connection, |c| c.graceful_shutdown(), &draining, &activity)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Runs `connection` to its end; once shutdown begins, stops it taking new
/// requests (`graceful`) and drops it as soon as it has nothing in flight.
async fn drive<F, E>(
    mut connection: Pin<&mut F>,
    graceful: impl FnOnce(Pin<&mut F>),
    draining: &CancellationToken,
    activity: &Activity,
) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    tokio::select! {
        result = connection.as_mut() => result,
        () = draining.cancelled() => {
            // No new requests; those in flight finish.
            graceful(connection.as_mut());
            loop {
                let changed = activity.changed.notified();
                tokio::select! {
                    biased;
                    result = connection.as_mut() => break result,
                    // Dropping the connection closes it.
                    () = std::future::ready(()), if activity.settled() => break Ok(()),
                    () = changed => {}
                }
            }
        }
    }
}

/// What a connection is busy with, as seen from outside hyper.
#[derive(Default)]
struct Activity {
    /// Requests handed to the application whose answer body is not done.
    in_flight: AtomicUsize,
    /// The socket refused the last write: an answer is still on its way out.
    write_blocked: AtomicBool,
    /// Woken when either of the above goes back to rest.
    changed: Notify,
}

impl Activity {
    /// Nothing in flight and nothing left to write: closing loses nothing.
    fn settled(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.write_blocked.load(Ordering::Acquire)
    }

    fn note_write<T>(&self, poll: &Poll<T>) {
        let blocked = poll.is_pending();
        if self.write_blocked.swap(blocked, Ordering::AcqRel) && !blocked {
            self.changed.notify_one();
        }
    }
}

/// One request in flight, from hyper handing it over until its answer's body is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_one();
        }
    }
}

/// An answer body that keeps its request counted in flight until hyper drops it.
struct Counted {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting whether writes are blocked.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, data);
        self.activity.note_write(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, data);
        self.activity.note_write(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.activity.note_write(&poll);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_http1_from_its_first_bytes() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Http1);
        assert_eq!(sniff(b"POST /v1/topics/t/messages"), Sniffed::Http1);
        assert_eq!(sniff(b"PO"), Sniffed::Http1);
        assert_eq!(sniff(H2_PREFACE), Sniffed::Undecided);
        assert_eq!(sniff(&H2_PREFACE[..5]), Sniffed::Undecided);
        assert_eq!(sniff(b"P"), Sniffed::Undecided);
        assert_eq!(sniff(b""), Sniffed::Undecided);
    }
}
