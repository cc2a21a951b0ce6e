//! Errors of the jobs service and its stores.

use opshost_api::{ErrorCode, ErrorInfo};
use opshost_contract::SchemaIssue;
use opshost_runtime::ServerError;

/// A failure of the job store: the same kinds as the operation store's.
pub type JobStoreError = opshost_runtime::store::StoreError;

/// Why a jobs call was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The contract declares no such queue.
    #[error("unknown queue `{0}`")]
    UnknownQueue(String),
    /// The runtime was built without a contract, so it declares no queues.
    #[error("the runtime has no contract (build it with `OperationRuntime::with_contract`)")]
    NoContract,
    /// No job has this id.
    #[error("job `{0}` not found")]
    NotFound(String),
    /// A payload, progress or result breaks its queue's schema.
    #[error("{what} of queue `{queue}` is invalid{}", issues.iter().map(|i| format!("; {i}")).collect::<String>())]
    Invalid {
        /// What was checked: `payload`, `progress` or `result`.
        what: &'static str,
        /// The queue.
        queue: String,
        /// Each issue with its JSON pointer.
        issues: Vec<SchemaIssue>,
    },
    /// The job is in a state that does not allow the call (e.g. retry of a queued job).
    #[error("job `{id}` is {state}: {message}")]
    WrongState {
        /// The job.
        id: String,
        /// Its state.
        state: &'static str,
        /// What was refused.
        message: String,
    },
    /// The worker's lease on the job is gone.
    #[error("the lease on job `{0}` is lost")]
    LeaseLost(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] JobStoreError),
}

impl JobError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownQueue(_)
            | Self::NoContract
            | Self::Invalid { .. }
            | Self::WrongState { .. } => ErrorCode::InvalidInput,
            Self::NotFound(_) => ErrorCode::JobNotFound,
            Self::Store(error) if error.is_unavailable() => ErrorCode::Unavailable,
            Self::LeaseLost(_) | Self::Store(_) => ErrorCode::Internal,
        }
    }

    /// This error with its code, and its schema issues as details.
    pub fn to_info(&self) -> ErrorInfo {
        let details = match self {
            Self::Invalid { issues, .. } => serde_json::to_value(issues).ok(),
            _ => None,
        };
        ErrorInfo {
            code: self.code(),
            message: self.to_string(),
            details,
        }
    }
}

impl From<JobError> for ServerError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Invalid {
                what,
                queue,
                issues,
            } => ServerError::InvalidInput {
                message: format!("{what} of queue `{queue}`"),
                issues,
            },
            JobError::UnknownQueue(_) | JobError::NoContract => ServerError::InvalidInput {
                message: error.to_string(),
                issues: Vec::new(),
            },
            JobError::Store(store) => ServerError::Store(store),
            other => ServerError::Failed(other.to_string()),
        }
    }
}

/// A worker's failure of one attempt, recorded as the job's error (code `HandlerFailed`
/// unless given). `?` turns runtime errors and messages into one.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerError(pub ErrorInfo);

impl WorkerError {
    /// A failure with code `HandlerFailed`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(ErrorInfo::new(ErrorCode::HandlerFailed, message))
    }
}

impl From<ServerError> for WorkerError {
    fn from(error: ServerError) -> Self {
        Self(error.to_info())
    }
}

impl From<JobError> for WorkerError {
    fn from(error: JobError) -> Self {
        Self(error.to_info())
    }
}

impl From<String> for WorkerError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for WorkerError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}
