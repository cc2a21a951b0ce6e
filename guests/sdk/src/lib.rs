//! The guest SDK: write an operation handler in plain Rust with the facade's types.
//!
//! A handler implements [`OperationHandler`] for one operation of the facade and is exported
//! with [`export_handler!`]; the component it builds (`cargo build --target wasm32-wasip2`)
//! is what the host runs for every start of that operation. Each call on its [`Context`] is a
//! host import: the host checks the payload against the contract, records it durably and
//! shows it to watchers before the call returns.
//!
//! ```no_run
//! use opshost_guest::{Context, HandlerError, OperationHandler, export_handler};
//! use orders_participant::operations::OrdersProcess;
//! use orders_participant::{
//!     ProcessOrderProgress, ProcessOrderRequest, ProcessOrderResult, ProcessOrderResultStatus,
//! };
//!
//! struct Process;
//!
//! impl OperationHandler for Process {
//!     type Operation = OrdersProcess;
//!
//!     fn handle(
//!         ctx: &Context<OrdersProcess>,
//!         input: ProcessOrderRequest,
//!     ) -> Result<(), HandlerError> {
//!         ctx.started()?;
//!         let steps = ["reserve", "charge", "ship"];
//!         for (done, step) in steps.iter().enumerate() {
//!             if ctx.cancel_requested() {
//!                 ctx.acknowledge_cancel()?;
//!                 return Ok(());
//!             }
//!             ctx.progress(&ProcessOrderProgress {
//!                 step: (*step).into(),
//!                 message: format!("{step} done"),
//!                 completed: done as u64 + 1,
//!                 total: steps.len() as u64,
//!             })?;
//!         }
//!         let total_cents = input
//!             .line_items
//!             .iter()
//!             .map(|item| item.quantity * item.unit_price_cents)
//!             .sum();
//!         ctx.complete(&ProcessOrderResult {
//!             order_id: input.order_id,
//!             status: ProcessOrderResultStatus::Shipped,
//!             total_cents,
//!             tracking_number: format!("TRK-{}", ctx.id()),
//!             expedited: false,
//!         })?;
//!         Ok(())
//!     }
//! }
//!
//! export_handler!(Process);
//! ```
//!
//! The example compiles on any target; it runs inside the host, where the test harness
//! (`opshost-test`) drives the same handlers on a virtual clock.
//!
//! A job worker (the `worker` world) implements [`JobWorker`] and is exported with
//! [`export_worker!`]; [`JobContext::control`] resumes the operation the job owns.

pub mod http;
pub mod log;

use std::marker::PhantomData;
use std::time::Duration;

pub use opshost_api::{Operation, Signal};

#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "handler",
        pub_export_macro: true,
        export_macro_name: "export_raw",
        default_bindings_module: "opshost_guest::bindings",
    });
}

#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod worker_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "worker",
        pub_export_macro: true,
        export_macro_name: "export_worker_raw",
        default_bindings_module: "opshost_guest::worker_bindings",
        with: {
            "opshost:operation/types@0.1.0": crate::bindings::opshost::operation::types,
            "opshost:operation/control@0.1.0": crate::bindings::opshost::operation::control,
            "opshost:operation/log@0.1.0": crate::bindings::opshost::operation::log,
        },
    });
}

use bindings::opshost::operation::control;
use bindings::opshost::operation::types::{self, ControlError, Invocation};

/// Why a control call was refused by the host; the operation is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The payload broke its schema; the text lists each issue with its JSON pointer.
    InvalidPayload(String),
    /// The operation is already terminal.
    Terminal(String),
    /// Cancellation was requested: clean up and call [`Context::acknowledge_cancel`].
    Cancelled,
    /// A limit was exceeded.
    LimitExceeded(String),
    /// The host could not carry out the call.
    Internal(String),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidPayload(m) => write!(f, "invalid payload: {m}"),
            Self::Terminal(m) => write!(f, "operation terminal: {m}"),
            Self::Cancelled => f.write_str("cancellation requested"),
            Self::LimitExceeded(m) => write!(f, "limit exceeded: {m}"),
            Self::Internal(m) => write!(f, "host error: {m}"),
        }
    }
}

impl std::error::Error for HostError {}

impl From<ControlError> for HostError {
    fn from(error: ControlError) -> Self {
        match error {
            ControlError::InvalidPayload(m) => Self::InvalidPayload(m),
            ControlError::Terminal(m) => Self::Terminal(m),
            ControlError::Cancelled => Self::Cancelled,
            ControlError::LimitExceeded(m) => Self::LimitExceeded(m),
            ControlError::Internal(m) => Self::Internal(m),
        }
    }
}

