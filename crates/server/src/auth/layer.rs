//! [`AuthLayer`]: reads the token of every request it sees, from
//! `Authorization: Bearer <token>` or the `token` query parameter (an
//! EventSource cannot set headers), and puts the request's [`Access`] in its
//! extensions, or answers 401 `unauthenticated` for a token that is not
//! valid. Every 401 that passes it back carries `WWW-Authenticate: Bearer`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, FutureExt};
use tower::{Layer, Service};

use super::{Access, Authenticator};
use crate::error::ApiError;

/// Authenticates requests; `None` inside means auth is off ([`Access::Open`]).
#[derive(Clone)]
pub(crate) struct AuthLayer {
    auth: Option<Arc<Authenticator>>,
}

impl AuthLayer {
    pub(crate) fn new(auth: Option<Arc<Authenticator>>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;
    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Authenticated<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
}

impl<S, B> Service<Request<B>> for Authenticated<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let access = match &self.auth {
            None => Ok(Access::Open),
            Some(auth) => token(&request).and_then(|t| auth.access(t.as_deref())),
        };
        match access {
            Ok(access) => {
                request.extensions_mut().insert(access);
                self.inner.call(request).map(|r| r.map(challenge)).boxed()
            }
            Err(e) => {
                let response = challenge(e.into_response());
                async move { Ok(response) }.boxed()
            }
        }
    }
}

/// The request's token: the `Authorization: Bearer` header, else `?token=`.
fn token<B>(request: &Request<B>) -> Result<Option<String>, ApiError> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthenticated("the Authorization header is not text"))?;
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::unauthenticated(
                "the Authorization header must be 'Bearer <token>'",
            ));
        }
        return Ok(Some(token.trim().to_owned()));
    }
    Ok(query_pairs(request.uri())
        .into_iter()
        .find(|(k, _)| k == courier_api::realtime::params::TOKEN)
        .map(|(_, v)| v))
}

/// The decoded `name=value` pairs of a request's query, in order; none when
/// the query cannot be decoded (the route's own parsing reports that).
pub(crate) fn query_pairs(uri: &axum::http::Uri) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

fn challenge(mut response: Response) -> Response {
    if response.status() == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}
