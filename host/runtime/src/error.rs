//! The runtime's error type, one variant per stable [`ErrorCode`].

use opshost_api::{ErrorCode, ErrorInfo, OperationState};
use opshost_contract::SchemaIssue;

use crate::store::StoreError;

/// An error of the operation runtime or of a service's routes.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No operation has this id.
    #[error("operation `{id}` not found")]
    OperationNotFound {
        /// The id asked for.
        id: String,
    },
    /// The id is taken by an operation with a different input or name.
    #[error("operation `{id}` already exists with a different input")]
    OperationAlreadyExists {
        /// The id asked for.
        id: String,
    },
    /// The operation is terminal; nothing can change it.
    #[error("operation `{id}` is already {}", .state.as_str())]
    OperationTerminal {
        /// The operation's id.
        id: String,
        /// Its terminal state.
        state: OperationState,
    },
    /// The operation does not support this control action.
    #[error("operation `{operation}` does not support {action}")]
    OperationUnsupportedControl {
        /// The operation's name.
        operation: String,
        /// The action refused, e.g. `cancel`.
        action: String,
    },
    /// A payload or name given to the runtime is invalid.
    #[error("{message}{}", issues_suffix(.issues))]
    InvalidInput {
        /// What was invalid, and where (e.g. `progress of Orders.Process`).
        message: String,
        /// Schema issues, each with a JSON pointer.
        issues: Vec<SchemaIssue>,
    },
    /// A limit was exceeded.
    #[error("limit `{limit}` exceeded: {message}")]
    LimitExceeded {
        /// The limit's name.
        limit: String,
        /// Details.
        message: String,
    },
    /// The host is at capacity; try again after `retry_after`.
    #[error("host overloaded: {message}")]
    Overloaded {
        /// Which capacity is exhausted.
        message: String,
        /// When a retry may succeed.
        retry_after: std::time::Duration,
    },
    /// A later attempt of the operation (after a restart, or a take-over by another host)
    /// superseded this one, which may change it no more.
    #[error("attempt {attempt} of operation `{id}` was superseded by attempt {current}")]
    Superseded {
        /// The operation's id.
        id: String,
        /// The attempt that tried to write.
        attempt: u32,
        /// The operation's attempt now.
        current: u32,
    },
    /// The host is shutting down and starts nothing more; another host, or this one once it
    /// is back, will.
    #[error("the host is shutting down; start the operation again on another host or later")]
    ShuttingDown,
    /// A handler returned while its operation was still non-terminal.
    #[error("handler of operation `{id}` returned while the operation was still {}", .state.as_str())]
    HandlerNonTerminal {
        /// The operation's id.
        id: String,
        /// Its state when the handler returned.
        state: OperationState,
    },
    /// The operation ended with a failure reported by its handler.
    #[error("{0}")]
    Failed(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored payload did not decode to the operation's Rust types.
    #[error("payload does not match the facade types: {0}")]
    Codec(#[from] serde_json::Error),
}

/// Runs `write` until the store takes it: while the store is unavailable, again after a
/// growing pause (100 ms, doubling up to 5 s). For writes that must land however long a short
/// outage lasts (a terminal state, a handler's failure); whatever bounds the caller bounds the
/// wait.
pub async fn until_stored<T, F, Fut>(mut write: F) -> Result<T, ServerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ServerError>>,
{
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match write().await {
            Err(ServerError::Store(store)) if store.is_unavailable() => {
                tracing::warn!(error = %store, ?pause, "store unavailable; the write waits");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            outcome => return outcome,
        }
    }
}

fn issues_suffix(issues: &[SchemaIssue]) -> String {
    issues.iter().map(|issue| format!("; {issue}")).collect()
}

impl ServerError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::OperationNotFound { .. } => ErrorCode::OperationNotFound,
            Self::OperationAlreadyExists { .. } => ErrorCode::OperationAlreadyExists,
            Self::OperationTerminal { .. } => ErrorCode::OperationTerminal,
            Self::OperationUnsupportedControl { .. } => ErrorCode::OperationUnsupportedControl,
            Self::InvalidInput { .. } => ErrorCode::InvalidInput,
            Self::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            Self::Overloaded { .. } => ErrorCode::Overloaded,
            Self::HandlerNonTerminal { .. } => ErrorCode::HandlerNonTerminal,
            Self::Failed(_) => ErrorCode::HandlerFailed,
            Self::Store(error) if error.is_unavailable() => ErrorCode::Unavailable,
            Self::ShuttingDown => ErrorCode::Unavailable,
            Self::Superseded { .. } => ErrorCode::HostRestarted,
            Self::Store(_) | Self::Codec(_) => ErrorCode::Internal,
        }
    }

    /// This error as it is recorded on a failed snapshot.
    pub fn to_info(&self) -> ErrorInfo {
        let details = match self {
            Self::InvalidInput { issues, .. } if !issues.is_empty() => {
                serde_json::to_value(issues).ok()
            }
            _ => None,
        };
        ErrorInfo {
            code: self.code(),
            message: self.to_string(),
            details,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput {
            message: message.into(),
            issues: Vec::new(),
        }
    }
}
