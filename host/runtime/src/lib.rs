//! The opshost operation runtime.
//!
//! Data flows one way: a caller (router, HTTP, an in-process handle) asks the
//! [`OperationRuntime`] to accept, control, cancel or signal an operation; the runtime checks the
//! contract, writes through an [`store::OperationStore`] with compare-and-set on the revision,
//! and watchers learn of every change through the store's doorbell.
//!
//! - [`OperationRuntime`]: the untyped core, shared by the wasm sandbox and native handlers.
//! - [`Operations`] and [`OperationControl`]: the typed embedding API of the user's guide.
//! - [`Router`]: per-operation start/get/wait/cancel routes registered by a service.

mod control;
mod error;
mod handoff;
mod router;
mod runtime;
pub mod store;
mod typed;

pub use control::{OperationControl, OperationFailure};
pub use error::ServerError;
pub use handoff::JobHandOff;
pub use opshost_api::{
    ErrorCode, ErrorInfo, EventKind, Operation, OperationEvent, OperationSnapshot, OperationState,
    Signal, Snapshot,
};
pub use router::{RequestContext, Router};
pub use runtime::{
    Acceptance, InMemoryOperationRuntime, OperationHandler, OperationRuntime, Recovery,
    RestartPolicy, RuntimeConfig, SignalWait, json_len,
};
pub use store::{ListFilter, Owner, Page, SignalRecord};
pub use typed::Operations;
