//! The opshost operation runtime.
//!
//! Two layers, and data flows one way through them:
//!
//! - the *operation log* (`log`): accept, compare-and-set transitions, signals, reads, wait
//!   and watch, over an [`store::OperationStore`]; watchers learn of every change through the
//!   store's doorbells;
//! - the *executor* (`executor`): the handlers, the handler slots, the jobs port and one
//!   [`Run`] per operation running on this host, which owns its cancellation, its task, its
//!   attempt and its hand-off.
//!
//! [`OperationRuntime`] is what callers (HTTP, the router, in-process code) hold; handlers act
//! through their [`Run`]. [`Operations`] and [`OperationControl`] are the typed embedding API;
//! [`Router`] holds per-operation start/get/wait/cancel routes registered by a service.

mod config;
mod control;
mod error;
mod executor;
mod handoff;
mod log;
mod router;
mod run;
mod runtime;
pub mod store;
mod typed;

pub use config::{RestartPolicy, RuntimeConfig};
pub use control::{OperationControl, OperationFailure};
pub use error::ServerError;
pub use executor::{Drained, OperationHandler, Recovery};
pub use handoff::JobHandOff;
pub use log::{Acceptance, EventStream, SignalWait, json_len};
pub use opshost_api::{
    ErrorCode, ErrorInfo, EventKind, Operation, OperationEvent, OperationSnapshot, OperationState,
    Signal, Snapshot,
};
pub use router::{RequestContext, Router};
pub use run::Run;
pub use runtime::{InMemoryOperationRuntime, OperationRuntime, RuntimeBuilder};
pub use store::{ListFilter, Owner, Page, SignalRecord};
pub use typed::Operations;