/// A handler's failure: fails the operation with code `HandlerFailed` and this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// What went wrong, for the caller.
    pub message: String,
}

impl HandlerError {
    /// A failure with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::new(error.to_string())
    }
}

/// A signal received from a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSignal {
    /// Order of arrival, from 1.
    pub sequence: u64,
    /// The signal's name.
    pub name: String,
    /// The validated payload, as JSON text.
    pub payload: String,
}

impl ReceivedSignal {
    /// The payload as signal `S`'s input, when this is signal `S`.
    pub fn decode<S: Signal>(&self) -> Option<S::Input> {
        if self.name != S::NAME {
            return None;
        }
        serde_json::from_str(&self.payload).ok()
    }
}

/// The control surface of the one operation being handled, typed by the facade.
pub struct Context<Op: Operation> {
    id: String,
    attempt: u32,
    marker: PhantomData<fn() -> Op>,
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, HostError> {
    serde_json::to_string(value).map_err(|e| HostError::InvalidPayload(e.to_string()))
}

impl<Op: Operation> Context<Op> {
    /// The outbound HTTP client: requests go only where the component's `grants.http`
    /// allows (see [`http`]).
    pub fn http(&self) -> http::Http {
        http::Http
    }

    /// The operation's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// 1 on the first run, +1 on every retry.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Marks the operation running.
    pub fn started(&self) -> Result<(), HostError> {
        Ok(control::started()?)
    }

    /// Reports progress.
    pub fn progress(&self, progress: &Op::Progress) -> Result<(), HostError> {
        Ok(control::progress(&encode(progress)?)?)
    }

    /// Completes the operation.
    pub fn complete(&self, output: &Op::Output) -> Result<(), HostError> {
        Ok(control::complete(&encode(output)?)?)
    }

    /// Fails the operation.
    pub fn fail(&self, message: &str) -> Result<(), HostError> {
        Ok(control::fail(&types::Failure {
            message: message.to_owned(),
            details: None,
        })?)
    }

    /// Whether a caller asked to cancel.
    pub fn cancel_requested(&self) -> bool {
        control::cancel_requested()
    }

    /// Ends the operation `cancelled` after cleaning up.
    pub fn acknowledge_cancel(&self) -> Result<(), HostError> {
        Ok(control::acknowledge_cancel()?)
    }

    /// Waits for the next signal, up to `timeout`; `Ok(None)` on timeout.
    pub fn next_signal(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<ReceivedSignal>, HostError> {
        let timeout = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        Ok(control::next_signal(timeout)?.map(|s| ReceivedSignal {
            sequence: s.sequence,
            name: s.name,
            payload: s.payload,
        }))
    }

    /// Sleeps, returning [`HostError::Cancelled`] early when cancellation is requested.
    pub fn sleep(&self, duration: Duration) -> Result<(), HostError> {
        Ok(control::sleep(
            u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        )?)
    }

    /// Hands the operation's terminal path to a new job on `queue`; returns the job's id.
    /// The handler may then return `Ok` with the operation still open.
    pub fn hand_off<P: serde::Serialize>(
        &self,
        queue: &str,
        payload: &P,
    ) -> Result<String, HostError> {
        Ok(control::hand_off(queue, &encode(payload)?)?)
    }
}

/// One attempt of one job, as a [`JobWorker`] gets it.
pub struct JobContext {
    invocation: types::JobInvocation,
}

impl JobContext {
    /// The outbound HTTP client: requests go only where the component's `grants.http`
    /// allows (see [`http`]).
    pub fn http(&self) -> http::Http {
        http::Http
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.invocation.job_id
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.invocation.attempt
    }

    /// The payload, decoded.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_str(&self.invocation.payload).map_err(|e| {
            HandlerError::new(format!("payload of job {} does not decode: {e}", self.id()))
        })
    }

    /// The operation whose terminal path the job owns, if any.
    pub fn operation_id(&self) -> Option<&str> {
        self.invocation.operation_id.as_deref()
    }

    /// Reports the job's progress.
    pub fn progress<T: serde::Serialize>(&self, progress: &T) -> Result<(), HostError> {
        Ok(worker_bindings::opshost::operation::job::progress(
            &encode(progress)?,
        )?)
    }

    /// Whether cancellation of the job, or of the operation it owns, was requested.
    pub fn cancel_requested(&self) -> bool {
        worker_bindings::opshost::operation::job::cancel_requested()
    }

    /// The control of the operation the job owns, typed as `Op`.
    pub fn control<Op: Operation>(&self) -> Result<Context<Op>, HostError> {
        match self.operation_id() {
            Some(id) => Ok(self.context(id.to_owned())),
            None => Err(HostError::Internal(format!(
                "job {} owns no operation",
                self.id()
            ))),
        }
    }

    /// Resumes the control of operation `id` of this service, typed as `Op`.
    pub fn resume<Op: Operation>(&self, id: &str) -> Result<Context<Op>, HostError> {
        worker_bindings::opshost::operation::job::resume(id)?;
        Ok(self.context(id.to_owned()))
    }

    fn context<Op: Operation>(&self, id: String) -> Context<Op> {
        Context {
            id,
            attempt: self.attempt(),
            marker: PhantomData,
        }
    }
}

