//! The shared data model of opshost.
//!
//! Everything a caller, a native handler, a guest and the generated participant facade agree
//! on lives here: the [`Operation`] marker trait, snapshots, events and the stable error codes.
//! This crate has no runtime dependencies beyond serde so that it also builds for
//! `wasm32-wasip2` guests.

mod deployment;
mod error;
pub mod id;
mod job;
mod log;
mod operation;
mod snapshot;
mod trace;

pub use deployment::{DeployAction, DeployTarget, DeploymentRecord};
pub use error::{ErrorCode, ErrorInfo};
pub use job::{JobPage, JobRecord, JobState};
pub use log::{LogLevel, LogLine, LogStream};
pub use operation::{Operation, Signal};
pub use snapshot::{EventKind, OperationEvent, OperationSnapshot, OperationState, Snapshot};
pub use trace::TraceContext;
