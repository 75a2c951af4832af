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
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
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

impl Connection {
    /// Serves requests until the client closes the connection, an error, or
    /// shutdown (after the requests in flight are answered).
    pub(super) async fn serve(self, builder: &auto::Builder<TokioExecutor>) {
        let Connection {
            stream,
            peer,
            app,
            draining,
        } = self;
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
        let connection = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = draining.cancelled() => {
                // No new requests; those in flight finish.
                connection.as_mut().graceful_shutdown();
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
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
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
