//! Stable error codes shared by the Rust API, the WIT surface and HTTP.

use serde::{Deserialize, Serialize};

/// A stable, documented error code. The string form (`as_str`) never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// No operation has the given id.
    OperationNotFound,
    /// The id is taken by an operation with a different input.
    OperationAlreadyExists,
    /// The operation is terminal and cannot change any more.
    OperationTerminal,
    /// The operation does not support the requested control (e.g. cancel).
    OperationUnsupportedControl,
    /// A payload does not match its schema, or a request names something unknown.
    InvalidInput,
    /// The caller is not authenticated.
    Unauthenticated,
    /// The caller lacks a capability.
    MissingCapability,
    /// A sandbox or runtime limit was exceeded.
    LimitExceeded,
    /// The handler trapped.
    HandlerTrapped,
    /// The handler returned while its operation was still non-terminal.
    HandlerNonTerminal,
    /// The host restarted while the operation ran.
    HostRestarted,
    /// The host is overloaded; retry later.
    Overloaded,
    /// The handler failed the operation with its own failure.
    HandlerFailed,
    /// The operation was cancelled.
    Cancelled,
    /// An internal error of the host (store, engine).
    Internal,
    /// No job has the given id.
    JobNotFound,
    /// The host's store cannot be reached now; nothing was changed, and the same request may
    /// succeed after `Retry-After`.
    Unavailable,
}

impl ErrorCode {
    /// The code's stable string form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OperationNotFound => "OperationNotFound",
            Self::OperationAlreadyExists => "OperationAlreadyExists",
            Self::OperationTerminal => "OperationTerminal",
            Self::OperationUnsupportedControl => "OperationUnsupportedControl",
            Self::InvalidInput => "InvalidInput",
            Self::Unauthenticated => "Unauthenticated",
            Self::MissingCapability => "MissingCapability",
            Self::LimitExceeded => "LimitExceeded",
            Self::HandlerTrapped => "HandlerTrapped",
            Self::HandlerNonTerminal => "HandlerNonTerminal",
            Self::HostRestarted => "HostRestarted",
            Self::Overloaded => "Overloaded",
            Self::HandlerFailed => "HandlerFailed",
            Self::Cancelled => "Cancelled",
            Self::Internal => "Internal",
            Self::JobNotFound => "JobNotFound",
            Self::Unavailable => "Unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error recorded on a failed or cancelled snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Optional structured details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorInfo {
    /// An error with a code and message and no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }
}
