//! The `opshost:operation/control` imports, bound to the one operation a store handles.
//!
//! Each call goes through the [`OperationRuntime`], so guests get the same validation and
//! state rules as native handlers; a refused call returns a `control-error` and leaves the
//! operation unchanged.

use std::time::Duration;

use opshost_api::{ErrorCode, ErrorInfo};
use opshost_runtime::{OperationRuntime, ServerError, SignalWait};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::opshost::operation::control::Host;
use crate::bindings::opshost::operation::types::{self, ControlError, Failure, Signal};

/// Per-store state: WASI, and the operation this store is bound to.
pub struct OperationState {
    wasi: WasiCtx,
    table: ResourceTable,
    runtime: OperationRuntime,
    id: String,
    signal_cursor: u64,
}

impl OperationState {
    /// State bound to operation `id`.
    pub fn new(runtime: OperationRuntime, id: String, wasi: WasiCtx) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            runtime,
            id,
            signal_cursor: 0,
        }
    }
}

impl WasiView for OperationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn control_error(error: ServerError) -> ControlError {
    match error {
        ServerError::InvalidInput { .. } => ControlError::InvalidPayload(error.to_string()),
        ServerError::OperationTerminal { .. } => ControlError::Terminal(error.to_string()),
        ServerError::LimitExceeded { .. } => ControlError::LimitExceeded(error.to_string()),
        other => ControlError::Internal(other.to_string()),
    }
}

fn json(text: &str, what: &str) -> Result<serde_json::Value, ControlError> {
    serde_json::from_str(text)
        .map_err(|e| ControlError::InvalidPayload(format!("{what} is not JSON: {e}")))
}

impl types::Host for OperationState {}

impl Host for OperationState {
    async fn started(&mut self) -> Result<(), ControlError> {
        self.runtime
            .started(&self.id)
            .await
            .map(drop)
            .map_err(control_error)
    }

    async fn progress(&mut self, payload: String) -> Result<(), ControlError> {
        let value = json(&payload, "progress")?;
        self.runtime
            .progress(&self.id, value)
            .await
            .map(drop)
            .map_err(control_error)
    }

    async fn complete(&mut self, output: String) -> Result<(), ControlError> {
        let value = json(&output, "output")?;
        self.runtime
            .complete(&self.id, value)
            .await
            .map(drop)
            .map_err(control_error)
    }

    async fn fail(&mut self, failure: Failure) -> Result<(), ControlError> {
        let details = match failure.details {
            Some(text) => Some(json(&text, "failure details")?),
            None => None,
        };
        let error = ErrorInfo {
            code: ErrorCode::HandlerFailed,
            message: failure.message,
            details,
        };
        self.runtime
            .fail(&self.id, error)
            .await
            .map(drop)
            .map_err(control_error)
    }

    async fn cancel_requested(&mut self) -> bool {
        self.runtime.cancellation(&self.id).is_cancelled()
            || self
                .runtime
                .get(&self.id)
                .await
                .is_ok_and(|s| s.cancel_requested)
    }

    async fn acknowledge_cancel(&mut self) -> Result<(), ControlError> {
        self.runtime
            .cancelled(&self.id, "cancelled by caller")
            .await
            .map(drop)
            .map_err(control_error)
    }

    async fn next_signal(
        &mut self,
        timeout_ms: Option<u64>,
    ) -> Result<Option<Signal>, ControlError> {
        let timeout = timeout_ms.map(Duration::from_millis);
        match self
            .runtime
            .next_signal(&self.id, self.signal_cursor, timeout)
            .await
        {
            Ok(SignalWait::Signal(signal)) => {
                self.signal_cursor = signal.sequence;
                Ok(Some(Signal {
                    sequence: signal.sequence,
                    name: signal.name,
                    payload: signal.payload.to_string(),
                }))
            }
            Ok(SignalWait::TimedOut) => Ok(None),
            Ok(SignalWait::Cancelled) => Err(ControlError::Cancelled),
            Err(error) => Err(control_error(error)),
        }
    }

    async fn sleep(&mut self, ms: u64) -> Result<(), ControlError> {
        let token = self.runtime.cancellation(&self.id);
        if token.is_cancelled() {
            return Err(ControlError::Cancelled);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
            _ = token.cancelled() => Err(ControlError::Cancelled),
        }
    }
}
