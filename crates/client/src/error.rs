use crate::wire::Problem;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request; `problem.code` is the stable machine code
    /// (`topic_not_found`, `malformed_json`, …).
    #[error("{} [{}]{}", problem.title, problem.code, problem.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Api { problem: Problem },
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
        match self {
            Error::Api { problem } => Some(&problem.code),
            _ => None,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { problem } => Some(problem.status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// Whether sending the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { problem } => {
                matches!(problem.status, 408 | 429 | 503) || problem.status >= 500
            }
            Error::Transport(_) => true,
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
