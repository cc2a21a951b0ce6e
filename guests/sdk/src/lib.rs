//! The guest SDK: write an operation handler in plain Rust with the facade's types.
//!
//! ```ignore
//! struct Process;
//! impl opshost_guest::OperationHandler for Process {
//!     type Operation = orders_participant::operations::OrdersProcess;
//!     fn handle(ctx: &Context<Self::Operation>, input: ProcessOrderRequest) -> Result<(), HandlerError> {
//!         ctx.started()?;
//!         ctx.complete(&output)?;
//!         Ok(())
//!     }
//! }
//! opshost_guest::export_handler!(Process);
//! ```

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

/// Exports `$handler` (an [`OperationHandler`]) as the component's `handle` function.
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
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
