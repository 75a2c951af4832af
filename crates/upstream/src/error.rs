//! The one error type of a call.

/// Why a call produced no reply. The service client never retries: the
/// caller owns retries and can tell from the variant whether the request may
/// have reached the instance.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No instance could take the call: none registered, or all unhealthy,
    /// ejected, with an open circuit or at their concurrency limit. Nothing
    /// was sent; retrying later makes sense ([`Service::ready`] says when).
    ///
    /// [`Service::ready`]: crate::Service::ready
    #[error("no instance of the service can take a call now")]
    NoInstance,
    /// The instance did not answer within the call's timeout; the request
    /// may have been processed.
    #[error("instance {instance} did not answer in time")]
    Timeout {
        /// The instance's id.
        instance: String,
    },
    /// No connection to the instance could be made; nothing was sent.
    #[error("cannot connect to instance {instance}: {message}")]
    Connect {
        /// The instance's id.
        instance: String,
        /// What the connector said.
        message: String,
    },
    /// The connection broke mid-request; the request may have been processed.
    #[error("connection to instance {instance} broke: {message}")]
    Io {
        /// The instance's id.
        instance: String,
        /// What broke.
        message: String,
    },
}

impl CallError {
    /// The instance the call went to, if it went to one.
    pub fn instance(&self) -> Option<&str> {
        match self {
            CallError::NoInstance => None,
            CallError::Timeout { instance }
            | CallError::Connect { instance, .. }
            | CallError::Io { instance, .. } => Some(instance),
        }
    }

    /// Whether the request may have reached the instance (and been
    /// processed): true for timeouts and broken connections.
    pub fn may_have_reached_instance(&self) -> bool {
        matches!(self, CallError::Timeout { .. } | CallError::Io { .. })
    }
}
