//! What a client call can fail with: an error answered by the host (with its stable code), or
//! a transport or protocol problem.

use std::time::Duration;

use opshost_api::{ErrorCode, ErrorInfo};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

/// A failed client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host answered with an error.
    #[error("{status} {code}: {message}", code = .code.as_str())]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Stable error code.
        code: ErrorCode,
        /// The host's message.
        message: String,
        /// Structured details (schema issues, the missing capability, ...).
        details: Option<Value>,
        /// `Retry-After`, when the host is overloaded.
        retry_after: Option<Duration>,
    },
    /// The host could not be reached or the connection broke.
    #[error("transport: {0}")]
    Transport(#[source] reqwest::Error),
    /// The host answered something that is not the opshost API.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// The client cannot be set up as asked (a CA file, HTTPS without TLS support).
    #[error("{0}")]
    Config(String),
    /// A payload does not match the facade's types.
    #[error("payload does not match the facade types: {0}")]
    Codec(#[source] serde_json::Error),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInfo,
}

impl ClientError {
    /// The stable code, for errors answered by the host.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn from_body(
        status: StatusCode,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => Self::Api {
                status,
                code: error.code,
                message: error.message,
                details: error.details,
                retry_after,
            },
            Err(_) => Self::Protocol(format!(
                "{status} with a body that is not an opshost error: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        }
    }
}
