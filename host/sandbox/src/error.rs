//! Errors of loading and configuring the sandbox.

use opshost_contract::ContractError;

/// Why a deployment could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The deployment config could not be read or parsed.
    #[error("deployment config {path}: {message}")]
    Config {
        /// The config file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The contract manifest does not load.
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// A handler names an operation the contract does not declare.
    #[error("handler for `{operation}`: the contract declares no such operation")]
    UnknownOperation {
        /// The operation named by the config.
        operation: String,
    },
    /// A rollback asked for, with no ramp and no version before the current one.
    #[error("{target} has no earlier version to roll back to")]
    NoEarlierVersion {
        /// The operation or queue.
        target: opshost_api::DeployTarget,
    },
    /// A deploy refused: the component failed its checks, and nothing changed.
    #[error("{target}: the component is refused: {}", .problems.join("; "))]
    Refused {
        /// The operation or queue.
        target: opshost_api::DeployTarget,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A config reload refused: nothing changed.
    #[error("the config reload is refused: {}", .problems.join("; "))]
    ReloadRefused {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The host failed on its side (a compile that stopped, a host shutting down).
    #[error("{0}")]
    Internal(String),
    /// The store of deployments failed.
    #[error(transparent)]
    Store(#[from] opshost_runtime::store::StoreError),
    /// A worker names a queue the contract does not declare.
    #[error("worker for `{queue}`: the contract declares no such queue")]
    UnknownQueue {
        /// The queue named by the config.
        queue: String,
    },
    /// The jobs service could not start.
    #[error("jobs: {0}")]
    Jobs(#[from] opshost_jobs::JobError),
    /// A component could not be read, compiled or linked.
    #[error("component {path}: {message}")]
    Component {
        /// The component file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A component imports interfaces its grants do not cover.
    #[error("component {path} imports what it was not granted: {}", .imports.join(", "))]
    UngrantedImports {
        /// The component file.
        path: String,
        /// Every offending import.
        imports: Vec<String>,
    },
    /// A grant cannot be given (e.g. a directory that does not exist).
    #[error("component {path}: {message}")]
    Grant {
        /// The component file.
        path: String,
        /// What is wrong, naming the grant.
        message: String,
    },
    /// A secret of `[secrets]` cannot be read, or `[egress]` is wrong.
    #[error("{0}")]
    Secrets(String),
    /// The wasmtime engine could not be created.
    #[error("wasmtime engine: {0}")]
    Engine(String),
}
