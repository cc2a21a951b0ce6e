//! Contract manifests: loading, validation and compiled schemas.
//!
//! A manifest declares one service: its named JSON Schemas (2020-12) and its operations, each
//! with input, progress and output schemas, capability lists, cancel support and signals,
//! and its job queues, each with payload, progress and result schemas and a retry policy.
//! [`Contract::from_json`] checks everything at load time and reports each problem with the
//! JSON path where it stands; the resulting [`Contract`] holds every schema compiled once.

mod capabilities;
mod error;
mod example;
mod manifest;
mod schema;
pub mod strict_json;

pub use capabilities::{Action, Capabilities};
pub use error::{ContractError, ManifestIssue};
pub use manifest::{Contract, OperationSpec, QueueSpec, SignalSpec};
pub use schema::{PayloadSchema, SchemaIssue};
