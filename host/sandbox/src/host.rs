//! [`WasmHost`]: compiled handlers and the task that runs each operation.

use std::collections::HashMap;
use std::sync::Arc;

use opshost_api::{ErrorCode, ErrorInfo, Snapshot};
use opshost_contract::Contract;
use opshost_runtime::store::{MemoryStore, OperationStore};
use opshost_runtime::{OperationRuntime, RuntimeConfig, ServerError};
use serde_json::Value;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

use crate::bindings::opshost::operation::types::Invocation;
use crate::bindings::{Handler, HandlerPre};
use crate::config::DeploymentConfig;
use crate::control::OperationState;
use crate::error::SandboxError;
use crate::{engine, grants};

/// Serves a contract's operations with wasm components: each component is compiled and linked
/// once; each operation runs in a fresh `Store` on its own tokio task.
#[derive(Clone)]
pub struct WasmHost {
    runtime: OperationRuntime,
    engine: Engine,
    handlers: Arc<HashMap<String, HandlerPre<OperationState>>>,
}

impl WasmHost {
    /// Loads a deployment on the in-memory store.
    pub fn from_config(config: &DeploymentConfig) -> Result<Self, SandboxError> {
        Self::from_config_with_store(config, Arc::new(MemoryStore::new()))
    }

    /// Loads a deployment on `store`: the contract, then every component it names.
    pub fn from_config_with_store(
        config: &DeploymentConfig,
        store: Arc<dyn OperationStore>,
    ) -> Result<Self, SandboxError> {
        let contract = Contract::from_path(&config.contract)?;
        for handler in &config.handlers {
            if contract.operation(&handler.operation).is_none() {
                return Err(SandboxError::UnknownOperation {
                    operation: handler.operation.clone(),
                });
            }
        }
        let runtime_config = RuntimeConfig {
            cancel_grace: config.cancel_grace(),
        };
        let runtime = OperationRuntime::with_contract(contract, store, runtime_config);
        let engine = engine::new_engine()?;
        let mut linker = Linker::<OperationState>::new(&engine);
        let link_error = |e: wasmtime::Error| SandboxError::Engine(e.to_string());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
        Handler::add_to_linker::<_, HasSelf<OperationState>>(&mut linker, |state| state)
            .map_err(link_error)?;
        let mut handlers = HashMap::new();
        for handler in &config.handlers {
            let path = handler.component.display().to_string();
            let component_error = |e: wasmtime::Error| SandboxError::Component {
                path: path.clone(),
                message: format!("{e:#}"),
            };
            let component =
                Component::from_file(&engine, &handler.component).map_err(component_error)?;
            let pre = linker
                .instantiate_pre(&component)
                .map_err(component_error)?;
            let pre = HandlerPre::new(pre).map_err(component_error)?;
            tracing::info!(operation = %handler.operation, component = %path, "handler loaded");
            handlers.insert(handler.operation.clone(), pre);
        }
        Ok(Self {
            runtime,
            engine,
            handlers: Arc::new(handlers),
        })
    }

    /// The runtime the host drives; use it to get, wait, watch, cancel and signal.
    pub fn runtime(&self) -> &OperationRuntime {
        &self.runtime
    }

    /// Accepts an operation and, when newly accepted, runs its handler in the background.
    ///
    /// `id` is the caller's idempotency key; `None` mints a ULID.
    pub async fn start(
        &self,
        operation: &str,
        id: Option<String>,
        input: Value,
    ) -> Result<Snapshot, ServerError> {
        let Some(pre) = self.handlers.get(operation).cloned() else {
            self.runtime.spec(operation)?;
            return Err(ServerError::OperationUnsupportedControl {
                operation: operation.to_owned(),
                action: "start (no handler deployed)".into(),
            });
        };
        let acceptance = self
            .runtime
            .accept(operation, id, Some(input.clone()))
            .await?;
        if acceptance.created {
            let snapshot = acceptance.snapshot.clone();
            let host = self.clone();
            let (registered, gate) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                // Run only once cancel can find the task, so a fast handler cannot finish first.
                let _ = gate.await;
                host.run(pre, snapshot, input).await
            });
            self.runtime
                .register_handler(&acceptance.snapshot.id, Some(task.abort_handle()));
            let _ = registered.send(());
        }
        Ok(acceptance.snapshot)
    }

    async fn run(&self, pre: HandlerPre<OperationState>, snapshot: Snapshot, input: Value) {
        let id = snapshot.id.clone();
        let invocation = Invocation {
            operation_id: id.clone(),
            operation: snapshot.operation.clone(),
            version: snapshot.version.clone(),
            attempt: snapshot.attempt,
            input: input.to_string(),
        };
        let state = OperationState::new(self.runtime.clone(), id.clone(), grants::wasi_context());
        let mut store = Store::new(&self.engine, state);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        let outcome = match pre.instantiate_async(&mut store).await {
            Ok(handler) => handler.call_handle(&mut store, &invocation).await,
            Err(error) => Err(error),
        };
        drop(store);
        let error = match outcome {
            Ok(Ok(())) => match self.runtime.get(&id).await {
                Ok(current) if current.is_terminal() => return,
                Ok(current) => ServerError::HandlerNonTerminal {
                    id: id.clone(),
                    state: current.state,
                }
                .to_info(),
                Err(error) => {
                    tracing::error!(%id, %error, "cannot read operation after its handler returned");
                    return;
                }
            },
            Ok(Err(failure)) => ErrorInfo {
                code: ErrorCode::HandlerFailed,
                message: failure.message,
                details: failure
                    .details
                    .and_then(|text| serde_json::from_str(&text).ok()),
            },
            Err(trap) => ErrorInfo::new(
                ErrorCode::HandlerTrapped,
                format!("handler trapped: {}", trap_message(&trap)),
            ),
        };
        match self.runtime.fail(&id, error).await {
            Ok(_) | Err(ServerError::OperationTerminal { .. }) => {}
            Err(error) => tracing::error!(%id, %error, "cannot record handler failure"),
        }
    }
}

fn trap_message(error: &wasmtime::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        message.push_str(": ");
        message.push_str(&cause.to_string());
    }
    message
}