/// A worker for the jobs of one queue.
pub trait JobWorker {
    /// The job's result, checked against the queue's result schema.
    type Output: serde::Serialize;

    /// Works one attempt; an error fails the attempt (retried until the queue's attempts run
    /// out).
    fn run(job: &JobContext) -> Result<Self::Output, HandlerError>;
}

#[doc(hidden)]
pub fn dispatch_job<W: JobWorker>(
    invocation: types::JobInvocation,
) -> Result<String, types::Failure> {
    let failure = |message: String| types::Failure {
        message,
        details: None,
    };
    let job = JobContext { invocation };
    let output = W::run(&job).map_err(|e| failure(e.message))?;
    serde_json::to_string(&output).map_err(|e| failure(format!("result does not encode: {e}")))
}

/// A handler for operation [`OperationHandler::Operation`].
pub trait OperationHandler {
    /// The facade marker of the handled operation.
    type Operation: Operation;

    /// Handles one invocation; must leave the operation terminal (complete, fail or
    /// acknowledge a cancel) before returning `Ok`.
    fn handle(
        ctx: &Context<Self::Operation>,
        input: <Self::Operation as Operation>::Input,
    ) -> Result<(), HandlerError>;
}

#[doc(hidden)]
pub fn dispatch<H: OperationHandler>(invocation: Invocation) -> Result<(), types::Failure> {
    let failure = |message: String| types::Failure {
        message,
        details: None,
    };
    if invocation.operation != H::Operation::NAME {
        return Err(failure(format!(
            "this component handles {}, not {}",
            H::Operation::NAME,
            invocation.operation
        )));
    }
    let input = serde_json::from_str(&invocation.input).map_err(|e| {
        failure(format!(
            "input of {} does not decode: {e}",
            H::Operation::NAME
        ))
    })?;
    let ctx = Context {
        id: invocation.operation_id,
        attempt: invocation.attempt,
        marker: PhantomData,
    };
    H::handle(&ctx, input).map_err(|e| failure(e.message))
}

/// Exports `$worker` (a [`JobWorker`]) as the component's `run` function.
#[macro_export]
macro_rules! export_worker {
    ($worker:ty) => {
        struct __OpshostWorkerExport;
        impl $crate::worker_bindings::Guest for __OpshostWorkerExport {
            fn run(
                invocation: $crate::bindings::opshost::operation::types::JobInvocation,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::opshost::operation::types::Failure,
            > {
                $crate::dispatch_job::<$worker>(invocation)
            }
        }
        $crate::worker_bindings::export_worker_raw!(__OpshostWorkerExport with_types_in $crate::worker_bindings);
    };
}

/// The length of [`operation_section`] for handler `H`.
#[doc(hidden)]
pub const fn operation_section_len<H: OperationHandler>() -> usize {
    <H::Operation as Operation>::NAME.len() + 1
}

/// The content of custom section `opshost-operation` for handler `H`: its operation's name and
/// a newline. `opshost check` reads it to tell which operation a component handles.
#[doc(hidden)]
pub const fn operation_section<H: OperationHandler, const N: usize>() -> [u8; N] {
    let name = <H::Operation as Operation>::NAME.as_bytes();
    let mut section = [b'\n'; N];
    let mut index = 0;
    while index < name.len() {
        section[index] = name[index];
        index += 1;
    }
    section
}

/// Exports `$handler` (an [`OperationHandler`]) as the component's `handle` function, and
/// records the operation it handles in custom section `opshost-operation`.
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[unsafe(link_section = "opshost-operation")]
        #[used]
        static __OPSHOST_OPERATION: [u8; $crate::operation_section_len::<$handler>()] =
            $crate::operation_section::<$handler, { $crate::operation_section_len::<$handler>() }>(
            );
        struct __OpshostExport;
        impl $crate::bindings::Guest for __OpshostExport {
            fn handle(
                invocation: $crate::bindings::opshost::operation::types::Invocation,
            ) -> ::std::result::Result<(), $crate::bindings::opshost::operation::types::Failure> {
                $crate::dispatch::<$handler>(invocation)
            }
        }
        $crate::bindings::export_raw!(__OpshostExport with_types_in $crate::bindings);
    };
}
