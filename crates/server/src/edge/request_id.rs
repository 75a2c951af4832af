//! Request ids: ULIDs, so ids are unique across restarts and across nodes
//! without coordination (48 bits of milliseconds, 80 random bits), and sort
//! by the time the request arrived.

use std::task::{Context, Poll};

use axum::http::{HeaderValue, Request};
use tower::{Layer, Service};
use tower_http::request_id::{MakeRequestId, RequestId};

use super::REQUEST_ID;

/// Longest request id kept from a client.
pub(crate) const MAX_LEN: usize = 128;

/// Makes a new ULID for each request that brings no (sane) id.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ulids;

impl MakeRequestId for Ulids {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = ulid::Ulid::generate().to_string();
        Some(RequestId::new(HeaderValue::from_str(&id).ok()?))
    }
}

/// Whether a client's request id is kept: 1 to [`MAX_LEN`] visible ASCII
/// characters (no spaces, no control characters), one header line only. Ids
/// go into logs and answers, so anything else is replaced.
pub(crate) fn is_sane(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    (1..=MAX_LEN).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// Drops an incoming `x-request-id` that is not [sane](is_sane), or sent
/// more than once, so the next layer assigns a fresh one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SaneRequestIdLayer;

impl<S> Layer<S> for SaneRequestIdLayer {
    type Service = SaneRequestId<S>;
    fn layer(&self, inner: S) -> SaneRequestId<S> {
        SaneRequestId { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SaneRequestId<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for SaneRequestId<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        let headers = request.headers_mut();
        let mut ids = headers.get_all(&REQUEST_ID).iter();
        let keep = match (ids.next(), ids.next()) {
            (Some(id), None) => is_sane(id),
            _ => true,
        };
        if !keep {
            headers.remove(&REQUEST_ID);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ulids_and_differ() {
        let request = Request::new(());
        let a = Ulids.make_request_id(&request).unwrap();
        let b = Ulids.make_request_id(&request).unwrap();
        let (a, b) = (
            a.header_value().to_str().unwrap(),
            b.header_value().to_str().unwrap(),
        );
        assert_ne!(a, b);
        assert!(ulid::Ulid::from_string(a).is_ok(), "{a}");
    }

    #[test]
    fn sane_ids() {
        for ok in ["trace-42", "0123456789abcdef", &"x".repeat(MAX_LEN)] {
            assert!(is_sane(&HeaderValue::from_str(ok).unwrap()), "{ok}");
        }
        for bad in ["", "has space", &"x".repeat(MAX_LEN + 1)] {
            assert!(!is_sane(&HeaderValue::from_str(bad).unwrap()), "{bad}");
        }
        assert!(!is_sane(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()));
    }
}
