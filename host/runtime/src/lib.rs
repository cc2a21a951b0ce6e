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
//!
//! A service that accepts an operation itself and drives it from its own code:
//!
//! ```
//! # use opshost_runtime::{InMemoryOperationRuntime, Operation, OperationState};
//! # use serde_json::{Value, json};
//! # struct Greet;
//! # impl Operation for Greet {
//! #     const SERVICE: &'static str = "greeter";
//! #     const NAME: &'static str = "Greet";
//! #     const VERSION: &'static str = "v1";
//! #     type Input = Value;
//! #     type Progress = Value;
//! #     type Output = Value;
//! #     fn manifest() -> &'static str {
//! #         r#"{"service": "greeter", "schemas": {}, "operations": {"Greet": {"version": "v1",
//! #             "input": {"schema": {"type": "object"}}, "output": {"schema": {"type": "string"}},
//! #             "progress": {"schema": {"type": "integer"}}}}}"#
//! #     }
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // `Greet` is a facade's marker for operation `Greet` of service `greeter`.
//! let runtime = InMemoryOperationRuntime::new("greeter");
//! let operations = runtime.operation::<Greet>();
//! operations.accept("greet-ada").await?;
//! let control = operations.control("greet-ada").await?;
//! control.started().await?;
//! control.progress(json!(50)).await?;
//! control.complete(json!("hello, Ada")).await?;
//! let done = operations.get("greet-ada").await?;
//! assert_eq!(done.state, OperationState::Completed);
//! assert_eq!(done.output, Some(json!("hello, Ada")));
//! # Ok::<(), opshost_runtime::ServerError>(())
//! # }).unwrap();
//! ```
//!
//! A runtime built in one place, whose handler runs every operation started:
//!
//! ```
//! # use std::sync::Arc;
//! # use opshost_runtime::{Operation, OperationRuntime, OperationState, RuntimeConfig};
//! # use opshost_runtime::store::MemoryStore;
//! # use serde_json::{Value, json};
//! # struct Greet;
//! # impl Operation for Greet {
//! #     const SERVICE: &'static str = "greeter";
//! #     const NAME: &'static str = "Greet";
//! #     const VERSION: &'static str = "v1";
//! #     type Input = Value;
//! #     type Progress = Value;
//! #     type Output = Value;
//! #     fn manifest() -> &'static str {
//! #         r#"{"service": "greeter", "schemas": {}, "operations": {"Greet": {"version": "v1",
//! #             "input": {"schema": {"type": "object"}}, "output": {"schema": {"type": "string"}}}}}"#
//! #     }
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let contract = opshost_contract::Contract::from_json(Greet::manifest()).expect("a contract");
//! let runtime = OperationRuntime::builder(contract)
//!     .store(Arc::new(MemoryStore::new()))
//!     .config(RuntimeConfig::default())
//!     .build();
//! let greetings = runtime.operation::<Greet>();
//! greetings.serve(|control, input: Value| async move {
//!     control.started().await?;
//!     control.complete(json!(format!("hello, {}", input["name"]))).await?;
//!     Ok(())
//! });
//! let started = greetings.start(&json!({ "name": "Ada" })).await?;
//! let done = greetings.wait(&started.id).await?;
//! assert_eq!(done.state, OperationState::Completed);
//! # Ok::<(), opshost_runtime::ServerError>(())
//! # }).unwrap();
//! ```

mod config;
mod control;
mod error;
mod executor;
mod feed;
mod handoff;
mod log;
pub mod logs;
mod router;
mod run;
mod runtime;
pub mod store;
mod typed;
mod usage;
mod watch;

pub use config::{RestartPolicy, RuntimeConfig};
pub use control::{OperationControl, OperationFailure};
pub use error::{ServerError, until_stored};
pub use executor::{Drained, OperationHandler, Recovery};
pub use feed::{ChangeStream, ChangeWatch};
pub use handoff::JobHandOff;
pub use log::{Acceptance, SignalWait, json_len};
pub use opshost_api::{
    ErrorCode, ErrorInfo, EventKind, Operation, OperationEvent, OperationSnapshot, OperationState,
    Signal, Snapshot,
};
pub use router::{RequestContext, Router};
pub use run::Run;
pub use runtime::{InMemoryOperationRuntime, OperationRuntime, RuntimeBuilder, WeakRuntime};
pub use store::{Change, ChangeCursor, ListFilter, Owner, Page, SignalRecord};
pub use typed::Operations;
pub use usage::Usage;
pub use watch::EventStream;
