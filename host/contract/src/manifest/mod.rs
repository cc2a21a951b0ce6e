//! The manifest model: a contract, its operations, signals and queues.

mod loader;
mod queues;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::capabilities::Capabilities;
use crate::error::ContractError;
use crate::schema::PayloadSchema;
use crate::strict_json;
use loader::Loader;

/// A loaded, validated contract: one service, its schemas and its operations.
#[derive(Debug, Clone)]
pub struct Contract {
    service: String,
    manifest: Arc<Value>,
    schemas: BTreeMap<String, Value>,
    operations: BTreeMap<String, OperationSpec>,
    queues: BTreeMap<String, QueueSpec>,
}

/// A job queue of a contract: what its jobs carry and how failed attempts are retried.
///
/// ```json
/// "queues": { "fulfillment": { "payload": { "schema": "FulfillmentJob" },
///     "maxAttempts": 5, "backoff": { "initialMs": 1000, "maxMs": 60000 }, "timeoutMs": 30000 } }
/// ```
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Queue name, e.g. `fulfillment`.
    pub name: String,
    /// Payload schema, checked at enqueue.
    pub payload: PayloadSchema,
    /// Progress schema; `None` accepts any JSON progress.
    pub progress: Option<PayloadSchema>,
    /// Result schema; `None` accepts any JSON result.
    pub result: Option<PayloadSchema>,
    /// Attempts before a job is `dead` (default 3).
    pub max_attempts: u32,
    /// Delay before the first retry (default 1 s); doubled on each retry, with jitter.
    pub backoff_initial: Duration,
    /// Longest delay between attempts (default 5 min).
    pub backoff_max: Duration,
    /// Longest one attempt may run (default 5 min).
    pub timeout: Duration,
}

/// One operation of a contract, with schemas compiled and capability defaults resolved.
#[derive(Debug, Clone)]
pub struct OperationSpec {
    /// Operation name, e.g. `Orders.Process`.
    pub name: String,
    /// Contract version, e.g. `v1`.
    pub version: String,
    /// Start input schema.
    pub input: PayloadSchema,
    /// Progress schema; `None` when the operation reports no progress.
    pub progress: Option<PayloadSchema>,
    /// Output schema.
    pub output: PayloadSchema,
    /// Resolved capability lists.
    pub capabilities: Capabilities,
    /// Whether callers may cancel.
    pub cancel: bool,
    /// Named signals.
    pub signals: BTreeMap<String, SignalSpec>,
}

/// A named post-start input of an operation.
#[derive(Debug, Clone)]
pub struct SignalSpec {
    /// Signal name, e.g. `Expedite`.
    pub name: String,
    /// Payload schema.
    pub input: PayloadSchema,
}

impl Contract {
    /// Loads a manifest file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ContractError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ContractError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses and validates manifest text, reporting every problem found.
    pub fn from_json(text: &str) -> Result<Self, ContractError> {
        let root = strict_json::parse(text).map_err(|e| ContractError::Json(e.to_string()))?;
        let mut loader = Loader::default();
        let contract = loader.contract(&root);
        match contract {
            Some(contract) if loader.issues.is_empty() => Ok(contract),
            _ => Err(ContractError::Invalid(loader.issues)),
        }
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The manifest document as loaded.
    pub fn manifest(&self) -> &Value {
        &self.manifest
    }

    /// The named schemas, as written.
    pub fn schemas(&self) -> &BTreeMap<String, Value> {
        &self.schemas
    }

    /// All operations by name.
    pub fn operations(&self) -> &BTreeMap<String, OperationSpec> {
        &self.operations
    }

    /// One operation by name.
    pub fn operation(&self, name: &str) -> Option<&OperationSpec> {
        self.operations.get(name)
    }

    /// All job queues by name.
    pub fn queues(&self) -> &BTreeMap<String, QueueSpec> {
        &self.queues
    }

    /// One job queue by name.
    pub fn queue(&self, name: &str) -> Option<&QueueSpec> {
        self.queues.get(name)
    }
}
