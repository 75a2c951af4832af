use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::wire::Problem;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request; `problem.code` is the stable machine code
    /// (`topic_not_found`, `malformed_json`, …).
    #[error("{} [{}]{}", problem.title, problem.code, problem.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Api { problem: Problem },
    /// 429: the server (or a proxy) limits how fast this client may send. Try
    /// again after `retry_after` when the answer said (`Retry-After` in
    /// seconds), or back off on your own when it did not.
    #[error("{} [{}]{}{}", problem.title, problem.code, problem.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default(), retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default())]
    RateLimited {
        problem: Problem,
        retry_after: Option<Duration>,
    },
    /// The request never got an answer (connection refused, reset, timed out).
    #[error("cannot reach the broker: {0}")]
    Transport(#[source] reqwest::Error),
    /// The server answered something this client does not understand.
    #[error("unexpected answer from the broker: {0}")]
    Protocol(String),
    /// The request could not be built (bad URL, header value with a newline, …).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl Error {
    /// The problem code of an API error.
    pub fn code(&self) -> Option<&str> {
        self.problem().map(|p| p.code.as_str())
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        self.problem().map(|p| p.status)
    }

    /// The problem document the server answered, for API errors.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Api { problem } | Error::RateLimited { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// How long the server asked this client to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Error::RateLimited { .. })
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// 501 `unsupported_by_engine`: the broker's engine lacks a feature this
    /// request needs (see `Client::capabilities`).
    pub fn is_unsupported(&self) -> bool {
        self.status() == Some(501)
    }

    /// Whether sending the same request again later may succeed. 501
    /// (`unsupported_by_engine`) never does: the engine lacks the feature.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { problem } => {
                matches!(problem.status, 408 | 429 | 503)
                    || (problem.status >= 500 && problem.status != 501)
            }
            Error::RateLimited { .. } | Error::Transport(_) => true,
            Error::Protocol(_) | Error::InvalidRequest(_) => false,
        }
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        if e.is_decode() {
            Error::Protocol(e.to_string())
        } else {
            Error::Transport(e)
        }
    }
}

/// The delay of a `Retry-After` header in its delta-seconds form; the HTTP-date
/// form is not used by Courier and reads as absent.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, v.parse().unwrap());
            retry_after(&h)
        };
        assert_eq!(with("3"), Some(Duration::from_secs(3)));
        assert_eq!(with(" 1 "), Some(Duration::from_secs(1)));
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(with("-1"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn rate_limited_is_retryable_and_keeps_the_code() {
        let e = Error::RateLimited {
            problem: Problem {
                type_: "urn:courier:problem:rate_limited".into(),
                title: "Too Many Requests".into(),
                status: 429,
                code: "rate_limited".into(),
                detail: Some("slow down".into()),
            },
            retry_after: Some(Duration::from_secs(2)),
        };
        assert!(e.is_retryable() && e.is_rate_limited());
        assert_eq!(e.code(), Some("rate_limited"));
        assert_eq!(e.status(), Some(429));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert!(e.to_string().contains("retry after 2 s"), "{e}");
    }

    #[test]
    fn unsupported_is_not_retryable_but_unavailable_is() {
        let api = |status: u16, code: &str| Error::Api {
            problem: Problem {
                type_: format!("urn:courier:problem:{code}"),
                title: "x".into(),
                status,
                code: code.into(),
                detail: None,
            },
        };
        let unsupported = api(501, "unsupported_by_engine");
        assert!(unsupported.is_unsupported());
        assert!(!unsupported.is_retryable());
        assert!(api(503, "engine_unavailable").is_retryable());
        assert!(api(500, "storage_error").is_retryable());
    }
}
