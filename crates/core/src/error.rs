//! One error type for every engine. Anything that crosses the wire maps to a
//! stable machine code (`Error::code`) and an HTTP status class (`ErrorKind`).

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    #[error("topic '{0}' does not exist")]
    TopicNotFound(String),
    #[error("subscription '{0}' does not exist")]
    SubscriptionNotFound(String),
    #[error("topic '{0}' already exists with a different configuration")]
    TopicExists(String),
    #[error("subscription '{0}' already exists with a different configuration")]
    SubscriptionExists(String),
    #[error("topic '{topic}' still has subscriptions: {subscriptions}")]
    TopicInUse {
        topic: String,
        subscriptions: String,
    },
    #[error("invalid name '{name}': {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("message too large: {size} bytes, limit {limit}")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The engine's backend (a NATS or Redis server) cannot be reached now.
    #[error("the engine is unavailable: {0}")]
    Unavailable(String),
    #[error("the {engine} engine does not support {}", feature.describe())]
    Unsupported {
        engine: String,
        feature: crate::capabilities::Feature,
    },
    #[error("storage error: {0}")]
    Storage(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

/// How a transport should present an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Conflict,
    BadRequest,
    TooLarge,
    /// The engine lacks a feature the request needs (HTTP 501).
    Unsupported,
    Unavailable,
    Internal,
}

impl Error {
    /// Stable machine-readable code; never change an existing one.
    pub fn code(&self) -> &'static str {
        match self {
            Error::TopicNotFound(_) => "topic_not_found",
            Error::SubscriptionNotFound(_) => "subscription_not_found",
            Error::TopicExists(_) => "topic_exists",
            Error::SubscriptionExists(_) => "subscription_exists",
            Error::TopicInUse { .. } => "topic_in_use",
            Error::InvalidName { .. } => "invalid_name",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::MessageTooLarge { .. } => "message_too_large",
            Error::ShuttingDown => "shutting_down",
            Error::Unavailable(_) => "engine_unavailable",
            Error::Unsupported { .. } => "unsupported_by_engine",
            Error::Storage(_) => "storage_error",
            Error::Corrupt(_) => "corrupt_data",
            Error::Io(_) => "io_error",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::TopicNotFound(_) | Error::SubscriptionNotFound(_) => ErrorKind::NotFound,
            Error::TopicExists(_) | Error::SubscriptionExists(_) | Error::TopicInUse { .. } => {
                ErrorKind::Conflict
            }
            Error::InvalidName { .. } | Error::InvalidArgument(_) => ErrorKind::BadRequest,
            Error::MessageTooLarge { .. } => ErrorKind::TooLarge,
            Error::ShuttingDown | Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Storage(_) | Error::Corrupt(_) | Error::Io(_) => ErrorKind::Internal,
        }
    }

    /// Whether the same call may succeed if simply tried again later.
    /// Corrupt data stays corrupt however often it is read.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Corrupt(_) => false,
            e => matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Internal),
        }
    }
}

/// Topic and subscription names: 1 to 200 characters of `A-Z a-z 0-9 . _ -`,
/// not starting with `.` or `-`, so they are safe as file names and URL path segments.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 200 {
        Some("must be at most 200 characters")
    } else if name.starts_with('.') || name.starts_with('-') {
        Some("must not start with '.' or '-'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("may contain only letters, digits, '.', '_' and '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_is_retryable_and_corrupt_is_not() {
        let down = Error::Unavailable("connection refused".into());
        assert_eq!(down.code(), "engine_unavailable");
        assert_eq!(down.kind(), ErrorKind::Unavailable);
        assert!(down.is_retryable());
        assert!(!Error::Corrupt("bad crc".into()).is_retryable());
        assert!(Error::Storage("disk full".into()).is_retryable());
        let unsupported = Error::Unsupported {
            engine: "redis".into(),
            feature: crate::capabilities::Feature::SeekByTime,
        };
        assert!(!unsupported.is_retryable());
        assert_eq!(
            unsupported.to_string(),
            "the redis engine does not support seeking by time"
        );
    }

    #[test]
    fn names() {
        assert!(validate_name("orders").is_ok());
        assert!(validate_name("orders.v2_eu-west").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a b", "é", &"x".repeat(201)] {
            assert_eq!(
                validate_name(bad).unwrap_err().code(),
                "invalid_name",
                "{bad}"
            );
        }
    }
}
