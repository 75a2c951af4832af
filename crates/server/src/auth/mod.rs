//! Who may subscribe and publish: JSON Web Tokens checked once per request by
//! [`AuthLayer`], permissions checked by the handler that knows the topic and
//! filter ([`Access::check_subscribe`], [`Access::check_publish`]).
//!
//! Two steps because one request does not always name one topic: a WebSocket
//! connection authenticates once and then subscribes and publishes to many.
//! The layer answers 401 `unauthenticated` for a token that is malformed,
//! badly signed, expired, or for another issuer or audience; a handler
//! answers 401 when no token was given and anonymous access is off for what
//! it does, and 403 `forbidden` when the token's `courier` claim
//! (`courier_api::realtime::Claims`) does not grant the topic or the filter.
//!
//! With no key configured ([`crate::config::AuthConfig::enabled`]) every
//! request gets [`Access::Open`]: everything is allowed, as before auth existed.

mod layer;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use courier_api::realtime::{Claims, Grant};
use courier_core::NewMessage;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

pub(crate) use layer::{query_pairs, AuthLayer};

use crate::config::{AuthConfig, ConfigError};
use crate::error::{codes, ApiError};
use crate::realtime::Filter;

/// Checks tokens against the configured keys, issuer and audience.
pub(crate) struct Authenticator {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    anonymous: Anonymous,
}

/// What a request without a token may do while auth is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anonymous {
    pub read: bool,
    pub publish: bool,
}

impl Authenticator {
    /// `None` when auth is off (no key configured); an error names a key that cannot be used.
    pub(crate) fn from_config(config: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        if !config.enabled() {
            return Ok(None);
        }
        let invalid = |m: String| ConfigError::Invalid(m);
        let hs256 = match &config.jwt_hs256_secret {
            Some(secret) if secret.len() < 32 => {
                return Err(invalid(
                    "auth.jwt_hs256_secret must be at least 32 bytes (256 bits)".into(),
                ))
            }
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
            None => None,
        };
        let rs256 = match config.rs256_pem()? {
            Some(pem) => Some(DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                invalid(format!(
                    "auth.jwt_rs256_public_key_pem is not an RSA public key in PEM: {e}"
                ))
            })?),
            None => None,
        };
        let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        Ok(Some(Self {
            hs256,
            rs256,
            issuer: non_empty(&config.issuer),
            audience: non_empty(&config.audience),
            anonymous: Anonymous {
                read: config.anonymous_read,
                publish: config.anonymous_publish,
            },
        }))
    }

    /// The access a request with `token` (or none) has; `Err` is the 401 to answer.
    pub(crate) fn access(&self, token: Option<&str>) -> Result<Access, ApiError> {
        let Some(token) = token else {
            return Ok(Access::Anonymous(self.anonymous));
        };
        let unauthenticated = |why: String| ApiError::unauthenticated(why);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthenticated(format!("the token cannot be read: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| {
            unauthenticated(format!(
                "tokens signed with {:?} are not accepted here",
                header.alg
            ))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_aud = false;
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
            validation.validate_aud = true;
            validation.required_spec_claims.insert("aud".into());
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            unauthenticated(match e.kind() {
                K::ExpiredSignature => "the token has expired".into(),
                K::InvalidIssuer => "the token is for another issuer".into(),
                K::InvalidAudience => "the token is for another audience".into(),
                K::InvalidSignature => "the token's signature does not verify".into(),
                K::MissingRequiredClaim(c) => format!("the token has no '{c}' claim"),
                _ => format!("the token is invalid: {e}"),
            })
        })?;
        Ok(Access::Token(Arc::new(data.claims)))
    }
}

/// What one request may do; [`AuthLayer`] puts it in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// Auth is off: everything is allowed.
    Open,
    /// Auth is on and the request carried no token.
    Anonymous(Anonymous),
    /// A valid token's claims.
    Token(Arc<Claims>),
}

impl Access {
    /// May this request follow `topic` with `filter`?
    pub(crate) fn check_subscribe(&self, topic: &str, filter: &Filter) -> Result<(), ApiError> {
        match self {
            Access::Open => Ok(()),
            Access::Anonymous(a) if a.read => Ok(()),
            Access::Anonymous(_) => Err(ApiError::unauthenticated(
                "a token is required to subscribe (Authorization: Bearer, or ?token=)",
            )),
            Access::Token(claims) => {
                let grants = claims.courier.subscribe.iter().filter(|g| g.covers(topic));
                check(grants, topic, "subscribe to", |g| filter.within(g))
            }
        }
    }

    /// May this request look at `topic` at all (presence): any subscribe grant covers it.
    pub(crate) fn check_observe(&self, topic: &str) -> Result<(), ApiError> {
        match self {
            Access::Token(claims) => {
                let grants = claims.courier.subscribe.iter().filter(|g| g.covers(topic));
                check(grants, topic, "observe", |_| true)
            }
            other => other.check_subscribe(topic, &Filter::default()),
        }
    }

    /// May this request publish `messages` to `topic`? A restricted grant
    /// needs its key and headers on every message.
    pub(crate) fn check_publish(
        &self,
        topic: &str,
        messages: &[NewMessage],
    ) -> Result<(), ApiError> {
        match self {
            Access::Open => Ok(()),
            Access::Anonymous(a) if a.publish => Ok(()),
            Access::Anonymous(_) => Err(ApiError::unauthenticated(
                "a token is required to publish (Authorization: Bearer)",
            )),
            Access::Token(claims) => {
                let grants = claims.courier.publish.iter().filter(|g| g.covers(topic));
                check(grants, topic, "publish to", |g| {
                    messages.iter().all(|m| message_within(m, g))
                })
            }
        }
    }
}

/// Allowed when a grant covers the topic and `fits` it; 403 saying which part failed.
fn check<'a>(
    grants: impl Iterator<Item = &'a Grant>,
    topic: &str,
    verb: &str,
    fits: impl Fn(&Grant) -> bool,
) -> Result<(), ApiError> {
    let mut covered = false;
    for grant in grants {
        covered = true;
        if fits(grant) {
            return Ok(());
        }
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        codes::FORBIDDEN,
        if covered {
            format!("the token may {verb} topic '{topic}' only with the key or headers it names")
        } else {
            format!("the token does not allow to {verb} topic '{topic}'")
        },
    ))
}

fn message_within(m: &NewMessage, grant: &Grant) -> bool {
    grant.key().is_none_or(|k| m.key.as_deref() == Some(k))
        && grant.headers().is_none_or(|hs| {
            hs.iter()
                .all(|(name, value)| m.headers.get(name) == Some(value))
        })
}

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Access>().cloned().ok_or_else(|| {
            // A route that asks for access must be behind the layer; failing
            // closed beats serving it unchecked.
            tracing::error!(
                path = parts.uri.path(),
                "route is not behind the auth layer"
            );
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                "this route is not behind the auth layer",
            )
        })
    }
}

impl ApiError {
    /// 401 `unauthenticated`, with the `WWW-Authenticate` challenge.
    pub(crate) fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, codes::UNAUTHENTICATED, detail)
    }
}
